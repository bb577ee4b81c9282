//! A small, bounded HTTP/1.1 request parser and response writer.
//!
//! Just enough HTTP for a test upstream behind Envoy: persistent connections (Envoy reuses
//! upstream connections), `Content-Length` and `chunked` request bodies, and hard bounds on
//! everything read from the peer so that a bad or hostile request costs a 4xx and a closed
//! connection, never a panic or unbounded memory.

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::thread;
use std::time::Duration;

/// Bounds applied while reading one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus headers (and chunked trailers), in bytes.
    pub max_head_bytes: usize,
    /// Number of header fields.
    pub max_headers: usize,
    /// Decoded body size, in bytes.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: connections close unless the client asks for keep-alive.
    Http10,
    /// HTTP/1.1: connections persist unless the client asks to close.
    Http11,
}

/// One parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method token, as sent (`GET`, `POST`, ...).
    pub method: String,
    /// Request target, as sent (path and query).
    pub target: String,
    /// Protocol version.
    pub version: Version,
    /// Header fields in order; names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The decoded body (empty when there is none). Kept whole and bounded by
    /// [`Limits::max_body_bytes`] so that handlers which need it (the future LLM mock) have it.
    pub body: Vec<u8>,
}

impl Request {
    /// The path part of the target, without the query string.
    pub fn path(&self) -> &str {
        match self.target.split_once('?') {
            Some((path, _)) => path,
            None => &self.target,
        }
    }

    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection may be reused after this request.
    pub fn keep_alive(&self) -> bool {
        let tokens = self
            .headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim);
        let mut close = false;
        let mut keep = false;
        for token in tokens {
            close |= token.eq_ignore_ascii_case("close");
            keep |= token.eq_ignore_ascii_case("keep-alive");
        }
        match self.version {
            Version::Http11 => !close,
            Version::Http10 => keep && !close,
        }
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection cleanly between requests.
    Closed,
    /// An I/O error (including the idle timeout) while reading.
    Io(io::Error),
    /// The request was malformed or over a limit; answer with this status and close.
    Rejected {
        /// Status code to answer with (400, 413, 431, 501, ...).
        status: u16,
        /// Short, human-readable reason, sent in the response body.
        reason: &'static str,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("connection closed"),
            Self::Io(e) => write!(f, "i/o error: {e}"),
            Self::Rejected { status, reason } => write!(f, "{status}: {reason}"),
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

const fn reject(status: u16, reason: &'static str) -> ReadError {
    ReadError::Rejected { status, reason }
}

/// Reads one line ending in LF into `line` (LF and an optional CR stripped), consuming at most
/// `*budget` bytes, which is decremented. `Ok(false)` means end of stream before any byte.
fn read_line<R: BufRead>(
    reader: &mut R,
    budget: &mut usize,
    line: &mut Vec<u8>,
    too_long: ReadError,
) -> Result<bool, ReadError> {
    line.clear();
    if *budget == 0 {
        return Err(too_long);
    }
    let allowed = u64::try_from(*budget).unwrap_or(u64::MAX);
    let n = reader.by_ref().take(allowed).read_until(b'\n', line)?;
    if n == 0 {
        return Ok(false);
    }
    if line.last() != Some(&b'\n') {
        return if n >= *budget {
            Err(too_long)
        } else {
            Err(reject(400, "connection closed in the middle of a line"))
        };
    }
    *budget = budget.saturating_sub(n);
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(true)
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads one request from `reader`.
pub fn read_request<R: BufRead>(reader: &mut R, limits: &Limits) -> Result<Request, ReadError> {
    let mut budget = limits.max_head_bytes;
    let mut line = Vec::with_capacity(256);
    let head_too_large = || reject(431, "request header fields too large");

    // Request line; RFC 9112 §2.2 lets a server ignore empty lines before it.
    loop {
        if !read_line(reader, &mut budget, &mut line, head_too_large())? {
            return Err(ReadError::Closed);
        }
        if !line.is_empty() {
            break;
        }
    }
    let request_line =
        std::str::from_utf8(&line).map_err(|_| reject(400, "request line is not UTF-8"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(reject(400, "malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(reject(400, "malformed method"));
    }
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(reject(400, "malformed request target"));
    }
    let version = match version {
        "HTTP/1.1" => Version::Http11,
        "HTTP/1.0" => Version::Http10,
        _ if version.starts_with("HTTP/") => return Err(reject(505, "HTTP version not supported")),
        _ => return Err(reject(400, "malformed HTTP version")),
    };
    let method = method.to_owned();
    let target = target.to_owned();

    let headers = read_fields(reader, &mut budget, &mut line, limits)?;
    let mut request = Request {
        method,
        target,
        version,
        headers,
        body: Vec::new(),
    };
    request.body = read_body(reader, &request, &mut budget, &mut line, limits)?;
    Ok(request)
}

/// Reads header (or trailer) fields up to and including the empty line.
fn read_fields<R: BufRead>(
    reader: &mut R,
    budget: &mut usize,
    line: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Vec<(String, String)>, ReadError> {
    let mut fields = Vec::new();
    loop {
        if !read_line(
            reader,
            budget,
            line,
            reject(431, "request header fields too large"),
        )? {
            return Err(reject(400, "connection closed inside the header"));
        }
        if line.is_empty() {
            return Ok(fields);
        }
        if fields.len() >= limits.max_headers {
            return Err(reject(431, "too many header fields"));
        }
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return Err(reject(400, "obsolete header line folding"));
        }
        let text = std::str::from_utf8(line).map_err(|_| reject(400, "header is not UTF-8"))?;
        let Some((name, value)) = text.split_once(':') else {
            return Err(reject(400, "header field without a colon"));
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(reject(400, "malformed header field name"));
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(reject(400, "control character in a header value"));
        }
        fields.push((name.to_ascii_lowercase(), value.to_owned()));
    }
}

fn read_body<R: BufRead>(
    reader: &mut R,
    request: &Request,
    budget: &mut usize,
    line: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Vec<u8>, ReadError> {
    let mut lengths = request
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .flat_map(|(_, v)| v.split(','))
        .map(|v| v.trim().parse::<u64>());
    let content_length = match lengths.next() {
        None => None,
        Some(Err(_)) => return Err(reject(400, "malformed content-length")),
        Some(Ok(first)) => {
            for other in lengths {
                if other.ok() != Some(first) {
                    return Err(reject(400, "conflicting content-length values"));
                }
            }
            Some(first)
        }
    };
    let encodings: Vec<&str> = request
        .headers
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();

    if !encodings.is_empty() {
        if content_length.is_some() {
            return Err(reject(400, "both transfer-encoding and content-length"));
        }
        if request.version == Version::Http10 {
            return Err(reject(400, "transfer-encoding in an HTTP/1.0 request"));
        }
        if encodings.len() != 1 || !encodings.iter().all(|e| e.eq_ignore_ascii_case("chunked")) {
            return Err(reject(501, "only the chunked transfer-coding is supported"));
        }
        return read_chunked(reader, budget, line, limits);
    }

    let Some(length) = content_length else {
        return Ok(Vec::new());
    };
    let length = usize::try_from(length).unwrap_or(usize::MAX);
    if length > limits.max_body_bytes {
        return Err(reject(413, "request body too large"));
    }
    let mut body = Vec::with_capacity(length);
    let read = reader
        .by_ref()
        .take(u64::try_from(length).unwrap_or(u64::MAX))
        .read_to_end(&mut body)?;
    if read != length {
        return Err(reject(400, "connection closed inside the body"));
    }
    Ok(body)
}

fn read_chunked<R: BufRead>(
    reader: &mut R,
    budget: &mut usize,
    line: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        // Chunk-size lines get their own small budget; they are not part of the head.
        let mut size_budget = 1024;
        if !read_line(
            reader,
            &mut size_budget,
            line,
            reject(400, "chunk size line too long"),
        )? {
            return Err(reject(400, "connection closed inside a chunked body"));
        }
        let text = std::str::from_utf8(line).map_err(|_| reject(400, "malformed chunk size"))?;
        let size_text = text.split(';').next().unwrap_or_default().trim();
        if size_text.is_empty() || size_text.len() > 16 {
            return Err(reject(400, "malformed chunk size"));
        }
        let size =
            u64::from_str_radix(size_text, 16).map_err(|_| reject(400, "malformed chunk size"))?;
        if size == 0 {
            // Trailer fields are read (bounded by what is left of the head budget) and dropped.
            read_fields(reader, budget, line, limits)?;
            return Ok(body);
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > limits.max_body_bytes.saturating_sub(body.len()) {
            return Err(reject(413, "request body too large"));
        }
        let before = body.len();
        reader
            .by_ref()
            .take(u64::try_from(size).unwrap_or(u64::MAX))
            .read_to_end(&mut body)?;
        if body.len() - before != size {
            return Err(reject(400, "connection closed inside a chunk"));
        }
        let mut crlf_budget = 2;
        let ok = read_line(
            reader,
            &mut crlf_budget,
            line,
            reject(400, "missing CRLF after a chunk"),
        )?;
        if !ok || !line.is_empty() {
            return Err(reject(400, "missing CRLF after a chunk"));
        }
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra header fields (`content-length` and `connection` are written by [`write_response`]).
    pub headers: Vec<(String, String)>,
    /// The body, when it is sent whole (ignored when `stream` is set).
    pub body: Vec<u8>,
    /// A body sent in pieces as they are "produced" (the LLM mock's SSE streams).
    pub stream: Option<Stream>,
}

/// A body written piece by piece, each piece flushed on its own, with a pause between pieces:
/// how an LLM API streams Server-Sent Events. Can also stop early and drop the connection, as an
/// upstream that dies mid-response does.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    /// The pieces, in order (empty pieces are skipped).
    pub pieces: Vec<Vec<u8>>,
    /// Pause before every piece but the first.
    pub delay: Duration,
    /// Write at most this many pieces, then close the connection without ending the body (no
    /// last chunk, or fewer bytes than `content-length` said).
    pub cut_after: Option<usize>,
    /// `true`: `transfer-encoding: chunked`, one chunk per piece. `false`: `content-length` of
    /// all the pieces together.
    pub chunked: bool,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into().into_bytes(),
            stream: None,
        }
    }

    /// A response whose body is `stream`.
    pub fn streamed(status: u16, content_type: &str, stream: Stream) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.to_owned())],
            body: Vec::new(),
            stream: Some(stream),
        }
    }

    /// Adds a header field.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// The standard reason phrase of the status codes this crate uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Writes `response`; `head_only` omits the body (HEAD), `keep_alive` selects the
/// `connection` header. A [`Stream`] cut short returns an error of kind
/// [`io::ErrorKind::ConnectionAborted`] after writing what it should, so the caller closes the
/// connection.
pub fn write_response<W: Write>(
    out: &mut W,
    response: &Response,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason_phrase(response.status)
    );
    for (name, value) in &response.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    match &response.stream {
        Some(stream) if stream.chunked => head.push_str("transfer-encoding: chunked\r\n"),
        Some(stream) => {
            let length: usize = stream.pieces.iter().map(Vec::len).sum();
            head.push_str(&format!("content-length: {length}\r\n"));
        }
        None => head.push_str(&format!("content-length: {}\r\n", response.body.len())),
    }
    if !keep_alive {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    match &response.stream {
        _ if head_only => {}
        Some(stream) => return write_stream(out, stream),
        None => out.write_all(&response.body)?,
    }
    out.flush()
}

fn write_stream<W: Write>(out: &mut W, stream: &Stream) -> io::Result<()> {
    let limit = stream.cut_after.unwrap_or(usize::MAX);
    let pieces = stream.pieces.iter().filter(|p| !p.is_empty());
    for (i, piece) in pieces.take(limit).enumerate() {
        if i > 0 && !stream.delay.is_zero() {
            thread::sleep(stream.delay);
        }
        if stream.chunked {
            out.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
            out.write_all(piece)?;
            out.write_all(b"\r\n")?;
        } else {
            out.write_all(piece)?;
        }
        out.flush()?;
    }
    if stream.cut_after.is_some() {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "response cut short on purpose",
        ));
    }
    if stream.chunked {
        out.write_all(b"0\r\n\r\n")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn parse(raw: &str) -> Result<Request, ReadError> {
        read_request(
            &mut Cursor::new(raw.as_bytes().to_vec()),
            &Limits::default(),
        )
    }

    fn rejected(raw: &str) -> u16 {
        match parse(raw) {
            Err(ReadError::Rejected { status, .. }) => status,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_simple_get() {
        let req =
            parse("GET /api/tasks?x=1 HTTP/1.1\r\nHost: a\r\nX-User-Id: Alice\r\n\r\n").unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.path(), "/api/tasks");
        assert_eq!(req.header("x-user-id"), Some("Alice"));
        assert!(req.keep_alive());
        assert!(req.body.is_empty());
    }

    #[test]
    fn reads_pipelined_requests_with_bodies_in_order() {
        let raw = "POST /a HTTP/1.1\r\ncontent-length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n";
        let mut cursor = Cursor::new(raw.as_bytes().to_vec());
        let first = read_request(&mut cursor, &Limits::default()).unwrap();
        assert_eq!(first.body, b"hello");
        let second = read_request(&mut cursor, &Limits::default()).unwrap();
        assert_eq!(second.path(), "/b");
        assert!(matches!(
            read_request(&mut cursor, &Limits::default()),
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn decodes_chunked_bodies_with_extensions_and_trailers() {
        let raw = "POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n\
                   5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        let req = parse(raw).unwrap();
        assert_eq!(req.body, b"hello world");
    }

    #[test]
    fn connection_semantics_follow_the_version() {
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive());
        assert!(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .keep_alive());
        assert!(!parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .keep_alive());
    }

    #[test]
    fn rejects_malformed_and_oversized_requests() {
        assert_eq!(rejected("GET /\r\n\r\n"), 400);
        assert_eq!(rejected("GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(rejected("GET / HTTP/1.1\r\nno colon\r\n\r\n"), 400);
        assert_eq!(rejected("GET / HTTP/1.1\r\nbad name: x\r\n\r\n"), 400);
        assert_eq!(rejected("GET / HTTP/1.1\r\nx: a\r\n folded\r\n\r\n"), 400);
        assert_eq!(
            rejected("POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n"),
            400
        );
        assert_eq!(
            rejected("POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"),
            400
        );
        assert_eq!(
            rejected("POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            rejected("POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            rejected("POST / HTTP/1.1\r\ncontent-length: 99999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            rejected("POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\nshort"),
            400
        );
        assert_eq!(
            rejected("POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"),
            400
        );
        let huge = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(20_000));
        assert_eq!(rejected(&huge), 431);
        let many: String = (0..200).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(rejected(&format!("GET / HTTP/1.1\r\n{many}\r\n")), 431);
    }

    #[test]
    fn never_panics_on_truncated_input() {
        let raw = "POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for end in 0..raw.len() {
            let _ = parse(&raw[..end]);
        }
        let bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let _ = read_request(&mut Cursor::new(bytes), &Limits::default());
    }

    #[test]
    fn writes_content_length_and_connection() {
        let mut out = Vec::new();
        let resp = Response::json(200, "{}").with_header("x-a", "b");
        write_response(&mut out, &resp, false, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("content-length: 2\r\n"));
        assert!(text.contains("connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{}"));
    }

    fn stream(pieces: &[&str], cut_after: Option<usize>, chunked: bool) -> Response {
        let stream = Stream {
            pieces: pieces.iter().map(|p| p.as_bytes().to_vec()).collect(),
            delay: Duration::ZERO,
            cut_after,
            chunked,
        };
        Response::streamed(200, "text/event-stream", stream)
    }

    #[test]
    fn streams_pieces_as_chunks_and_ends_the_body() {
        let mut out = Vec::new();
        let resp = stream(&["data: a\n\n", "", "data: bc\n\n"], None, true);
        write_response(&mut out, &resp, true, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("transfer-encoding: chunked\r\n"));
        assert!(!text.contains("content-length"));
        assert!(
            text.ends_with("\r\n\r\n9\r\ndata: a\n\n\r\na\r\ndata: bc\n\n\r\n0\r\n\r\n"),
            "{text:?}"
        );
    }

    #[test]
    fn a_cut_stream_stops_without_the_last_chunk_and_reports_it() {
        let mut out = Vec::new();
        let resp = stream(&["one", "two", "three"], Some(2), true);
        let err = write_response(&mut out, &resp, true, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("3\r\none\r\n3\r\ntwo\r\n"), "{text:?}");
    }

    #[test]
    fn an_unchunked_stream_announces_its_whole_length_even_when_cut() {
        let mut out = Vec::new();
        let resp = stream(&["{\"a\":", "1}"], Some(1), false);
        assert!(write_response(&mut out, &resp, true, false).is_err());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("content-length: 7\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"a\":"), "{text:?}");
    }
}
