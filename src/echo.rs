//! Built-in echo upstreams for `sessiongate demo`, the benchmark and the
//! tests: an HTTP controller that answers every request with a JSON picture
//! of what it received, and a WebSocket gateway that echoes every message.
//!
//! `GET /static` (after any prefix the gate strips) is the exception: a fixed
//! answer whatever the headers. The benchmarks use it, so the answer does not
//! grow with the headers the gate injects and the figures measure the gate.

use std::collections::BTreeMap;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::http1;

const MAX_HEAD: usize = 128 * 1024;
/// The path answered with [`STATIC_BODY`] instead of the JSON picture.
pub const STATIC_PATH: &str = "/static";
pub const STATIC_BODY: &[u8] = b"{\"ok\":true}";

/// Serves HTTP/1.1 echo on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(http_conn(stream));
            }
            Err(e) => {
                tracing::warn!(error = %e, "echo accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// What the echo controller reads: heads as large as the gate forwards,
/// bodies as large as a test sends.
const LIMITS: http1::Limits = http1::Limits {
    head: MAX_HEAD,
    headers: 128,
    body: 64 << 20,
    idle: None,
};

async fn http_conn(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    // A malformed request, like the client's close, ends the connection.
    while let Ok(Some(req)) = http1::read_next_request(&mut stream, &mut buf, &LIMITS).await {
        let close = req.head.version == 0
            || req.head.headers.iter().any(|(n, v)| {
                n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case(b"close")
            });
        let body = if req.head.target == STATIC_PATH {
            STATIC_BODY.to_vec()
        } else {
            picture(req)
        };
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        out.extend_from_slice(&body);
        if stream.write_all(&out).await.is_err() || close {
            return;
        }
    }
}

/// The JSON picture of a request: header names lowercased, repeated fields
/// joined with ", " as a proxy may fold them, the body as text.
fn picture(req: http1::Request) -> Vec<u8> {
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in &req.head.headers {
        let value = String::from_utf8_lossy(value);
        headers
            .entry(name.to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let target = req.head.target;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target.as_str(), None),
    };
    serde_json::to_vec(&json!({
        "method": req.head.method, "path": path, "query": query, "headers": headers,
        "body": String::from_utf8_lossy(&req.body),
    }))
    .unwrap_or_default()
}

/// Serves a WebSocket echo on `listener` until the task is dropped.
pub async fn serve_ws(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(ws_conn(stream));
            }
            Err(e) => {
                tracing::warn!(error = %e, "ws echo accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn ws_conn(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        max_message_size: Some(64 << 20),
        max_frame_size: Some(64 << 20),
        ..Default::default()
    };
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).await.is_err() {
                    return;
                }
            }
            // tungstenite answers pings and echoes the Close itself; polling on
            // flushes that reply and then ends the stream.
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// `/static` answers the fixed body and keeps the connection for the
    /// next request; any other path still gets the JSON picture.
    #[tokio::test]
    async fn static_path_is_fixed_and_keeps_the_connection() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(serve_http(l));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /static HTTP/1.1\r\nHost: x\r\nX-Session-Id: s\r\nContent-Length: 3\r\n\r\nabcGET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let got = String::from_utf8(got).unwrap();
        let first = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"ok\":true}}",
            STATIC_BODY.len()
        );
        assert!(got.starts_with(&first), "{got}");
        assert!(got[first.len()..].contains("\"path\":\"/other\""), "{got}");
        server.abort();
    }
}
