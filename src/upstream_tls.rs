//! The TLS material for reaching routes' upstreams, built once when a config loads (reading
//! the system's roots is file work, not for a proxy worker): a gateway's rustls client for the
//! gate's own WebSocket handshake, a controller's CA in the form Pingora's connector takes.
//! Pingora-aware (its `CaType`) like `tls.rs` and the proxy glue, so that `settings`, which
//! holds one per route, names no Pingora type itself.

use std::sync::Arc;

use pingora::protocols::tls::CaType;
use pingora::utils::tls::{WrappedX509, parse_x509};

use crate::config::{RouteConfig, RouteKind};
use crate::handshake::{TlsClient, TlsClientError};

/// One TLS route's upstream material, shared by every request on it.
pub struct UpstreamTls {
    /// A gateway's client for its handshake; `None` on a controller.
    pub client: Option<Arc<TlsClient>>,
    /// A controller's CA for Pingora; `None` on a gateway or where the system's roots verify.
    pub ca: Option<Arc<CaType>>,
}

/// A route's TLS material could not be built.
#[derive(Debug, thiserror::Error)]
#[error("route {route}: {source}")]
pub struct UpstreamTlsError {
    pub route: String,
    #[source]
    pub source: TlsClientError,
}

impl UpstreamTls {
    /// What `route` needs to reach its upstreams over TLS; `None` for a plain route.
    pub fn for_route(route: &RouteConfig) -> Result<Option<UpstreamTls>, UpstreamTlsError> {
        let Some(tls) = &route.tls else {
            return Ok(None);
        };
        let built = match route.kind {
            RouteKind::Gateway => UpstreamTls {
                client: Some(Arc::new(TlsClient::new(tls).map_err(|source| {
                    UpstreamTlsError {
                        route: route.name.clone(),
                        source,
                    }
                })?)),
                ca: None,
            },
            RouteKind::Controller => UpstreamTls {
                client: None,
                ca: tls.ca.as_ref().map(|ders| {
                    // The config check parsed each certificate, so parse_x509 cannot fail here.
                    let certs: Vec<WrappedX509> = ders
                        .iter()
                        .map(|der| WrappedX509::new(der.clone(), parse_x509))
                        .collect();
                    Arc::from(certs)
                }),
            },
        };
        Ok(Some(built))
    }
}
