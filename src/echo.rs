//! Built-in echo upstreams for `sessiongate demo`, the benchmark and the
//! tests: an HTTP controller that answers every request with a JSON picture
//! of what it received, and a WebSocket gateway that echoes every message.
//!
//! `GET /static` (after any prefix the gate strips) is the exception: a fixed
//! answer that reads no header but the framing ones. The benchmark uses it,
//! so the upstream's work does not grow with the headers the gate injects and
//! the figures measure the gate.

use std::collections::BTreeMap;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

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

async fn http_conn(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Read until a whole head is buffered.
        let (head_len, method, path, headers, content_length, close) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut hs);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut headers = BTreeMap::<String, String>::new();
                    let mut cl = 0usize;
                    let mut close = req.version == Some(0);
                    if req.path == Some(STATIC_PATH) {
                        for h in req.headers.iter() {
                            if h.name.eq_ignore_ascii_case("content-length") {
                                cl = std::str::from_utf8(h.value)
                                    .ok()
                                    .and_then(|v| v.trim().parse().ok())
                                    .unwrap_or(0);
                            } else if h.name.eq_ignore_ascii_case("connection") {
                                close |= h.value.eq_ignore_ascii_case(b"close");
                            }
                        }
                        break (n, String::new(), STATIC_PATH.to_owned(), headers, cl, close);
                    }
                    for h in req.headers.iter() {
                        let name = h.name.to_ascii_lowercase();
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        if name == "content-length" {
                            cl = value.trim().parse().unwrap_or(0);
                        }
                        if name == "connection" && value.eq_ignore_ascii_case("close") {
                            close = true;
                        }
                        headers
                            .entry(name)
                            .and_modify(|v| {
                                v.push_str(", ");
                                v.push_str(&value);
                            })
                            .or_insert(value);
                    }
                    break (
                        n,
                        req.method.unwrap_or("").to_owned(),
                        req.path.unwrap_or("").to_owned(),
                        headers,
                        cl,
                        close,
                    );
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                _ => return,
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + content_length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if path == STATIC_PATH {
            buf.drain(..head_len + content_length);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
                STATIC_BODY.len(),
                if close { "Connection: close\r\n" } else { "" }
            );
            let mut out = head.into_bytes();
            out.extend_from_slice(STATIC_BODY);
            if stream.write_all(&out).await.is_err() || close {
                return;
            }
            continue;
        }
        let body = String::from_utf8_lossy(&buf[head_len..head_len + content_length]).into_owned();
        buf.drain(..head_len + content_length);
        let (p, q) = match path.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (path, None),
        };
        let out = serde_json::to_vec(&json!({
            "method": method, "path": p, "query": q, "headers": headers, "body": body,
        }))
        .unwrap_or_default();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
            out.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(&out).await.is_err()
        {
            return;
        }
        if close {
            return;
        }
    }
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
