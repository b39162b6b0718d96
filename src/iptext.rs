//! IP addresses as text, as `Display` writes them, without the formatting
//! machinery for IPv4 (the usual case): every request writes its client's
//! address into `X-Forwarded-For` and the access line.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

/// Appends `ip` as `Display` writes it.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => out.push_str(Ipv4Text::new(v4).as_str()),
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// An IPv4 address's dotted text on the stack.
pub struct Ipv4Text {
    buf: [u8; 15],
    len: usize,
}

impl Ipv4Text {
    pub fn new(ip: Ipv4Addr) -> Ipv4Text {
        let mut t = Ipv4Text {
            buf: [0; 15],
            len: 0,
        };
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                t.push(b'.');
            }
            if octet >= 100 {
                t.push(b'0' + octet / 100);
            }
            if octet >= 10 {
                t.push(b'0' + octet / 10 % 10);
            }
            t.push(b'0' + octet % 10);
        }
        t
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and dots went in.
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "255.255.255.255",
            "192.0.2.109",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let mut out = String::from("x ");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x {ip}"));
            if let IpAddr::V4(v4) = ip {
                assert_eq!(Ipv4Text::new(v4).as_str(), v4.to_string());
            }
        }
    }
}
