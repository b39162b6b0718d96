//! `GET /_session/openapi.json`: the OpenAPI 3.1 document of the session API
//! and the admin API, embedded from `docs/openapi.json`.
//!
//! The document is written by hand and held to the code by `crate::conformance`'s tests
//! (test-only, beside rather than inside this module, since they drive the handlers that
//! serve this document):
//! every path and method it lists is answered by the API with one of the
//! statuses it documents, every method it leaves out gets 405 with the
//! documented methods in `Allow`, and every error code the gate can send is
//! in its `ErrorCode` enum.

use http::{HeaderValue, header};

use crate::response::Response;

pub const DOCUMENT: &str = include_str!("../docs/openapi.json");

pub const PATH: &str = "/_session/openapi.json";

pub fn response() -> Response {
    let mut r = Response::json(200, &serde_json::Value::Null);
    r.headers = vec![(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    r.body = DOCUMENT.as_bytes().to_vec();
    r
}
