//! HTTP/1.1 message reading for the gate's own HTTP clients (a login
//! delegate's answer, a WebSocket upstream's handshake answer), its built-in
//! servers (the echo upstreams, the demo page) and the test harness: a pure,
//! incremental parser of a head and its body framing (Content-Length, chunked
//! with trailers, or until close) within bounded sizes, and a small async
//! reader over any [`AsyncRead`] that drives it.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// What a reader accepts: sizes, and how long one read may wait.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest head, blank line included.
    pub head: usize,
    /// Most header fields in a head.
    pub headers: usize,
    /// Largest (decoded) body.
    pub body: usize,
    /// How long a single read may wait; `None` leaves time to the caller.
    pub idle: Option<Duration>,
}

/// Most trailer fields accepted after a chunked body (they are not kept).
const MAX_TRAILERS: usize = 64;
/// Room for a chunk's size line and CRLFs on top of the body limit, so an
/// undecoded chunk of the largest allowed size still fits.
const CHUNK_SLACK: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed head: {0}")]
    Head(#[source] httparse::Error),
    #[error("head has no status code")]
    NoStatus,
    #[error("head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("bad Content-Length")]
    BadLength,
    #[error("request body in a transfer coding other than chunked")]
    UnknownCoding,
    #[error("bad chunk size")]
    ChunkSize,
    #[error("chunk not followed by CRLF")]
    ChunkEnd,
    #[error("malformed trailer: {0}")]
    Trailer(#[source] httparse::Error),
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("connection closed before the message was whole")]
    Truncated,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("reading: {0}")]
    Io(#[from] io::Error),
    #[error("nothing read within {0:?}")]
    Idle(Duration),
}

/// How a message's body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Header fields as sent: names in their own case, values as bytes.
pub type Fields = Vec<(String, Vec<u8>)>;

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub headers: Fields,
    /// Its length in bytes, blank line included: where the body starts.
    pub len: usize,
    pub framing: Framing,
}

/// A request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// The minor version: 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Fields,
    pub len: usize,
    pub framing: Framing,
}

fn fields(headers: &[httparse::Header<'_>]) -> Fields {
    headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect()
}

/// The length of a head httparse found whole, within the limit.
fn head_len(
    parsed: httparse::Result<usize>,
    buffered: usize,
    limits: &Limits,
) -> Result<Option<usize>, ParseError> {
    match parsed.map_err(ParseError::Head)? {
        httparse::Status::Complete(len) if len <= limits.head => Ok(Some(len)),
        httparse::Status::Partial if buffered < limits.head => Ok(None),
        _ => Err(ParseError::HeadTooLarge(limits.head)),
    }
}

/// The response head at the start of `buf` once it is whole, `None` while
/// more is needed.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<Head>, ParseError> {
    let mut slots = vec![httparse::EMPTY_HEADER; limits.headers];
    let mut resp = httparse::Response::new(&mut slots);
    let Some(len) = head_len(resp.parse(buf), buf.len(), limits)? else {
        return Ok(None);
    };
    let status = resp.code.ok_or(ParseError::NoStatus)?;
    let headers = fields(resp.headers);
    let framing = response_framing(status, &headers)?;
    Ok(Some(Head {
        status,
        headers,
        len,
        framing,
    }))
}

/// The request head at the start of `buf` once it is whole.
pub fn parse_request_head(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, ParseError> {
    let mut slots = vec![httparse::EMPTY_HEADER; limits.headers];
    let mut req = httparse::Request::new(&mut slots);
    let Some(len) = head_len(req.parse(buf), buf.len(), limits)? else {
        return Ok(None);
    };
    let headers = fields(req.headers);
    // A request without framing has no body (RFC 9112 section 6.3).
    let framing = match framing_fields(&headers)? {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) => return Err(ParseError::UnknownCoding),
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::Length(0),
    };
    Ok(Some(RequestHead {
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        version: req.version.unwrap_or(1),
        headers,
        len,
        framing,
    }))
}

fn response_framing(status: u16, headers: &Fields) -> Result<Framing, ParseError> {
    // These never have a body, whatever their framing fields say.
    if matches!(status, 100..=199 | 204 | 304) {
        return Ok(Framing::Length(0));
    }
    Ok(match framing_fields(headers)? {
        (Some(true), _) => Framing::Chunked,
        // Any other coding is delimited by the close (RFC 9112 section 6.3).
        (Some(false), _) => Framing::UntilClose,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::UntilClose,
    })
}

/// Whether `Transfer-Encoding` is present and ends in chunked, and the
/// `Content-Length`, which must be one number however often it is sent
/// (Transfer-Encoding overrides it, but a bad one is refused either way:
/// disagreeing lengths are how responses get split).
fn framing_fields(headers: &Fields) -> Result<(Option<bool>, Option<usize>), ParseError> {
    let mut chunked = None;
    let mut length = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            for part in value.split(|&b| b == b',') {
                let part = part.trim_ascii();
                if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                    return Err(ParseError::BadLength);
                }
                let n = std::str::from_utf8(part)
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or(ParseError::BadLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(ParseError::BadLength);
                }
                length = Some(n);
            }
        }
    }
    Ok((chunked, length))
}

/// One step of chunked decoding.
#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    /// One chunk, this many bytes of input, was decoded into the body.
    Took(usize),
    /// The last chunk's size line, this many bytes; trailers follow.
    Last(usize),
    NeedMore,
}

/// Decodes the chunk at the start of `raw` into `body`, if it is all there.
fn dechunk(raw: &[u8], body: &mut Vec<u8>, max: usize) -> Result<Chunk, ParseError> {
    let (size_len, size) = match httparse::parse_chunk_size(raw) {
        Ok(httparse::Status::Complete(v)) => v,
        Ok(httparse::Status::Partial) => return Ok(Chunk::NeedMore),
        Err(_) => return Err(ParseError::ChunkSize),
    };
    if size == 0 {
        return Ok(Chunk::Last(size_len));
    }
    let size = usize::try_from(size)
        .ok()
        .filter(|s| body.len().saturating_add(*s) <= max)
        .ok_or(ParseError::BodyTooLarge(max))?;
    let end = size_len + size;
    if raw.len() < end + 2 {
        return Ok(Chunk::NeedMore);
    }
    if &raw[end..end + 2] != b"\r\n" {
        return Err(ParseError::ChunkEnd);
    }
    body.extend_from_slice(&raw[size_len..end]);
    Ok(Chunk::Took(end + 2))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Data,
    Trailers,
    /// Whole; the body took this many bytes of input.
    Done(usize),
}

/// A body being decoded from the bytes after its head, fed as they arrive.
#[derive(Debug)]
pub struct Body {
    framing: Framing,
    max: usize,
    /// Input consumed so far (chunked only).
    at: usize,
    decoded: Vec<u8>,
    phase: Phase,
}

impl Body {
    /// Refuses at once a declared length over `max`.
    pub fn new(framing: Framing, max: usize) -> Result<Body, ParseError> {
        if matches!(framing, Framing::Length(n) if n > max) {
            return Err(ParseError::BodyTooLarge(max));
        }
        Ok(Body {
            framing,
            max,
            at: 0,
            decoded: Vec::new(),
            phase: Phase::Data,
        })
    }

    /// `raw` holds every byte read after the head so far (it only grows
    /// between calls); `eof`: nothing more will come. Answers how many
    /// bytes of `raw` the body took once it is whole, `None` while more is
    /// needed. Only a body without framing ends at EOF.
    pub fn advance(&mut self, raw: &[u8], eof: bool) -> Result<Option<usize>, ParseError> {
        let done = match self.framing {
            Framing::Length(n) => (raw.len() >= n).then_some(n),
            Framing::UntilClose if raw.len() > self.max => {
                return Err(ParseError::BodyTooLarge(self.max));
            }
            Framing::UntilClose => eof.then_some(raw.len()),
            Framing::Chunked => self.decode_chunks(raw)?,
        };
        match done {
            Some(end) => {
                self.phase = Phase::Done(end);
                Ok(Some(end))
            }
            None if eof => Err(ParseError::Truncated),
            None => Ok(None),
        }
    }

    fn decode_chunks(&mut self, raw: &[u8]) -> Result<Option<usize>, ParseError> {
        loop {
            let rest = &raw[self.at..];
            match self.phase {
                Phase::Done(end) => return Ok(Some(end)),
                Phase::Data => match dechunk(rest, &mut self.decoded, self.max)? {
                    Chunk::Took(n) => self.at += n,
                    Chunk::Last(n) => {
                        self.at += n;
                        self.phase = Phase::Trailers;
                    }
                    Chunk::NeedMore => break,
                },
                Phase::Trailers => {
                    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
                    match httparse::parse_headers(rest, &mut slots).map_err(ParseError::Trailer)? {
                        httparse::Status::Complete((n, _)) => {
                            self.phase = Phase::Done(self.at + n);
                        }
                        httparse::Status::Partial => break,
                    }
                }
            }
        }
        if raw.len() - self.at > self.max + CHUNK_SLACK {
            return Err(ParseError::BodyTooLarge(self.max));
        }
        Ok(None)
    }

    /// The body, out of `raw` (every byte read after the head), once
    /// [`Body::advance`] said it is whole.
    pub fn into_body(self, mut raw: Vec<u8>) -> Vec<u8> {
        match (self.framing, self.phase) {
            (Framing::Chunked, _) => self.decoded,
            (_, Phase::Done(end)) => {
                raw.truncate(end);
                raw
            }
            _ => raw,
        }
    }
}

/// A response read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
}

/// A request read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub head: RequestHead,
    pub body: Vec<u8>,
}

/// Reads more into `buf`; answers how many bytes came (0 at EOF).
async fn fill<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    idle: Option<Duration>,
) -> Result<usize, ReadError> {
    buf.reserve(4096);
    let read = s.read_buf(buf);
    let n = match idle {
        Some(d) => tokio::time::timeout(d, read)
            .await
            .map_err(|_| ReadError::Idle(d))??,
        None => read.await?,
    };
    Ok(n)
}

/// Reads into `buf` until `parse` finds a whole head there.
async fn read_until<S: AsyncRead + Unpin, T>(
    s: &mut S,
    buf: &mut Vec<u8>,
    limits: &Limits,
    parse: impl Fn(&[u8], &Limits) -> Result<Option<T>, ParseError>,
) -> Result<T, ReadError> {
    loop {
        if let Some(head) = parse(buf, limits)? {
            return Ok(head);
        }
        if fill(s, buf, limits.idle).await? == 0 {
            return Err(ParseError::Truncated.into());
        }
    }
}

/// Reads until `buf` holds a whole response head and parses it. `buf`
/// keeps every byte read, including any past the head (the start of the
/// body, or the first bytes of an upgraded protocol).
pub async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Head, ReadError> {
    read_until(s, buf, limits, parse_head).await
}

/// Reads the body `framing` delimits; `raw` holds the bytes already read
/// after the head. Stops as soon as the framing says the body is whole:
/// a peer may keep the connection open after it.
pub async fn read_body<S: AsyncRead + Unpin>(
    s: &mut S,
    framing: Framing,
    mut raw: Vec<u8>,
    limits: &Limits,
) -> Result<Vec<u8>, ReadError> {
    let mut body = Body::new(framing, limits.body)?;
    let mut eof = false;
    while body.advance(&raw, eof)?.is_none() {
        eof = fill(s, &mut raw, limits.idle).await? == 0;
    }
    Ok(body.into_body(raw))
}

/// Reads one response, head and body. Bytes read past it are dropped:
/// this serves a peer that answers one request at a time.
pub async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    limits: &Limits,
) -> Result<Response, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let head = read_head(s, &mut buf, limits).await?;
    let raw = buf.split_off(head.len);
    let body = read_body(s, head.framing, raw, limits).await?;
    Ok(Response { head, body })
}

/// Reads one request, head and body (for test and stand-in upstreams).
pub async fn read_request<S: AsyncRead + Unpin>(
    s: &mut S,
    limits: &Limits,
) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let head = read_until(s, &mut buf, limits, parse_request_head).await?;
    let raw = buf.split_off(head.len);
    let body = read_body(s, head.framing, raw, limits).await?;
    Ok(Request { head, body })
}

/// Reads the next request of a keep-alive connection, head and body, for a
/// server. `buf` carries bytes between calls: whatever the client sent past
/// this request (the start of a pipelined one) stays in it. `None` when the
/// client closed before sending a byte of another request.
pub async fn read_next_request<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Option<Request>, ReadError> {
    let head = loop {
        if let Some(head) = parse_request_head(buf, limits)? {
            break head;
        }
        if fill(s, buf, limits.idle).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(ParseError::Truncated.into());
        }
    };
    let mut body = Body::new(head.framing, limits.body)?;
    let mut eof = false;
    let end = loop {
        if let Some(end) = body.advance(&buf[head.len..], eof)? {
            break end;
        }
        eof = fill(s, buf, limits.idle).await? == 0;
    };
    let rest = buf.split_off(head.len + end);
    let raw = buf.split_off(head.len);
    *buf = rest;
    Ok(Some(Request {
        head,
        body: body.into_body(raw),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        head: 1024,
        headers: 16,
        body: 64,
        idle: None,
    };

    /// The whole response in `buf`, as a reader that has seen `eof` would
    /// have it: `None` while more is needed.
    fn whole(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, ParseError> {
        let Some(head) = parse_head(buf, &LIMITS)? else {
            return if eof {
                Err(ParseError::Truncated)
            } else {
                Ok(None)
            };
        };
        let raw = &buf[head.len..];
        let mut body = Body::new(head.framing, LIMITS.body)?;
        Ok(body
            .advance(raw, eof)?
            .map(|_| (head.status, body.into_body(raw.to_vec()))))
    }

    #[test]
    fn response_is_whole_by_its_framing_not_by_eof() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(whole(full, false).unwrap(), Some((200, b"{}".to_vec())));
        assert_eq!(whole(&full[..full.len() - 1], false).unwrap(), None);
        assert_eq!(
            whole(&full[..full.len() - 1], true),
            Err(ParseError::Truncated)
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert_eq!(whole(chunked, false).unwrap(), Some((200, b"{}".to_vec())));
        let unframed = b"HTTP/1.1 200 OK\r\n\r\n{}";
        assert_eq!(whole(unframed, false).unwrap(), None);
        assert_eq!(whole(unframed, true).unwrap(), Some((200, b"{}".to_vec())));
        assert_eq!(whole(b"HTTP/1.1 2", false).unwrap(), None);
        assert!(whole(b"garbage\r\n\r\n", false).is_err());
    }

    #[test]
    fn status_needs_the_whole_head() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(parse_head(&head[..20], &LIMITS).unwrap(), None);
        let mut with_frame = head.to_vec();
        with_frame.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        let parsed = parse_head(&with_frame, &LIMITS).unwrap().unwrap();
        assert_eq!((parsed.status, parsed.len), (101, head.len()));
        assert_eq!(parsed.framing, Framing::Length(0));
        assert_eq!(
            parsed.headers,
            vec![("Upgrade".to_owned(), b"websocket".to_vec())]
        );
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n", &LIMITS).is_err());
    }

    #[test]
    fn chunks_decode_one_at_a_time() {
        let raw = b"4\r\nnope\r\n3;ext=1\r\n!!!\r\n0\r\n\r\n";
        let mut body = Vec::new();
        assert_eq!(dechunk(raw, &mut body, 64), Ok(Chunk::Took(9)));
        assert_eq!(dechunk(&raw[9..], &mut body, 64), Ok(Chunk::Took(14)));
        assert_eq!(dechunk(&raw[23..], &mut body, 64), Ok(Chunk::Last(3)));
        assert_eq!(body, b"nope!!!");
        assert_eq!(dechunk(b"4\r\nno", &mut body, 64), Ok(Chunk::NeedMore));
        assert_eq!(
            dechunk(b"zz\r\n", &mut body, 64),
            Err(ParseError::ChunkSize)
        );
        assert_eq!(
            dechunk(b"2\r\nabXY", &mut body, 64),
            Err(ParseError::ChunkEnd)
        );
        assert_eq!(
            dechunk(b"99\r\n", &mut body, 64),
            Err(ParseError::BodyTooLarge(64))
        );
    }

    #[test]
    fn chunked_bodies_decode_whole() {
        let raw = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut body = Body::new(Framing::Chunked, 64).unwrap();
        assert_eq!(body.advance(raw, false), Ok(Some(raw.len())));
        assert_eq!(body.into_body(raw.to_vec()), b"abcde");
        let mut bad = Body::new(Framing::Chunked, 64).unwrap();
        assert_eq!(bad.advance(b"zz\r\n", false), Err(ParseError::ChunkSize));
    }

    #[test]
    fn a_chunked_body_ends_after_its_trailers_and_leaves_what_follows() {
        let raw = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\nHTTP/1.1 200";
        let mut body = Body::new(Framing::Chunked, 64).unwrap();
        // Fed a byte at a time, it is whole exactly when the trailers are.
        let end = raw.len() - b"HTTP/1.1 200".len();
        for n in 0..end {
            assert_eq!(body.advance(&raw[..n], false), Ok(None), "{n}");
        }
        assert_eq!(body.advance(&raw[..end], false), Ok(Some(end)));
        assert_eq!(body.advance(raw, false), Ok(Some(end)));
        assert_eq!(body.into_body(raw.to_vec()), b"abc");
        let mut cut = Body::new(Framing::Chunked, 64).unwrap();
        assert_eq!(
            cut.advance(b"3\r\nabc\r\n0\r\n", true),
            Err(ParseError::Truncated)
        );
    }

    #[test]
    fn bodies_are_bounded() {
        assert_eq!(
            Body::new(Framing::Length(65), 64).err(),
            Some(ParseError::BodyTooLarge(64))
        );
        let mut open = Body::new(Framing::UntilClose, 64).unwrap();
        assert_eq!(
            open.advance(&[b'x'; 65], false),
            Err(ParseError::BodyTooLarge(64))
        );
        let mut chunked = Body::new(Framing::Chunked, 64).unwrap();
        assert_eq!(
            chunked.advance(b"40\r\n", false),
            Ok(None),
            "a chunk of exactly the limit waits for its data"
        );
        let mut two = Body::new(Framing::Chunked, 64).unwrap();
        let raw = format!("30\r\n{}\r\n30\r\n", "x".repeat(48));
        assert_eq!(
            two.advance(raw.as_bytes(), false),
            Err(ParseError::BodyTooLarge(64))
        );
        let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "y".repeat(1100));
        assert_eq!(
            parse_head(big.as_bytes(), &LIMITS),
            Err(ParseError::HeadTooLarge(1024))
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |head: &str| parse_head(head.as_bytes(), &LIMITS).map(|h| h.unwrap().framing);
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Err(ParseError::BadLength)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n"),
            Err(ParseError::BadLength)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\nContent-Length: 5\r\n\r\n"
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Ok(Framing::UntilClose)
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Ok(Framing::UntilClose));
        for status in [101, 204, 304] {
            assert_eq!(
                framing(&format!("HTTP/1.1 {status} X\r\nContent-Length: 5\r\n\r\n")),
                Ok(Framing::Length(0))
            );
        }
        let req = |head: &str| parse_request_head(head.as_bytes(), &LIMITS).map(|h| h.unwrap());
        let get = req("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(
            (
                get.method.as_str(),
                get.target.as_str(),
                get.version,
                get.framing
            ),
            ("GET", "/a?b", 1, Framing::Length(0))
        );
        assert_eq!(
            req("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").map(|h| h.framing),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            req("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(ParseError::UnknownCoding)
        );
    }

    #[tokio::test]
    async fn the_reader_stops_at_the_framing_and_reads_requests_too() {
        use tokio::io::AsyncWriteExt;
        let (mut near, mut far) = tokio::io::duplex(8);
        let writer = tokio::spawn(async move {
            far.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            )
            .await
            .map(|()| far)
        });
        let resp = read_response(&mut near, &LIMITS).await.unwrap();
        assert_eq!(
            (resp.head.status, resp.body.as_slice()),
            (200, &b"hello"[..])
        );
        // The far end is still open: the response ended by its framing.
        let far = writer.await.unwrap().unwrap();
        drop(far);
        assert!(matches!(
            read_response(&mut near, &LIMITS).await,
            Err(ReadError::Parse(ParseError::Truncated))
        ));
        let (mut near, mut far) = tokio::io::duplex(8);
        let writer = tokio::spawn(async move {
            far.write_all(b"POST /v HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
                .await
                .map(|()| far)
        });
        let req = read_request(&mut near, &LIMITS).await.unwrap();
        assert_eq!(
            (req.head.method.as_str(), req.body.as_slice()),
            ("POST", &b"abc"[..])
        );
        drop(writer.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn a_server_reads_pipelined_requests_one_by_one_and_sees_the_clean_close() {
        use tokio::io::AsyncWriteExt;
        let (mut near, mut far) = tokio::io::duplex(8);
        // Two requests in one write: a chunked one with a trailer, then one
        // with a length; the second starts in the bytes read for the first.
        let writer = tokio::spawn(async move {
            far.write_all(
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                  3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n\
                  PUT /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nfg",
            )
            .await
        });
        let mut buf = Vec::new();
        let first = read_next_request(&mut near, &mut buf, &LIMITS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (first.head.target.as_str(), first.body.as_slice()),
            ("/a", &b"abcde"[..])
        );
        let second = read_next_request(&mut near, &mut buf, &LIMITS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                second.head.method.as_str(),
                second.head.target.as_str(),
                second.body.as_slice()
            ),
            ("PUT", "/b", &b"fg"[..])
        );
        assert!(buf.is_empty());
        writer.await.unwrap().unwrap();
        // Closed between requests: no request, no error.
        assert!(
            read_next_request(&mut near, &mut buf, &LIMITS)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_close_inside_a_request_is_truncation_not_the_end() {
        use tokio::io::AsyncWriteExt;
        let (mut near, mut far) = tokio::io::duplex(64);
        far.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
        drop(far);
        let mut buf = Vec::new();
        assert!(matches!(
            read_next_request(&mut near, &mut buf, &LIMITS).await,
            Err(ReadError::Parse(ParseError::Truncated))
        ));
    }
}
