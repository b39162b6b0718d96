//! Where the listeners bind: a port-0 address in the config gets a concrete
//! port here, before Pingora binds it, and `run --ready-file` reports every
//! bound address once each of them accepts connections.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pingora::listeners::TcpSocketOptions;
use tokio::net::TcpSocket;

/// Every listener's address, as configured or (port 0) as reserved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Addresses {
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot reserve a port for {addr}: {source}")]
    Reserve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not accept a connection within {waited:?}: {source}")]
    NotListening {
        addr: SocketAddr,
        waited: Duration,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the ready file {}: {source}", path.display())]
    ReadyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The sockets holding the ports given to port-0 addresses. Pingora keys the
/// sockets it binds by address string (that is how `run --upgrade` finds them
/// again), so two `:0` listeners would share one socket: each gets its own
/// port here instead. A reservation is bound but never listens, with
/// `SO_REUSEPORT`, which Pingora's socket for the port sets too: the kernel
/// gives the port to no other bind meanwhile, and no connection reaches the
/// reservation.
pub struct Reserved {
    sockets: Vec<(SocketAddr, TcpSocket)>,
}

impl Reserved {
    /// The socket options Pingora must bind `addr` with: `SO_REUSEPORT` for a
    /// reserved port, none otherwise.
    pub fn options(&self, addr: &SocketAddr) -> Option<TcpSocketOptions> {
        self.sockets.iter().any(|(a, _)| a == addr).then(|| {
            let mut o = TcpSocketOptions::default();
            o.so_reuseport = Some(true);
            o
        })
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

/// Gives every port-0 address a port of its own.
pub fn reserve(addrs: &Addresses) -> Result<(Addresses, Reserved), BindError> {
    let mut reserved = Reserved {
        sockets: Vec::new(),
    };
    let mut one = |addr: SocketAddr| -> Result<SocketAddr, BindError> {
        if addr.port() != 0 {
            return Ok(addr);
        }
        let err = |source| BindError::Reserve { addr, source };
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(err)?;
        sock.set_reuseport(true).map_err(err)?;
        sock.bind(addr).map_err(err)?;
        let bound = sock.local_addr().map_err(err)?;
        reserved.sockets.push((bound, sock));
        Ok(bound)
    };
    let listen = addrs
        .listen
        .iter()
        .map(|a| one(*a))
        .collect::<Result<_, _>>()?;
    let tls_listen = addrs
        .tls_listen
        .iter()
        .map(|a| one(*a))
        .collect::<Result<_, _>>()?;
    let admin = addrs.admin.map(&mut one).transpose()?;
    Ok((
        Addresses {
            listen,
            tls_listen,
            admin,
        },
        reserved,
    ))
}

/// How long the listeners get to come up before the ready file is given up.
const LISTEN_WAIT: Duration = Duration::from_secs(20);

/// Waits until every address accepts a TCP connection, then writes them to
/// `path` as JSON (through a temporary file and a rename, so a reader never
/// sees half of it). The reservations end here: by now Pingora's own sockets
/// hold the ports.
pub async fn report_ready(
    path: &Path,
    addrs: &Addresses,
    reserved: Reserved,
) -> Result<(), BindError> {
    let all = addrs
        .listen
        .iter()
        .chain(&addrs.tls_listen)
        .chain(&addrs.admin);
    for addr in all {
        accepting(*addr).await?;
    }
    drop(reserved);
    let json = serde_json::to_vec(addrs).map_err(|e| BindError::ReadyFile {
        path: path.to_owned(),
        source: e.into(),
    })?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| BindError::ReadyFile {
            path: path.to_owned(),
            source,
        })
}

/// Connects to `addr` (its loopback twin when it is a wildcard) until it
/// answers; the connection is closed at once, before any byte is sent.
async fn accepting(addr: SocketAddr) -> Result<(), BindError> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match target.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let start = Instant::now();
    loop {
        match tokio::net::TcpStream::connect(target).await {
            Ok(_) => return Ok(()),
            Err(source) if start.elapsed() >= LISTEN_WAIT => {
                return Err(BindError::NotListening {
                    addr,
                    waited: LISTEN_WAIT,
                    source,
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(listen: &[&str], admin: Option<&str>) -> Addresses {
        Addresses {
            listen: listen.iter().map(|a| a.parse().unwrap()).collect(),
            tls_listen: Vec::new(),
            admin: admin.map(|a| a.parse().unwrap()),
        }
    }

    #[test]
    fn port_zero_addresses_get_distinct_ports_and_others_stay() {
        let (got, reserved) = reserve(&addrs(
            &["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:7"],
            Some("127.0.0.1:0"),
        ))
        .unwrap();
        let admin = got.admin.unwrap();
        assert_ne!(got.listen[0].port(), 0);
        assert_ne!(got.listen[0], got.listen[1]);
        assert_ne!(got.listen[1], admin);
        assert_eq!(got.listen[2], "127.0.0.1:7".parse().unwrap());
        assert!(reserved.options(&admin).is_some());
        assert!(reserved.options(&got.listen[2]).is_none());
    }

    #[tokio::test]
    async fn the_ready_file_names_the_addresses_once_they_accept() {
        let dir = std::env::temp_dir().join(format!("sg-bind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ready.json");
        let (got, reserved) = reserve(&addrs(&["127.0.0.1:0"], None)).unwrap();
        // What Pingora does with a reserved port: its own SO_REUSEPORT socket.
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_reuseaddr(true).unwrap();
        sock.set_reuseport(true).unwrap();
        sock.bind(got.listen[0]).unwrap();
        let _listener = sock.listen(16).unwrap();
        report_ready(&path, &got, reserved).await.unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"listen": [got.listen[0].to_string()], "tls_listen": [], "admin": null})
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
