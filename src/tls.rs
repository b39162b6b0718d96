//! The gate's own TLS: certificates read from PEM files, the SNI choice among
//! them, and the rustls server configuration of the TLS listeners.
//!
//! A certificate is checked when the config loads (parses, key matches,
//! not expired), so a bad file on reload is refused before anything changes.
//! The resolver asks for the current [`CertSet`] on every handshake: swapping
//! the set (a reload) changes what new handshakes get, and leaves open
//! connections as they are.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// Within this of its expiry `sessiongate check` warns about a certificate.
pub const EXPIRY_WARNING_SECS: i64 = 14 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: not PEM: {source}")]
    NotPem {
        file: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{file}: holds no PEM certificate")]
    NoCertificate { file: PathBuf },
    #[error("{file}: holds no PEM private key: {source}")]
    NoKey {
        file: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{file}: certificate does not parse: {source}")]
    Parse {
        file: PathBuf,
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    #[error("{key_file}: the key does not match the certificate of {cert_file}: {source}")]
    KeyMismatch {
        cert_file: PathBuf,
        key_file: PathBuf,
        source: rustls::Error,
    },
    #[error("{file}: certificate expired at {at} (unix time)")]
    Expired { file: PathBuf, at: i64 },
    #[error("{file}: certificate is not valid before {at} (unix time)")]
    NotYetValid { file: PathBuf, at: i64 },
    #[error("TLS setup: {0}")]
    Setup(#[source] rustls::Error),
}

/// One certificate chain and its key, checked.
#[derive(Clone)]
pub struct LoadedCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// DNS names (lowercase, `*.` wildcards kept) and IP addresses it is for.
    pub names: Vec<String>,
    /// The leaf's notAfter, seconds since the epoch.
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("cert_file", &self.cert_file)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM chain and its key and checks them at `now` (unix seconds).
pub fn load(cert_file: &Path, key_file: &Path, now: i64) -> Result<LoadedCert, TlsError> {
    let read = |file: &Path| {
        std::fs::read(file).map_err(|source| TlsError::Read {
            file: file.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert_file)?;
    let key_pem = read(key_file)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::NotPem {
            file: cert_file.to_owned(),
            source,
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            file: cert_file.to_owned(),
        });
    };
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::NoKey {
        file: key_file.to_owned(),
        source,
    })?;
    let (names, not_before, not_after) = inspect(leaf).map_err(|source| TlsError::Parse {
        file: cert_file.to_owned(),
        source,
    })?;
    if now > not_after {
        return Err(TlsError::Expired {
            file: cert_file.to_owned(),
            at: not_after,
        });
    }
    if now < not_before {
        return Err(TlsError::NotYetValid {
            file: cert_file.to_owned(),
            at: not_before,
        });
    }
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|source| {
        TlsError::KeyMismatch {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            source,
        }
    })?;
    Ok(LoadedCert {
        cert_file: cert_file.to_owned(),
        key_file: key_file.to_owned(),
        names,
        not_after,
        key: Arc::new(key),
    })
}

/// The names a leaf certificate serves (its SANs, else its CN) and its validity.
fn inspect(
    der: &CertificateDer<'_>,
) -> Result<(Vec<String>, i64, i64), x509_parser::nom::Err<x509_parser::error::X509Error>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let validity = cert.validity();
    Ok((
        names,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// The certificates of the TLS listeners, in config order: the first serves
/// clients without SNI or with a name no certificate has.
#[derive(Debug, Clone)]
pub struct CertSet {
    pub certs: Vec<LoadedCert>,
}

impl CertSet {
    /// The certificate for an SNI name: an exact name first, then a `*.`
    /// wildcard for one label, then the default.
    pub fn choose(&self, sni: Option<&str>) -> Option<&LoadedCert> {
        let by_name = sni.map(str::to_ascii_lowercase).and_then(|name| {
            let exact = self.certs.iter().find(|c| c.names.contains(&name));
            exact.or_else(|| {
                let (_, parent) = name.split_once('.')?;
                let wildcard = format!("*.{parent}");
                self.certs.iter().find(|c| c.names.contains(&wildcard))
            })
        });
        by_name.or_else(|| self.certs.first())
    }
}

/// Picks the certificate of each handshake from whatever set `current`
/// returns at that moment.
pub struct SniResolver {
    current: Box<dyn Fn() -> Option<Arc<CertSet>> + Send + Sync>,
}

impl SniResolver {
    pub fn new(current: impl Fn() -> Option<Arc<CertSet>> + Send + Sync + 'static) -> Self {
        SniResolver {
            current: Box::new(current),
        }
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = (self.current)()?;
        set.choose(hello.server_name()).map(|c| Arc::clone(&c.key))
    }
}

/// The lowest TLS version the listeners accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// The rustls configuration of every TLS listener: versions, ALPN (`h2`
/// first when `http2`, then `http/1.1`) and the resolver.
pub fn server_config(
    min: MinVersion,
    http2: bool,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<rustls::ServerConfig, TlsError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> LoadedCert {
        // The key is never used by `choose`; any well-formed CertifiedKey will do.
        struct NoKey;
        impl fmt::Debug for NoKey {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("NoKey")
            }
        }
        impl rustls::sign::SigningKey for NoKey {
            fn choose_scheme(
                &self,
                _offered: &[rustls::SignatureScheme],
            ) -> Option<Box<dyn rustls::sign::Signer>> {
                None
            }
            fn algorithm(&self) -> rustls::SignatureAlgorithm {
                rustls::SignatureAlgorithm::ECDSA
            }
        }
        LoadedCert {
            cert_file: PathBuf::from(names[0]),
            key_file: PathBuf::new(),
            names: names.iter().map(|s| s.to_string()).collect(),
            not_after: 0,
            key: Arc::new(CertifiedKey::new(
                vec![CertificateDer::from(vec![0u8])],
                Arc::new(NoKey),
            )),
        }
    }

    fn chosen(set: &CertSet, sni: Option<&str>) -> String {
        set.choose(sni)
            .map(|c| c.cert_file.display().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn exact_name_then_wildcard_then_the_first() {
        let set = CertSet {
            certs: vec![
                cert(&["default.test"]),
                cert(&["*.example.com"]),
                cert(&["api.example.com", "other.test"]),
            ],
        };
        assert_eq!(chosen(&set, Some("api.example.com")), "api.example.com");
        assert_eq!(chosen(&set, Some("API.Example.COM")), "api.example.com");
        assert_eq!(chosen(&set, Some("www.example.com")), "*.example.com");
        assert_eq!(chosen(&set, Some("other.test")), "api.example.com");
        // A wildcard covers one label only.
        assert_eq!(chosen(&set, Some("a.b.example.com")), "default.test");
        assert_eq!(chosen(&set, Some("unknown.test")), "default.test");
        assert_eq!(chosen(&set, None), "default.test");
    }

    #[test]
    fn an_empty_set_has_nothing_to_offer() {
        assert!(CertSet { certs: vec![] }.choose(Some("x")).is_none());
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let e = load(Path::new("/nonexistent/c.pem"), Path::new("/x.key"), 0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("/nonexistent/c.pem: cannot read"), "{e}");
    }

    #[test]
    fn tls13_only_builds() {
        let r = Arc::new(SniResolver::new(|| None));
        let cfg = server_config(MinVersion::Tls13, true, r).map_err(|e| e.to_string());
        assert_eq!(
            cfg.map(|c| c.alpn_protocols),
            Ok(vec![b"h2".to_vec(), b"http/1.1".to_vec()])
        );
    }
}
