//! A whole answer the gate writes itself rather than an upstream's ([`Response`]): the session
//! API's, the admin listener's, the event stream's opening, the pages and every refusal
//! ([`Response::reject`], the SPEC's error body). Framework-free; the proxy glue writes it.

use http::{HeaderName, HeaderValue, header};

use crate::reject::Reject;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }

    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The SPEC's error body for a refusal. Refusals are never cacheable, so
    /// every one says `Cache-Control: no-store`, wherever it is written.
    pub fn reject(r: &Reject) -> Response {
        let mut out = Response {
            status: r.status(),
            headers: vec![
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body: r.body(),
        };
        for (k, v) in r.extra_headers() {
            if let Ok(v) = HeaderValue::from_str(&v) {
                out.headers.push((k, v));
            }
        }
        out
    }

    /// Adds a `Set-Cookie`; a cookie that is no header value is left off.
    pub fn with_cookie(mut self, cookie: String) -> Response {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            self.headers.push((header::SET_COOKIE, v));
        }
        self
    }
}
