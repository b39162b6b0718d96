//! Upstreams the gate proxies to: the built-in echo servers, HTTPS and WSS
//! ones, and any of a test's own, all on port 0 in the test's runtime.

use super::*;

pub struct Upstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn http() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        Upstream {
            addr,
            task: tokio::spawn(sessiongate::echo::serve_http(l)),
        }
    }

    pub async fn ws() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        Upstream {
            addr,
            task: tokio::spawn(sessiongate::echo::serve_ws(l)),
        }
    }

    /// HTTPS with a [`TestCerts`] certificate: answers each request (then
    /// closes) with `tls:<X-Session-User>`.
    pub async fn https(certs: &TestCerts) -> Upstream {
        let acceptor = tls_acceptor(certs);
        Upstream::custom(move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(req) = sessiongate::http1::read_request(&mut tls, &READ_LIMITS).await else {
                    return;
                };
                let user = req
                    .head
                    .headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("x-session-user"))
                    .map_or_else(
                        || "-".into(),
                        |(_, v)| String::from_utf8_lossy(v).into_owned(),
                    );
                let body = format!("tls:{user}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        })
        .await
    }

    /// A WebSocket echo over TLS with a [`TestCerts`] certificate.
    pub async fn wss(certs: &TestCerts) -> Upstream {
        let acceptor = tls_acceptor(certs);
        Upstream::custom(move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                use futures_util::{SinkExt, StreamExt};
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await
    }

    /// Accepts connections and never answers.
    pub async fn hanging() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        Upstream { addr, task }
    }

    /// Serves with a custom per-connection handler.
    pub async fn custom<F, Fut>(f: F) -> Upstream
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(f(s));
            }
        });
        Upstream { addr, task }
    }
}

/// A TLS server side with a [`TestCerts`] certificate.
fn tls_acceptor(certs: &TestCerts) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let chain = vec![CertificateDer::from_pem_file(&certs.cert).expect("server cert")];
    let key = PrivateKeyDer::from_pem_file(&certs.key).expect("server key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
