//! Harness pieces for the gate's own listeners: a throwaway CA that issues
//! server certificates (the `openssl` command, nothing checked in), TLS and
//! HTTP/2 clients, and HTTP/1.1 over any stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use super::{Resp, openssl};

/// A throwaway CA in `dir`.
pub struct Ca {
    pub dir: PathBuf,
    pub cert: PathBuf,
    key: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path) -> Ca {
        let (cert, key) = (dir.join("edge-ca.pem"), dir.join("edge-ca.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=sessiongate edge test CA",
            "-keyout",
            key.to_str().expect("utf-8"),
            "-out",
            cert.to_str().expect("utf-8"),
        ]);
        Ca {
            dir: dir.to_owned(),
            cert,
            key,
        }
    }

    /// A server certificate named `tag`.pem/.key for `sans` (openssl's
    /// `subjectAltName` syntax, e.g. `DNS:a.test,IP:127.0.0.1`), valid `days`.
    pub fn issue(&self, tag: &str, sans: &str, days: u32) -> Issued {
        let p = |ext: &str| self.dir.join(format!("{tag}.{ext}"));
        let s = |p: &PathBuf| p.to_str().expect("utf-8").to_owned();
        std::fs::write(
            p("cnf"),
            format!("subjectAltName={sans}\nbasicConstraints=CA:FALSE\n"),
        )
        .expect("write ext");
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={tag}"),
            "-keyout",
            &s(&p("key")),
            "-out",
            &s(&p("csr")),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-days",
            &days.to_string(),
            "-in",
            &s(&p("csr")),
            "-CA",
            &s(&self.cert),
            "-CAkey",
            &s(&self.key),
            "-CAcreateserial",
            "-extfile",
            &s(&p("cnf")),
            "-out",
            &s(&p("pem")),
        ]);
        Issued {
            cert: p("pem"),
            key: p("key"),
        }
    }
}

/// The `tls` block listening on `port` (0: the gate picks) with `certs` in
/// order.
pub fn tls_config(port: u16, certs: &[&Issued]) -> serde_json::Value {
    let certificates: Vec<serde_json::Value> = certs
        .iter()
        .map(|c| serde_json::json!({"cert_file": c.cert, "key_file": c.key}))
        .collect();
    serde_json::json!({
        "listen": [format!("127.0.0.1:{port}")],
        "certificates": certificates,
    })
}

/// Accepts any server certificate, so a test can look at which one it got.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How a test client does TLS.
pub struct Client {
    /// Verify with this CA; `None` accepts any certificate.
    pub ca: Option<PathBuf>,
    pub alpn: Vec<Vec<u8>>,
    pub tls12_only: bool,
}

impl Client {
    pub fn verified(ca: &Path) -> Client {
        Client {
            ca: Some(ca.to_owned()),
            alpn: vec![b"http/1.1".to_vec()],
            tls12_only: false,
        }
    }

    pub fn any() -> Client {
        Client {
            ca: None,
            alpn: vec![b"http/1.1".to_vec()],
            tls12_only: false,
        }
    }

    pub fn alpn(mut self, protos: &[&[u8]]) -> Client {
        self.alpn = protos.iter().map(|p| p.to_vec()).collect();
        self
    }

    pub fn tls12_only(mut self) -> Client {
        self.tls12_only = true;
        self
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = if self.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .expect("versions");
        let mut cfg = match &self.ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_file(ca).expect("CA file"))
                    .expect("CA cert");
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth(),
        };
        cfg.alpn_protocols = self.alpn.clone();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }

    /// TLS to `addr`, sending `sni` (an IP address sends none).
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
        sni: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        self.wrap(tcp, sni).await
    }

    /// TLS over an already open stream (after a PROXY header, say).
    pub async fn wrap(
        &self,
        tcp: TcpStream,
        sni: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(sni.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        tokio::time::timeout(Duration::from_secs(10), self.connector().connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))?
    }
}

/// The names the server's certificate was issued for (its CN).
pub fn served_cn(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let (_, conn) = tls.get_ref();
    let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) else {
        return String::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return String::new();
    };
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .collect::<Vec<_>>()
        .join(",")
}

/// One HTTP/1.1 request on an open stream (kept open for the next one).
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    raw: &str,
) -> std::io::Result<Resp> {
    s.write_all(raw.as_bytes()).await?;
    s.flush().await?;
    super::read_response(s).await
}

/// A bare GET with an optional ticket.
pub fn get(path: &str, ticket: Option<&str>, extra: &str) -> String {
    let auth = ticket.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: gate.test\r\n{auth}{extra}\r\n")
}

/// A TLS 1.1 ClientHello, which rustls cannot speak: the server must answer
/// with an alert, never a ServerHello. Returns the first record's type and,
/// for an alert, its description.
pub async fn tls11_hello(addr: std::net::SocketAddr) -> (u8, u8) {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // two CBC suites
    body.extend([0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0x00, 0x00, body.len() as u8];
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01, 0x00, hs.len() as u8];
    rec.extend(hs);
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return (0, 0);
    };
    if s.write_all(&rec).await.is_err() {
        return (0, 0);
    }
    let mut answer = [0u8; 7];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut answer)).await {
        Ok(Ok(_)) => (answer[0], answer[6]),
        _ => (0, 0),
    }
}
