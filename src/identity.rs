//! The identity headers (SPEC 5) under one configured prefix: their names, built once per
//! config; which client-sent headers are spellings of them (any case, `_` for `-`) and so
//! never reach an upstream; and the headers an admitted ticket's claims yield.
//!
//! Names are kept as the `Bytes` Pingora's `insert_header` takes as they are: handed a
//! `HeaderName`, it copies the name into a new buffer on every insert to keep its case map.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::ticket::Claims;

/// `identity.header_prefix` does not make header names.
#[derive(Debug, thiserror::Error)]
#[error("identity.header_prefix: {0}")]
pub struct BadPrefix(#[source] pub http::header::InvalidHeaderName);

/// A header name checked at config load (or ticket verification), lowercase as `HeaderName`
/// spells it, shared by reference count with every request that inserts it.
pub type WireName = Bytes;

/// Identity header names, built once per config.
pub struct IdentityHeaders {
    /// The prefix lowercased with `_` read as `-`, for the strip: a WSGI or
    /// CGI upstream reads `X_Session_User` as `HTTP_X_SESSION_USER`, the same
    /// variable as `X-Session-User`.
    pub prefix_lower: String,
    pub id: WireName,
    pub user: WireName,
    pub name: WireName,
    pub roles: WireName,
    /// `<prefix>Var-`, to which a var's key is appended.
    pub var_prefix: String,
}

impl IdentityHeaders {
    pub fn new(prefix: &str) -> Result<IdentityHeaders, BadPrefix> {
        let h = |suffix: &str| {
            HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes())
                .map(|n| wire(&n))
                .map_err(BadPrefix)
        };
        Ok(IdentityHeaders {
            prefix_lower: prefix.to_ascii_lowercase().replace('_', "-"),
            id: h("Id")?,
            user: h("User")?,
            name: h("Name")?,
            roles: h("Roles")?,
            var_prefix: format!("{prefix}Var-"),
        })
    }

    /// Whether a client-sent header must be removed before forwarding.
    pub fn is_identity(&self, name: &HeaderName) -> bool {
        // HeaderName is always lowercase; `_` and `-` are one character here.
        let (name, prefix) = (name.as_str().as_bytes(), self.prefix_lower.as_bytes());
        name.len() >= prefix.len()
            && name
                .iter()
                .zip(prefix)
                .all(|(&n, &p)| n == p || (n == b'_' && p == b'-'))
    }

    /// The headers an admitted request carries upstream.
    pub fn for_claims(&self, c: &Claims) -> Vec<(WireName, HeaderValue)> {
        let mut out = Vec::with_capacity(4 + c.vars.len());
        let mut push = |name: WireName, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                out.push((name, v));
            }
        };
        push(self.id.clone(), &c.sid);
        push(self.user.clone(), &c.sub);
        push(self.name.clone(), &c.name);
        push(self.roles.clone(), &c.roles.join(","));
        for (k, v) in &c.vars {
            if let Ok(name) = HeaderName::from_bytes(format!("{}{k}", self.var_prefix).as_bytes()) {
                push(wire(&name), v);
            }
        }
        out
    }
}

/// A checked name as the bytes Pingora inserts without copying.
fn wire(name: &HeaderName) -> WireName {
    Bytes::copy_from_slice(name.as_str().as_bytes())
}
