//! A small, strict HTTP/1.1 server and client over Unix sockets (std only), for the admin's
//! REST API. One request per connection (`Connection: close`), one thread per connection.
//!
//! Bounds against a hostile client ([`Limits`]): the request line and headers at most
//! 16 KiB, a body at most 64 KiB given by `Content-Length` (no `Transfer-Encoding`), the
//! whole request within a read timeout, a cap on concurrent connections. Each violation is
//! answered (400, 413, 408, 503) with `{"error": "..."}` and the connection is closed.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What the server accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus headers, terminating blank line included.
    pub head_bytes: usize,
    /// The body (`Content-Length`).
    pub body_bytes: usize,
    /// The whole request (head and body) must arrive within this.
    pub read_timeout: Duration,
    /// A write that makes no progress for this long ends the connection.
    pub write_timeout: Duration,
    /// Connections served at once (long-lived consoles and event streams included).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            head_bytes: 16 << 10,
            body_bytes: 64 << 10,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }
}

/// Headers a request may have at most.
const MAX_HEADERS: usize = 64;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The target's path (the query, if any, is split off into `query`).
    pub path: String,
    /// The target's query, without `?`.
    pub query: Option<String>,
    /// Header names in lower case, values trimmed.
    pub headers: Vec<(String, String)>,
    /// Exactly `Content-Length` bytes.
    pub body: Vec<u8>,
    /// Bytes the client sent after the body (the start of an upgraded stream).
    pub rest: Vec<u8>,
}

impl Request {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed (400).
    #[error("{0}")]
    Bad(String),
    /// Too large (413).
    #[error("{0}")]
    TooLarge(String),
    /// Not complete within the read timeout (408).
    #[error("the request did not arrive within {0} ms")]
    Timeout(u128),
    /// The client closed the connection before sending anything: nothing to answer.
    #[error("the connection closed before a request")]
    Closed,
    /// The connection failed: nothing to answer.
    #[error("{0}")]
    Io(String),
}

impl HttpError {
    /// The status to answer with, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Bad(_) => Some(400),
            HttpError::TooLarge(_) => Some(413),
            HttpError::Timeout(_) => Some(408),
            HttpError::Closed | HttpError::Io(_) => None,
        }
    }
}

/// Read from `r` until the deadline: `Ok(0)` at end of stream.
fn read_until(stream: &mut UnixStream, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    stream.read(buf)
}

fn io_error(e: io::Error, limits: &Limits) -> HttpError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            HttpError::Timeout(limits.read_timeout.as_millis())
        }
        _ => HttpError::Io(e.to_string()),
    }
}

/// Where the head ends (the index after `\r\n\r\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Read one request from `stream` within `limits`. On `Expect: 100-continue` it writes the
/// interim `100 Continue` before reading the body.
pub fn read_request(stream: &mut UnixStream, limits: &Limits) -> Result<Request, HttpError> {
    let deadline = Instant::now() + limits.read_timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        let room = limits.head_bytes.saturating_sub(buf.len()).min(chunk.len());
        if room == 0 {
            return Err(HttpError::TooLarge(format!(
                "the request line and headers exceed {} bytes",
                limits.head_bytes
            )));
        }
        let n =
            read_until(stream, &mut chunk[..room], deadline).map_err(|e| io_error(e, limits))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HttpError::Closed
            } else {
                HttpError::Bad("the connection closed in the middle of the request".into())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut req = parse_head(&buf[..end - 4])?;
    let length = content_length(&req.headers, limits)?;
    let mut body = buf.split_off(end);
    if body.len() < length
        && req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|e| HttpError::Io(e.to_string()))?;
    }
    while body.len() < length {
        let room = (length - body.len()).min(chunk.len());
        let n =
            read_until(stream, &mut chunk[..room], deadline).map_err(|e| io_error(e, limits))?;
        if n == 0 {
            return Err(HttpError::Bad(format!(
                "the connection closed after {} of {length} body bytes",
                body.len()
            )));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    req.rest = body.split_off(length);
    req.body = body;
    Ok(req)
}

/// `Content-Length` (0 when absent); refuses `Transfer-Encoding`, duplicates and non-digits.
fn content_length(headers: &[(String, String)], limits: &Limits) -> Result<usize, HttpError> {
    if header(headers, "transfer-encoding").is_some() {
        return Err(HttpError::Bad(
            "Transfer-Encoding is not supported: send the body with Content-Length".into(),
        ));
    }
    let mut values = headers.iter().filter(|(n, _)| n == "content-length");
    let Some((_, v)) = values.next() else {
        return Ok(0);
    };
    if values.next().is_some() {
        return Err(HttpError::Bad("more than one Content-Length header".into()));
    }
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::Bad(format!(
            "Content-Length {v:?} is not a decimal number"
        )));
    }
    let n: u64 = v
        .parse()
        .map_err(|_| HttpError::Bad(format!("Content-Length {v:?} is not a decimal number")))?;
    if n > limits.body_bytes as u64 {
        return Err(HttpError::TooLarge(format!(
            "the body ({n} bytes) exceeds {} bytes",
            limits.body_bytes
        )));
    }
    Ok(n as usize)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parse the request line and headers (`head` without the final blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, HttpError> {
    let bad = |m: String| HttpError::Bad(m);
    // Every line, the last one included, must end with CRLF: the caller cut the final
    // CRLF CRLF, so put one CR back for uniform splitting.
    let mut owned = head.to_vec();
    owned.extend_from_slice(b"\r");
    let mut lines = owned.split(|&b| b == b'\n').map(|l| {
        l.strip_suffix(b"\r")
            .filter(|l| !l.contains(&b'\r'))
            .ok_or_else(|| HttpError::Bad("a line does not end with CRLF (bare LF or CR)".into()))
    });
    let line = lines.next().ok_or_else(|| bad("empty request".into()))??;
    let line = std::str::from_utf8(line)
        .ok()
        .filter(|l| l.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .ok_or_else(|| bad("the request line has bytes other than printable ASCII".into()))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(bad(format!(
            "the request line {line:?} is not METHOD SP TARGET SP VERSION"
        )));
    };
    if method.is_empty() || method.len() > 16 || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad(format!("method {method:?} is not an upper-case token")));
    }
    if !target.starts_with('/') {
        return Err(bad(format!("target {target:?} is not an absolute path")));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(bad(format!(
            "version {version:?} is not HTTP/1.1 or HTTP/1.0"
        )));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut headers = Vec::new();
    for line in lines {
        let line = line?;
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::TooLarge(format!(
                "more than {MAX_HEADERS} headers"
            )));
        }
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err(bad("folded header lines are not accepted".into()));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad("a header line has no colon".into()))?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(bad(format!(
                "header name {:?} is not a token",
                String::from_utf8_lossy(name)
            )));
        }
        if !value
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            return Err(bad(format!(
                "header {:?} has a control or non-ASCII byte",
                String::from_utf8_lossy(name)
            )));
        }
        // Both checked ASCII above.
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let value = String::from_utf8_lossy(value)
            .trim_matches([' ', '\t'])
            .to_string();
        headers.push((name, value));
    }
    Ok(Request {
        method: method.to_string(),
        path,
        query,
        headers,
        body: Vec::new(),
        rest: Vec::new(),
    })
}

/// The reason phrase of the statuses the API uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The `{"error": message}` body.
pub fn error_body(message: &str) -> Vec<u8> {
    let mut b = serde_json::to_vec(&serde_json::json!({ "error": message }))
        .unwrap_or_else(|_| b"{\"error\":\"?\"}".to_vec());
    b.push(b'\n');
    b
}

/// Write a complete response with `Content-Length` and `Connection: close` (none of either
/// for 204), plus `headers`.
pub fn write_response(
    w: &mut impl Write,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if status != 204 {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

/// Write `{"error": message}` with `status`.
pub fn write_error(w: &mut impl Write, status: u16, message: &str) -> io::Result<()> {
    write_response(
        w,
        status,
        &[("Content-Type", "application/json")],
        &error_body(message),
    )
}

/// What handles one parsed request; it owns the connection and answers on it.
pub type Handler = dyn Fn(Request, UnixStream) + Send + Sync;

/// Decrements the connection count when a connection ends (however it ends).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serve `listener` until it fails: one thread per connection, at most
/// `limits.max_connections` at once (the others get 503).
pub fn serve(listener: UnixListener, limits: Limits, handler: Arc<Handler>) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors or memory: wait for connections to end.
                eprintln!("keel: api: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = stream.set_write_timeout(Some(limits.write_timeout));
        if active.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = write_error(
                &mut stream,
                503,
                &format!(
                    "too many connections (at most {} at once)",
                    limits.max_connections
                ),
            );
            continue;
        }
        let slot = Slot(active.clone());
        let handler = handler.clone();
        let spawned = std::thread::Builder::new()
            .name("keel-api".into())
            .spawn(move || {
                let _slot = slot;
                serve_connection(stream, &limits, &*handler);
            });
        if let Err(e) = spawned {
            eprintln!("keel: api: cannot start a connection thread: {e}");
        }
    }
}

fn serve_connection(mut stream: UnixStream, limits: &Limits, handler: &Handler) {
    match read_request(&mut stream, limits) {
        Ok(req) => {
            let _ = stream.set_read_timeout(None);
            handler(req, stream);
        }
        Err(e) => {
            if let Some(status) = e.status() {
                let _ = write_error(&mut stream, status, &e.to_string());
            }
        }
    }
}

/// A response the client read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body (by `Content-Length`, or to the end of the stream).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The `error` of a JSON error body, or the body as text.
    pub fn error_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| {
                format!(
                    "{} {}: {}",
                    self.status,
                    reason(self.status),
                    String::from_utf8_lossy(&self.body).trim()
                )
            })
    }
}

/// A response body the client accepts at most (a list of many VMs fits).
const CLIENT_BODY_LIMIT: usize = 16 << 20;

/// Send a request on a new connection to `socket` and read the response head; the stream
/// is left positioned after the head, with the bytes already read past it in the returned
/// vector. For an upgrade or a stream; [`request`] for ordinary calls.
pub fn open(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<(Response, UnixStream, Vec<u8>)> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", socket.display())))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: keel\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    // A server that refuses early (503, 413) may close before reading everything: its
    // answer is still there to read.
    let sent = stream.write_all(&out);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        if buf.len() > 16 << 10 {
            return Err(io::Error::other("the response head exceeds 16 KiB"));
        }
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) => return Err(sent.err().unwrap_or(e)),
        };
        if n == 0 {
            return Err(sent.err().unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection without a response",
                )
            }));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end);
    let (status, headers) = parse_response_head(&buf[..end - 4])?;
    Ok((
        Response {
            status,
            headers,
            body: Vec::new(),
        },
        stream,
        rest,
    ))
}

fn parse_response_head(head: &[u8]) -> io::Result<(u16, Vec<(String, String)>)> {
    let text = std::str::from_utf8(head)
        .map_err(|_| io::Error::other("the response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers))
}

/// One request on a new connection to `socket`; the whole response.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let (mut resp, mut stream, mut body_buf) = open(socket, method, path, headers, body, timeout)?;
    let length = match resp.header("content-length") {
        Some(v) => Some(
            v.parse::<usize>()
                .ok()
                .filter(|&n| n <= CLIENT_BODY_LIMIT)
                .ok_or_else(|| io::Error::other(format!("bad Content-Length {v:?}")))?,
        ),
        None => None,
    };
    let mut chunk = [0u8; 8192];
    loop {
        if length.is_some_and(|n| body_buf.len() >= n) {
            break;
        }
        if body_buf.len() > CLIENT_BODY_LIMIT {
            return Err(io::Error::other("the response body exceeds 16 MiB"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            if let Some(n) = length {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the response body ended after {} of {n} bytes",
                        body_buf.len()
                    ),
                ));
            }
            break;
        }
        body_buf.extend_from_slice(&chunk[..n]);
    }
    if let Some(n) = length {
        body_buf.truncate(n);
    }
    resp.body = body_buf;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, HttpError> {
        let head = s.strip_suffix("\r\n\r\n").unwrap_or(s);
        parse_head(head.as_bytes())
    }

    fn bad(s: &str) -> String {
        match parse(s) {
            Err(HttpError::Bad(m)) => m,
            other => panic!("{s:?} gave {other:?}"),
        }
    }

    #[test]
    fn a_well_formed_request_is_parsed() {
        let r = parse(
            "PUT /v1/vms/a/start?x=1 HTTP/1.1\r\nHost: k\r\nAuthorization:  Bearer t \r\n\r\n",
        )
        .unwrap();

        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, "/v1/vms/a/start");
        assert_eq!(r.query.as_deref(), Some("x=1"));
        assert_eq!(r.header("authorization"), Some("Bearer t"));
    }

    #[test]
    fn a_request_line_with_two_parts_is_rejected() {
        assert!(bad("GET /v1/vms\r\n\r\n").contains("METHOD SP TARGET SP VERSION"));
    }

    #[test]
    fn a_request_line_with_double_spaces_is_rejected() {
        bad("GET  /v1/vms HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn a_lower_case_method_is_rejected() {
        assert!(bad("get /v1/vms HTTP/1.1\r\n\r\n").contains("\"get\""));
    }

    #[test]
    fn a_target_that_is_not_a_path_is_rejected() {
        assert!(bad("GET http://x/v1/vms HTTP/1.1\r\n\r\n").contains("absolute path"));
    }

    #[test]
    fn an_unknown_version_is_rejected() {
        assert!(bad("GET / HTTP/2.0\r\n\r\n").contains("HTTP/2.0"));
    }

    #[test]
    fn a_bare_lf_line_ending_is_rejected() {
        bad("GET / HTTP/1.1\nHost: k\r\n\r\n");
    }

    #[test]
    fn a_bare_cr_in_a_header_is_rejected() {
        bad("GET / HTTP/1.1\r\nHost: k\rX: y\r\n\r\n");
    }

    #[test]
    fn a_header_without_colon_is_rejected() {
        assert!(bad("GET / HTTP/1.1\r\nHost k\r\n\r\n").contains("colon"));
    }

    #[test]
    fn whitespace_before_the_colon_is_rejected() {
        assert!(bad("GET / HTTP/1.1\r\nHost : k\r\n\r\n").contains("not a token"));
    }

    #[test]
    fn a_folded_header_is_rejected() {
        assert!(bad("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n").contains("folded"));
    }

    #[test]
    fn a_control_byte_in_a_header_value_is_rejected() {
        bad("GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n");
    }

    #[test]
    fn non_ascii_in_the_request_line_is_rejected() {
        bad("GET /\u{e9} HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn too_many_headers_are_too_large() {
        let mut s = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            s.push_str(&format!("X-{i}: y\r\n"));
        }
        s.push_str("\r\n");

        assert!(matches!(parse(&s), Err(HttpError::TooLarge(_))));
    }

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn transfer_encoding_is_rejected() {
        let h = headers(&[("transfer-encoding", "chunked")]);

        assert!(matches!(
            content_length(&h, &Limits::default()),
            Err(HttpError::Bad(m)) if m.contains("Transfer-Encoding")
        ));
    }

    #[test]
    fn a_signed_content_length_is_rejected() {
        let h = headers(&[("content-length", "+5")]);

        assert!(matches!(
            content_length(&h, &Limits::default()),
            Err(HttpError::Bad(_))
        ));
    }

    #[test]
    fn duplicate_content_lengths_are_rejected() {
        let h = headers(&[("content-length", "5"), ("content-length", "5")]);

        assert!(matches!(
            content_length(&h, &Limits::default()),
            Err(HttpError::Bad(_))
        ));
    }

    #[test]
    fn a_content_length_over_the_limit_is_too_large() {
        let h = headers(&[("content-length", "65537")]);

        assert!(matches!(
            content_length(&h, &Limits::default()),
            Err(HttpError::TooLarge(_))
        ));
    }

    #[test]
    fn a_huge_content_length_is_too_large_not_an_overflow() {
        let h = headers(&[("content-length", "9999999999999999999")]);

        assert!(matches!(
            content_length(&h, &Limits::default()),
            Err(HttpError::TooLarge(_))
        ));
    }

    /// Write `input` on one end of a socket pair (then close it unless `keep_open`) and read
    /// a request from the other end.
    fn read_from(input: &[u8], keep_open: bool, limits: Limits) -> Result<Request, HttpError> {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        client.write_all(input).unwrap();
        if !keep_open {
            client.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let r = read_request(&mut server, &limits);
        drop(client);
        r
    }

    #[test]
    fn the_body_is_read_by_content_length_and_the_rest_is_kept() {
        let r = read_from(
            b"POST /v1/vms HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdEXTRA",
            false,
            Limits::default(),
        )
        .unwrap();

        assert_eq!(r.body, b"abcd");
        assert_eq!(r.rest, b"EXTRA");
    }

    #[test]
    fn a_head_over_the_limit_is_too_large() {
        let mut input = b"GET / HTTP/1.1\r\nX: ".to_vec();
        input.extend(std::iter::repeat_n(b'a', 17 << 10));

        let r = read_from(&input, false, Limits::default());

        assert!(matches!(r, Err(HttpError::TooLarge(_))), "{r:?}");
    }

    #[test]
    fn a_short_body_at_end_of_stream_is_bad() {
        let r = read_from(
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
            false,
            Limits::default(),
        );

        assert!(matches!(r, Err(HttpError::Bad(m)) if m.contains("3 of 10")));
    }

    #[test]
    fn an_incomplete_request_times_out() {
        let limits = Limits {
            read_timeout: Duration::from_millis(200),
            ..Limits::default()
        };

        let r = read_from(b"GET / HTTP/1.1\r\nHost:", true, limits);

        assert_eq!(r, Err(HttpError::Timeout(200)));
    }

    #[test]
    fn a_connection_closed_before_any_byte_is_not_answered() {
        let r = read_from(b"", false, Limits::default());

        assert_eq!(r, Err(HttpError::Closed));
        assert_eq!(HttpError::Closed.status(), None);
    }

    /// Any head, however mangled, is parsed or refused: never a panic (the daemon's release
    /// build aborts on one).
    #[test]
    fn mangled_heads_are_refused_without_panicking() {
        let seed =
            b"PUT /v1/vms/a/shutdown HTTP/1.1\r\nAuthorization: Bearer x\r\nContent-Length: 2";
        let alphabet = b"\r\n :\t\x00\x7f\xff/?%HTTP1.0GETabc";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut parsed = 0;
        for _ in 0..20_000 {
            let mut head = seed.to_vec();
            for _ in 0..(next() % 6) {
                let at = (next() as usize) % (head.len() + 1);
                let b = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 if at < head.len() => head[at] = b,
                    1 if at < head.len() => {
                        head.remove(at);
                    }
                    _ => head.insert(at, b),
                }
            }
            if let Ok(r) = parse_head(&head) {
                parsed += 1;
                let _ = content_length(&r.headers, &Limits::default());
            }
        }
        // Some mutations keep the head valid (e.g. in a header value); most do not.
        assert!(parsed > 0 && parsed < 20_000, "{parsed}");
    }

    #[test]
    fn a_client_reads_a_response_with_a_body() {
        let dir = std::env::temp_dir().join(format!("keel-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let req = read_request(&mut s, &Limits::default()).unwrap();
            write_response(&mut s, 200, &[], &req.body).unwrap();
        });

        let r = request(&path, "POST", "/x", &[], b"hello", Duration::from_secs(5)).unwrap();

        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
