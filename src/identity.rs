//! The identity headers (SPEC 5) under one configured prefix: their names, built once per
//! config; which client-sent headers are spellings of them (any case, `_` for `-`) and so
//! never reach an upstream; and the headers an admitted ticket's claims yield.

use http::{HeaderName, HeaderValue};

use crate::ticket::Claims;

/// `identity.header_prefix` does not make header names.
#[derive(Debug, thiserror::Error)]
#[error("identity.header_prefix: {0}")]
pub struct BadPrefix(#[source] pub http::header::InvalidHeaderName);

/// Identity header names, built once per config.
pub struct IdentityHeaders {
    /// The prefix lowercased with `_` read as `-`, for the strip: a WSGI or
    /// CGI upstream reads `X_Session_User` as `HTTP_X_SESSION_USER`, the same
    /// variable as `X-Session-User`.
    pub prefix_lower: String,
    pub id: HeaderName,
    pub user: HeaderName,
    pub name: HeaderName,
    pub roles: HeaderName,
    /// `<prefix>Var-`, to which a var's key is appended.
    pub var_prefix: String,
}

impl IdentityHeaders {
    pub fn new(prefix: &str) -> Result<IdentityHeaders, BadPrefix> {
        let h = |suffix: &str| {
            HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes()).map_err(BadPrefix)
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
    pub fn for_claims(&self, c: &Claims) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(4 + c.vars.len());
        let mut push = |name: HeaderName, value: &str| {
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
                push(name, v);
            }
        }
        out
    }
}
