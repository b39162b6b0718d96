//! The pages the binary serves from its own bytes: the operator's admin page
//! (on the admin listener at `/`) and the demo page `sessiongate demo` puts
//! behind the gate at `/`, which runs on the browser build of
//! `@sessiongate/client` (`clients/js`, copied to `src/pages/` by its build).

use http::{HeaderValue, header};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::http1;
use crate::reject::Reject;
use crate::response::Response;

pub const ADMIN_HTML: &str = include_str!("pages/admin.html");
pub const DEMO_HTML: &str = include_str!("pages/demo.html");
/// The SDK's browser bundle (IIFE, global `sessiongate`).
pub const SDK_JS: &str = include_str!("pages/sessiongate.js");

/// The admin page; it talks to this listener's API with the token typed into it.
pub fn admin_page() -> Response {
    let mut r = Response::json(200, &serde_json::Value::Null);
    r.headers = vec![
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    r.body = ADMIN_HTML.as_bytes().to_vec();
    r
}

/// The demo page's file for a request path, with its content type.
pub fn demo_asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path.split('?').next().unwrap_or("") {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", DEMO_HTML)),
        "/sessiongate.js" => Some(("text/javascript; charset=utf-8", SDK_JS)),
        _ => None,
    }
}

/// Serves the demo page's files over HTTP/1.1 (the gate proxies `/` here on a
/// public route) until the task is dropped.
pub async fn serve_demo(listener: TcpListener) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(demo_conn(stream));
        }
    }
}

/// Page requests are small GETs; anything larger is refused with the close.
const LIMITS: http1::Limits = http1::Limits {
    head: 64 * 1024,
    headers: 64,
    body: 64 * 1024,
    idle: None,
};

async fn demo_conn(mut stream: TcpStream) {
    let mut buf = Vec::with_capacity(2048);
    while let Ok(Some(req)) = http1::read_next_request(&mut stream, &mut buf, &LIMITS).await {
        let out = demo_answer(&req.head.method, &req.head.target);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The whole HTTP answer to one demo page request. Paths that are not the
/// page's get the gate's own `no_route` answer, so `/` behind the gate reads
/// like the gate everywhere else.
fn demo_answer(method: &str, path: &str) -> Vec<u8> {
    let (status, extra, ctype, body): (&str, &str, &str, Vec<u8>) = match demo_asset(path) {
        Some((t, b)) if method == "GET" || method == "HEAD" => (
            "200 OK",
            "Cache-Control: no-cache\r\n",
            t,
            b.as_bytes().to_vec(),
        ),
        Some(_) => {
            let r = Reject::MethodNotAllowed("GET");
            (
                "405 Method Not Allowed",
                "Allow: GET\r\n",
                "application/json",
                r.body(),
            )
        }
        None => (
            "404 Not Found",
            "",
            "application/json",
            Reject::NoRoute.body(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(&body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_serves_the_page_and_the_sdk_only() {
        assert_eq!(
            demo_asset("/").map(|a| a.0),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(demo_asset("/sessiongate.js?v=1").map(|a| a.1), Some(SDK_JS));
        assert_eq!(demo_asset("/etc/passwd"), None);
        assert!(DEMO_HTML.contains("/sessiongate.js"));
    }

    #[test]
    fn other_paths_and_methods_answer_like_the_gate() {
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        let page = text(demo_answer("GET", "/"));
        assert!(
            page.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/html"),
            "{page}"
        );
        let post = text(demo_answer("POST", "/"));
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );
        assert!(
            post.contains("\r\nAllow: GET\r\n")
                && post.ends_with(
                    r#""error":"method_not_allowed","message":"method not allowed; allowed: GET"}"#
                ),
            "{post}"
        );
        let missing = text(demo_answer("GET", "/healthz"));
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\nContent-Type: application/json"),
            "{missing}"
        );
        assert!(missing.contains(r#"{"error":"no_route""#), "{missing}");
    }
}
