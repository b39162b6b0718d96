//! Every way the gate refuses a request, and the one table that maps each
//! refusal to its HTTP status and SPEC error code (SPEC section 8).
//!
//! Clients get these fixed bodies; the details of what went wrong go to the log.

use http::{HeaderName, header};

use crate::session::Status;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    BadRequest(String),
    MissingTicket,
    InvalidTicket,
    /// The session exists but is no longer `active`.
    Session(Status),
    BadCredentials,
    Forbidden,
    OriginNotAllowed,
    NoRoute,
    NotFound,
    MethodNotAllowed(&'static str),
    BodyTooLarge,
    /// A `/_session` body that is not `application/json`.
    UnsupportedMediaType,
    UriTooLong,
    HeadersTooLarge,
    RateLimited {
        retry_after_secs: u64,
    },
    UpstreamUnavailable,
    UpstreamTimeout,
    StoreUnavailable,
}

/// Seconds a client is told to wait after a `store_unavailable`.
pub const STORE_RETRY_AFTER_SECS: u64 = 1;

impl Reject {
    /// Status and error code, in one match so the table cannot drift.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            Reject::BadRequest(_) => (400, "bad_request"),
            Reject::MissingTicket => (401, "missing_ticket"),
            Reject::InvalidTicket => (401, "invalid_ticket"),
            Reject::Session(st) => (
                401,
                match st {
                    // An active session is never a rejection; treat it as a bug-safe invalid.
                    Status::Active => "invalid_ticket",
                    Status::Ended => "session_ended",
                    Status::Removed => "session_removed",
                    Status::Revoked => "session_revoked",
                    Status::Expired => "session_expired",
                    Status::Abandoned => "session_abandoned",
                    Status::Replaced => "session_replaced",
                },
            ),
            Reject::BadCredentials => (401, "bad_credentials"),
            Reject::Forbidden => (403, "forbidden"),
            Reject::OriginNotAllowed => (403, "origin_not_allowed"),
            Reject::NoRoute => (404, "no_route"),
            Reject::NotFound => (404, "not_found"),
            Reject::MethodNotAllowed(_) => (405, "method_not_allowed"),
            Reject::BodyTooLarge => (413, "body_too_large"),
            Reject::UnsupportedMediaType => (415, "unsupported_media_type"),
            Reject::UriTooLong => (414, "uri_too_long"),
            Reject::HeadersTooLarge => (431, "headers_too_large"),
            Reject::RateLimited { .. } => (429, "rate_limited"),
            Reject::UpstreamUnavailable => (502, "upstream_unavailable"),
            Reject::UpstreamTimeout => (504, "upstream_timeout"),
            Reject::StoreUnavailable => (503, "store_unavailable"),
        }
    }

    pub fn status(&self) -> u16 {
        self.status_and_code().0
    }

    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    pub fn message(&self) -> String {
        match self {
            Reject::BadRequest(why) => why.clone(),
            Reject::MissingTicket => "a session ticket is required".into(),
            Reject::InvalidTicket => "the session ticket is not valid".into(),
            Reject::Session(st) => format!("session {st}"),
            Reject::BadCredentials => "wrong username or password".into(),
            Reject::Forbidden => "your roles do not allow this route".into(),
            Reject::OriginNotAllowed => "this Origin is not allowed here".into(),
            Reject::NoRoute => "no route matches this request".into(),
            Reject::NotFound => "no such session".into(),
            Reject::MethodNotAllowed(allow) => format!("method not allowed; allowed: {allow}"),
            Reject::BodyTooLarge => "request body too large".into(),
            Reject::UnsupportedMediaType => "the body must be application/json".into(),
            Reject::UriTooLong => "request URI too long".into(),
            Reject::HeadersTooLarge => "request headers too large".into(),
            Reject::RateLimited { .. } => "too many attempts; retry later".into(),
            Reject::UpstreamUnavailable => "the upstream could not be reached".into(),
            Reject::UpstreamTimeout => "the upstream did not answer in time".into(),
            Reject::StoreUnavailable => "the session store is unavailable".into(),
        }
    }

    /// `{"error":"<code>","message":"<text>"}`
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"error": self.code(), "message": self.message()}))
            .unwrap_or_default()
    }

    /// Extra response headers the SPEC requires with this refusal.
    pub fn extra_headers(&self) -> Vec<(HeaderName, String)> {
        match self {
            Reject::MissingTicket
            | Reject::InvalidTicket
            | Reject::Session(_)
            | Reject::BadCredentials => vec![(header::WWW_AUTHENTICATE, "Bearer".into())],
            Reject::MethodNotAllowed(allow) => vec![(header::ALLOW, (*allow).into())],
            Reject::RateLimited { retry_after_secs } => {
                vec![(header::RETRY_AFTER, retry_after_secs.max(&1).to_string())]
            }
            Reject::StoreUnavailable => {
                vec![(header::RETRY_AFTER, STORE_RETRY_AFTER_SECS.to_string())]
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_status_has_its_own_code() {
        let codes: std::collections::HashSet<_> = Status::ALL
            .into_iter()
            .filter(|s| !s.is_active())
            .map(|s| Reject::Session(s).code())
            .collect();
        assert_eq!(codes.len(), 6);
        assert_eq!(Reject::Session(Status::Revoked).code(), "session_revoked");
    }

    #[test]
    fn auth_failures_carry_www_authenticate() {
        for r in [
            Reject::MissingTicket,
            Reject::InvalidTicket,
            Reject::BadCredentials,
        ] {
            assert_eq!(r.status(), 401);
            assert!(
                r.extra_headers()
                    .iter()
                    .any(|(k, _)| *k == header::WWW_AUTHENTICATE)
            );
        }
    }

    #[test]
    fn store_outage_is_503_with_retry_after() {
        let r = Reject::StoreUnavailable;
        assert_eq!(r.status_and_code(), (503, "store_unavailable"));
        assert_eq!(
            r.extra_headers(),
            vec![(header::RETRY_AFTER, "1".to_owned())]
        );
    }

    #[test]
    fn body_is_the_spec_json() {
        let v: serde_json::Value = serde_json::from_slice(&Reject::NoRoute.body()).unwrap();
        assert_eq!(v["error"], "no_route");
        assert!(v["message"].is_string());
    }
}
