//! HTTP/1.1 message heads and chunked bodies for the L7 reverse proxy (RFC 9112, RFC 9110).
//!
//! Sans-IO and allocation-free: [`parse_request`] and [`parse_response`] take the bytes read
//! so far and return either [`Status::Partial`] (read more, call again with the whole buffer)
//! or [`Status::Complete`] with the head's length and a view whose slices borrow the buffer.
//! Headers land in a fixed array of [`MAX_HEADERS`]; nothing is copied or allocated.
//! [`ChunkedDecoder`] is a byte-driven state machine that hands chunk data to a callback as
//! slices of its input.
//!
//! Design: the parser is strict, because a proxy that reads a message differently from the
//! server behind it is how request smuggling works (RFC 9112 §11.2). Every ambiguity the RFCs
//! let a recipient resolve either way is resolved towards rejection:
//!
//! - Lines end in CRLF only. RFC 9112 §2.2 lets a recipient accept a lone LF; we answer 400,
//!   as we do for a bare CR ("MUST either consider it invalid or replace each bare CR with
//!   SP"). The one leniency we keep is §2.2's "SHOULD ignore at least one empty line (CRLF)
//!   received prior to the request-line", which pipelining clients produce.
//! - Single SP between request-line parts (§3), no whitespace before a field's colon (§5.1),
//!   no obs-fold (§5.2), no control characters other than HTAB in field values (RFC 9110 §5.5).
//! - Framing (§6.3): Transfer-Encoding together with Content-Length is an error, not "TE wins";
//!   Content-Length must be one value (identical repeats tolerated); a request's
//!   Transfer-Encoding must end in exactly one `chunked`.
//!
//! Every error maps to the status the proxy answers a client with ([`Error::status`]). An error
//! from [`parse_response`] or from decoding a response body is the upstream's fault: the proxy
//! answers 502 instead.

use core::fmt;

/// The most header fields a head can hold; [`Limits::max_headers`] is clamped to it.
pub const MAX_HEADERS: usize = 100;

/// Bounds on what a peer can make the parser scan or hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of a whole head: start line, fields and the empty line (and, for a request, the
    /// empty lines ignored before it).
    pub max_head: usize,
    /// Header field lines per head, at most [`MAX_HEADERS`].
    pub max_headers: usize,
    /// Bytes of one line, CRLF excluded. A request-line longer than this is answered 414.
    pub max_line: usize,
    /// Bytes of one chunk-size line (size and extensions), CRLF excluded.
    pub max_chunk_line: usize,
    /// Bytes of a chunked body's trailer section, CRLFs included.
    pub max_trailers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 16 * 1024,
            max_headers: MAX_HEADERS,
            max_line: 8 * 1024,
            max_chunk_line: 1024,
            max_trailers: 8 * 1024,
        }
    }
}

/// The outcome of parsing a buffer that may not hold a whole head yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status<T> {
    /// The head is `.0` bytes long (through the empty line); the body or the next message
    /// starts there.
    Complete(usize, T),
    /// The buffer is a valid beginning of a head: read more and parse the whole buffer again.
    Partial,
}

/// Why a head or a chunked body was rejected. The doc comment of each variant is its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// line ends in a bare LF instead of CRLF
    BareLf,
    /// bare CR inside a line
    BareCr,
    /// request-line longer than the line limit
    UriTooLong,
    /// header field line longer than the line limit
    HeaderLineTooLong,
    /// more header fields than the limit
    TooManyHeaders,
    /// head larger than the head limit
    HeadTooLarge,
    /// malformed request-line
    RequestLine,
    /// method is not a token
    Method,
    /// malformed request-target, or a form the method does not allow
    Target,
    /// malformed status-line or status code outside 100..=599
    StatusLine,
    /// HTTP major version other than 1
    VersionNotSupported,
    /// header field name is not a token, or the line has no colon
    HeaderName,
    /// whitespace between a header field name and its colon
    WhitespaceBeforeColon,
    /// header field value holds a control character
    HeaderValue,
    /// header line begins with whitespace (obs-fold)
    ObsFold,
    /// HTTP/1.1 request without Host
    MissingHost,
    /// more than one Host field
    DuplicateHost,
    /// Host field value is not a uri-host with optional port
    InvalidHost,
    /// Content-Length is not a list of identical decimal numbers
    InvalidContentLength,
    /// Content-Length does not fit in 64 bits
    ContentLengthOverflow,
    /// both Transfer-Encoding and Content-Length
    TransferEncodingWithContentLength,
    /// Transfer-Encoding in an HTTP/1.0 message
    TransferEncodingInHttp10,
    /// Transfer-Encoding is empty, repeats chunked, or does not end in chunked
    InvalidTransferEncoding,
    /// Transfer-Encoding names a coding we do not implement
    UnsupportedTransferEncoding,
    /// Expect names an expectation other than 100-continue
    UnsupportedExpectation,
    /// malformed chunk-size line or missing CRLF after chunk data
    InvalidChunk,
    /// chunk-size line longer than the limit
    ChunkLineTooLong,
    /// chunk size does not fit in 64 bits
    ChunkSizeOverflow,
    /// trailer section larger than the limit
    TrailersTooLarge,
}

impl Error {
    /// The status code a proxy answers a client whose request failed this way.
    ///
    /// 414 and 431 come from RFC 9112 §3 and RFC 6585 §5, 413 from RFC 9110 §15.5.14 (a
    /// length past 2^64 is too large by any policy), 417 from RFC 9110 §10.1.1, 501 from
    /// RFC 9112 §6.1, 505 from RFC 9110 §15.6.6; everything else is 400.
    pub fn status(&self) -> u16 {
        match self {
            Error::UriTooLong => 414,
            Error::HeaderLineTooLong
            | Error::TooManyHeaders
            | Error::HeadTooLarge
            | Error::TrailersTooLarge => 431,
            Error::ContentLengthOverflow | Error::ChunkSizeOverflow => 413,
            Error::UnsupportedExpectation => 417,
            Error::UnsupportedTransferEncoding => 501,
            Error::VersionNotSupported => 505,
            _ => 400,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = match self {
            Error::BareLf => "line ends in a bare LF instead of CRLF",
            Error::BareCr => "bare CR inside a line",
            Error::UriTooLong => "request-line longer than the line limit",
            Error::HeaderLineTooLong => "header field line longer than the line limit",
            Error::TooManyHeaders => "more header fields than the limit",
            Error::HeadTooLarge => "head larger than the head limit",
            Error::RequestLine => "malformed request-line",
            Error::Method => "method is not a token",
            Error::Target => "malformed request-target, or a form the method does not allow",
            Error::StatusLine => "malformed status-line or status code outside 100..=599",
            Error::VersionNotSupported => "HTTP major version other than 1",
            Error::HeaderName => "header field name is not a token, or the line has no colon",
            Error::WhitespaceBeforeColon => "whitespace between a header field name and its colon",
            Error::HeaderValue => "header field value holds a control character",
            Error::ObsFold => "header line begins with whitespace (obs-fold)",
            Error::MissingHost => "HTTP/1.1 request without Host",
            Error::DuplicateHost => "more than one Host field",
            Error::InvalidHost => "Host field value is not a uri-host with optional port",
            Error::InvalidContentLength => {
                "Content-Length is not a list of identical decimal numbers"
            }
            Error::ContentLengthOverflow => "Content-Length does not fit in 64 bits",
            Error::TransferEncodingWithContentLength => "both Transfer-Encoding and Content-Length",
            Error::TransferEncodingInHttp10 => "Transfer-Encoding in an HTTP/1.0 message",
            Error::InvalidTransferEncoding => {
                "Transfer-Encoding is empty, repeats chunked, or does not end in chunked"
            }
            Error::UnsupportedTransferEncoding => {
                "Transfer-Encoding names a coding we do not implement"
            }
            Error::UnsupportedExpectation => "Expect names an expectation other than 100-continue",
            Error::InvalidChunk => "malformed chunk-size line or missing CRLF after chunk data",
            Error::ChunkLineTooLong => "chunk-size line longer than the limit",
            Error::ChunkSizeOverflow => "chunk size does not fit in 64 bits",
            Error::TrailersTooLarge => "trailer section larger than the limit",
        };
        f.write_str(msg)
    }
}

impl std::error::Error for Error {}

/// The protocol version of a message (RFC 9112 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1, and any later 1.x: RFC 9110 §2.5 has a recipient "process the message as if
    /// it were in the highest minor version within that major version to which the recipient
    /// is conformant".
    Http11,
}

/// The request-target in one of its four forms (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/path?query`, the usual form (§3.2.1).
    Origin(&'a str),
    /// `scheme://authority/path?query`, sent to proxies (§3.2.2). `path` is empty or starts
    /// with `/` or `?`.
    Absolute {
        /// The URI scheme, e.g. `http`.
        scheme: &'a str,
        /// `host[:port]`, never empty, never with userinfo.
        authority: &'a str,
        /// Path and query; empty means `/`.
        path: &'a str,
    },
    /// `host:port`, for CONNECT only (§3.2.3).
    Authority(&'a str),
    /// `*`, for a server-wide OPTIONS only (§3.2.4).
    Asterisk,
}

/// How the body after a head is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes; 0 also for messages that cannot have a body.
    Length(u64),
    /// Chunked transfer coding: feed the bytes after the head to a [`ChunkedDecoder`].
    Chunked,
    /// A response body that ends when the server closes the connection.
    CloseDelimited,
    /// No more HTTP on this connection: a 101 response, or a 2xx response to CONNECT.
    Tunnel,
}

/// One header field line, its value stripped of surrounding whitespace (RFC 9112 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The field name as sent; compare it case-insensitively.
    pub name: &'a str,
    /// The field value: visible ASCII, SP, HTAB and obs-text (RFC 9110 §5.5).
    pub value: &'a [u8],
}

impl Header<'_> {
    const EMPTY: Header<'static> = Header {
        name: "",
        value: b"",
    };
}

/// A parsed request head. Slices borrow the buffer given to [`parse_request`].
#[derive(Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method token; methods are case-sensitive (RFC 9110 §9.1).
    pub method: &'a str,
    /// The request-target.
    pub target: Target<'a>,
    /// The protocol version.
    pub version: Version,
    /// The authority to route on: the target's for absolute-form and authority-form, which a
    /// proxy must prefer to Host (RFC 9112 §3.2.2), else the Host field's (possibly empty)
    /// value; `None` only for an HTTP/1.0 request without Host.
    pub host: Option<&'a [u8]>,
    /// How the request body is delimited; `Length(0)` when it has none (§6.3 rule 6).
    pub framing: Framing,
    /// Whether the connection stays open after this exchange (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending the body (RFC 9110 §10.1.1);
    /// ignored in HTTP/1.0 requests, as that section requires.
    pub expect_continue: bool,
    headers: [Header<'a>; MAX_HEADERS],
    header_count: usize,
}

impl<'a> Request<'a> {
    /// The header field lines in order.
    pub fn headers(&self) -> &[Header<'a>] {
        &self.headers[..self.header_count]
    }

    /// The value of the first field with this name (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        find_header(self.headers(), name)
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("version", &self.version)
            .field("host", &self.host.map(String::from_utf8_lossy))
            .field("framing", &self.framing)
            .field("keep_alive", &self.keep_alive)
            .field("expect_continue", &self.expect_continue)
            .field("headers", &self.headers())
            .finish()
    }
}

/// What a response answers, which decides whether it can have a body (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseTo {
    /// Any method but HEAD and CONNECT.
    Other,
    /// A HEAD request: the response never has a body (rule 1).
    Head,
    /// A CONNECT request: a 2xx response turns the connection into a tunnel (rule 2).
    Connect,
}

impl ResponseTo {
    /// The kind of a parsed request.
    pub fn of(request: &Request<'_>) -> ResponseTo {
        match request.method {
            "HEAD" => ResponseTo::Head,
            "CONNECT" => ResponseTo::Connect,
            _ => ResponseTo::Other,
        }
    }
}

/// A parsed response head. Slices borrow the buffer given to [`parse_response`].
#[derive(Clone, PartialEq, Eq)]
pub struct Response<'a> {
    /// The protocol version.
    pub version: Version,
    /// The status code, 100..=599 (RFC 9110 §15).
    pub code: u16,
    /// The reason phrase, possibly empty; a client "SHOULD ignore" it (RFC 9112 §4).
    pub reason: &'a [u8],
    /// How the response body is delimited.
    pub framing: Framing,
    /// Whether the connection stays open after this response: false for close-delimited
    /// bodies, `Connection: close`, and HTTP/1.0 without keep-alive.
    pub keep_alive: bool,
    headers: [Header<'a>; MAX_HEADERS],
    header_count: usize,
}

impl<'a> Response<'a> {
    /// The header field lines in order.
    pub fn headers(&self) -> &[Header<'a>] {
        &self.headers[..self.header_count]
    }

    /// The value of the first field with this name (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        find_header(self.headers(), name)
    }
}

impl fmt::Debug for Response<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("version", &self.version)
            .field("code", &self.code)
            .field("reason", &String::from_utf8_lossy(self.reason))
            .field("framing", &self.framing)
            .field("keep_alive", &self.keep_alive)
            .field("headers", &self.headers())
            .finish()
    }
}

fn find_header<'a>(headers: &[Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Parse a request head from the start of `buf`.
///
/// Call again with the grown buffer after [`Status::Partial`]; a buffer that can only grow
/// into an invalid head (a bad line, or a limit already passed) fails at once.
pub fn parse_request<'a>(buf: &'a [u8], limits: &Limits) -> Result<Status<Request<'a>>, Error> {
    // RFC 9112 §2.2: "SHOULD ignore at least one empty line (CRLF) received prior to the
    // request-line".
    let mut pos = 0;
    while pos < limits.max_head && buf.get(pos..pos + 2) == Some(b"\r\n") {
        pos += 2;
    }
    let Some((end, next)) = next_line(buf, pos, limits.max_line, Error::UriTooLong)? else {
        return partial(buf, limits);
    };
    if next > limits.max_head {
        return Err(Error::HeadTooLarge);
    }
    let (method, target, version) = parse_request_line(&buf[pos..end])?;

    let mut headers = [Header::EMPTY; MAX_HEADERS];
    let Some((head_len, header_count)) = parse_fields(buf, next, limits, &mut headers)? else {
        return partial(buf, limits);
    };
    let fields = scan_fields(&headers[..header_count])?;

    // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any
    // HTTP/1.1 request message that lacks a Host header field and to any request message
    // that contains more than one Host header field line or a Host header field with an
    // invalid field value."
    if fields.host_count > 1 {
        return Err(Error::DuplicateHost);
    }
    if version == Version::Http11 && fields.host_count == 0 {
        return Err(Error::MissingHost);
    }
    if fields
        .host
        .is_some_and(|host| !valid_authority(host, true, false))
    {
        return Err(Error::InvalidHost);
    }
    let host = match target {
        Target::Absolute { authority, .. } | Target::Authority(authority) => {
            Some(authority.as_bytes())
        }
        Target::Origin(_) | Target::Asterisk => fields.host,
    };

    let framing = if fields.te.present {
        // §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        if version == Version::Http10 {
            return Err(Error::TransferEncodingInHttp10);
        }
        // §6.3 rule 3: "Such a message might indicate an attempt to perform request
        // smuggling (Section 11.2) or response splitting (Section 11.1) and ought to be
        // handled as an error."
        if fields.content_length.is_some() {
            return Err(Error::TransferEncodingWithContentLength);
        }
        // §6.1: "A server that receives a request message with a transfer coding it does
        // not understand SHOULD respond with 501 (Not Implemented)."
        if fields.te.unknown {
            return Err(Error::UnsupportedTransferEncoding);
        }
        // §6.3 rule 4: "If a Transfer-Encoding header field is present in a request and the
        // chunked transfer coding is not the final encoding, [...] the server MUST respond
        // with the 400 (Bad Request) status code and then close the connection."
        if fields.te.invalid || !fields.te.last_chunked {
            return Err(Error::InvalidTransferEncoding);
        }
        Framing::Chunked
    } else {
        match fields.content_length {
            Some(length) => Framing::Length(length?),
            None => Framing::Length(0),
        }
    };

    let keep_alive = match version {
        Version::Http11 => !fields.close,
        Version::Http10 => fields.keep_alive && !fields.close,
    };
    if fields.expect_other {
        return Err(Error::UnsupportedExpectation);
    }
    let expect_continue = fields.expect_continue && version == Version::Http11;

    Ok(Status::Complete(
        head_len,
        Request {
            method,
            target,
            version,
            host,
            framing,
            keep_alive,
            expect_continue,
            headers,
            header_count,
        },
    ))
}

/// Parse a response head from the start of `buf`; `to` is the request it answers.
///
/// Errors are the upstream's fault: the proxy answers its client 502, whatever
/// [`Error::status`] says.
pub fn parse_response<'a>(
    buf: &'a [u8],
    limits: &Limits,
    to: ResponseTo,
) -> Result<Status<Response<'a>>, Error> {
    let Some((end, next)) = next_line(buf, 0, limits.max_line, Error::HeaderLineTooLong)? else {
        return partial(buf, limits);
    };
    if next > limits.max_head {
        return Err(Error::HeadTooLarge);
    }
    let (version, code, reason) = parse_status_line(&buf[..end])?;

    let mut headers = [Header::EMPTY; MAX_HEADERS];
    let Some((head_len, header_count)) = parse_fields(buf, next, limits, &mut headers)? else {
        return partial(buf, limits);
    };
    let fields = scan_fields(&headers[..header_count])?;

    // RFC 9112 §6.3, rules 1 to 7 in order.
    let framing = if to == ResponseTo::Head
        || ((100..200).contains(&code) && code != 101)
        || code == 204
        || code == 304
    {
        Framing::Length(0)
    } else if code == 101 || (to == ResponseTo::Connect && (200..300).contains(&code)) {
        Framing::Tunnel
    } else if fields.te.present {
        if version == Version::Http10 {
            return Err(Error::TransferEncodingInHttp10);
        }
        if fields.content_length.is_some() {
            return Err(Error::TransferEncodingWithContentLength);
        }
        if fields.te.invalid {
            return Err(Error::InvalidTransferEncoding);
        }
        // Rule 4: a response whose codings do not end in chunked runs until close; codings
        // we do not know are the client's business, not the framing's.
        if fields.te.last_chunked {
            Framing::Chunked
        } else {
            Framing::CloseDelimited
        }
    } else {
        match fields.content_length {
            Some(length) => Framing::Length(length?),
            None => Framing::CloseDelimited,
        }
    };

    let keep_alive = framing != Framing::CloseDelimited
        && match version {
            Version::Http11 => !fields.close,
            Version::Http10 => fields.keep_alive && !fields.close,
        };

    Ok(Status::Complete(
        head_len,
        Response {
            version,
            code,
            reason,
            framing,
            keep_alive,
            headers,
            header_count,
        },
    ))
}

/// `Partial`, unless the head is already too large to ever complete: an unfinished head is
/// longer than the buffer, so a buffer of `max_head` bytes or more cannot hold one that fits.
fn partial<T>(buf: &[u8], limits: &Limits) -> Result<Status<T>, Error> {
    if buf.len() >= limits.max_head {
        Err(Error::HeadTooLarge)
    } else {
        Ok(Status::Partial)
    }
}

/// Find the line starting at `start`: `Some((content_end, next_line_start))`, or `None` if
/// it has not ended yet. Rejects bare LF and bare CR (RFC 9112 §2.2) and lines whose content
/// is longer than `max_line`, without scanning further than that.
fn next_line(
    buf: &[u8],
    start: usize,
    max_line: usize,
    too_long: Error,
) -> Result<Option<(usize, usize)>, Error> {
    let rest = buf.get(start..).unwrap_or_default();
    let window = &rest[..rest.len().min(max_line.saturating_add(2))];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            let Some(content) = lf.checked_sub(1).filter(|&cr| window[cr] == b'\r') else {
                return Err(Error::BareLf);
            };
            if content > max_line {
                return Err(too_long);
            }
            if window[..content].contains(&b'\r') {
                return Err(Error::BareCr);
            }
            Ok(Some((start + content, start + lf + 1)))
        }
        None => {
            let content = window.strip_suffix(b"\r").unwrap_or(window);
            if content.len() > max_line || window.len() < rest.len() {
                return Err(too_long);
            }
            if content.contains(&b'\r') {
                return Err(Error::BareCr);
            }
            Ok(None)
        }
    }
}

/// Parse field lines from `pos` through the empty line: `Some((head_len, count))`.
fn parse_fields<'a>(
    buf: &'a [u8],
    mut pos: usize,
    limits: &Limits,
    headers: &mut [Header<'a>; MAX_HEADERS],
) -> Result<Option<(usize, usize)>, Error> {
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let mut count = 0;
    loop {
        let Some((end, next)) = next_line(buf, pos, limits.max_line, Error::HeaderLineTooLong)?
        else {
            return Ok(None);
        };
        if next > limits.max_head {
            return Err(Error::HeadTooLarge);
        }
        let line = &buf[pos..end];
        pos = next;
        match line.first() {
            None => return Ok(Some((pos, count))),
            // §5.2: "A server that receives an obs-fold in a request message [...] MUST
            // either reject the message by sending a 400 (Bad Request) [...]"; §2.2 likewise
            // for whitespace between the start-line and the first field.
            Some(b' ' | b'\t') => return Err(Error::ObsFold),
            Some(_) => {}
        }
        if count == max_headers {
            return Err(Error::TooManyHeaders);
        }
        headers[count] = parse_field_line(line)?;
        count += 1;
    }
}

/// `field-line = field-name ":" OWS field-value OWS` (RFC 9112 §5).
fn parse_field_line(line: &[u8]) -> Result<Header<'_>, Error> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(Error::HeaderName)?;
    let name = &line[..colon];
    // §5.1: "No whitespace is allowed between the field name and colon. [...] A server MUST
    // reject, with a response status code of 400 (Bad Request), any received request
    // message that contains whitespace between a header field name and colon."
    if matches!(name.last(), Some(b' ' | b'\t')) {
        return Err(Error::WhitespaceBeforeColon);
    }
    if !is_token(name) {
        return Err(Error::HeaderName);
    }
    let value = trim_ows(&line[colon + 1..]);
    // RFC 9110 §5.5: field-value = *field-content, built of VCHAR, obs-text, SP and HTAB.
    if !value
        .iter()
        .all(|&b| b == b'\t' || b == b' ' || is_field_vchar(b))
    {
        return Err(Error::HeaderValue);
    }
    let name = core::str::from_utf8(name).map_err(|_| Error::HeaderName)?;
    Ok(Header { name, value })
}

/// `request-line = method SP request-target SP HTTP-version` (RFC 9112 §3).
fn parse_request_line(line: &[u8]) -> Result<(&str, Target<'_>, Version), Error> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::RequestLine);
    };
    if !is_token(method) {
        return Err(Error::Method);
    }
    let method = core::str::from_utf8(method).map_err(|_| Error::Method)?;
    let version = parse_version(version).ok_or(Error::RequestLine)??;
    let target = parse_target(method, target)?;
    Ok((method, target, version))
}

/// `HTTP-version = HTTP-name "/" DIGIT "." DIGIT`, case-sensitive (RFC 9112 §2.3). `None`
/// if it does not match the grammar, an error for a major version other than 1.
fn parse_version(version: &[u8]) -> Option<Result<Version, Error>> {
    let [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] = *version else {
        return None;
    };
    if !major.is_ascii_digit() || !minor.is_ascii_digit() {
        return None;
    }
    Some(match (major, minor) {
        (b'1', b'0') => Ok(Version::Http10),
        (b'1', _) => Ok(Version::Http11),
        _ => Err(Error::VersionNotSupported),
    })
}

/// Classify and check a request-target (RFC 9112 §3.2).
fn parse_target<'a>(method: &str, target: &'a [u8]) -> Result<Target<'a>, Error> {
    // Visible ASCII only, and no fragment: RFC 9112 §3.2 sends none.
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic() && b != b'#') {
        return Err(Error::Target);
    }
    let text = core::str::from_utf8(target).map_err(|_| Error::Target)?;
    if method == "CONNECT" {
        // §3.2.3: "authority-form = uri-host ":" port"; CONNECT takes no other form.
        return if valid_authority(target, false, true) {
            Ok(Target::Authority(text))
        } else {
            Err(Error::Target)
        };
    }
    if text == "*" {
        // §3.2.4: the asterisk-form "is only used for a server-wide OPTIONS request".
        return if method == "OPTIONS" {
            Ok(Target::Asterisk)
        } else {
            Err(Error::Target)
        };
    }
    if text.starts_with('/') {
        return Ok(Target::Origin(text));
    }
    // §3.2.2: absolute-form = absolute-URI. We accept the hierarchical "scheme://authority"
    // shape only, which is all a proxy can route.
    let (scheme, rest) = text.split_once("://").ok_or(Error::Target)?;
    let mut scheme_chars = scheme.bytes();
    let scheme_ok = scheme_chars.next().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme_chars.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if !scheme_ok || !valid_authority(authority.as_bytes(), false, false) {
        return Err(Error::Target);
    }
    Ok(Target::Absolute {
        scheme,
        authority,
        path,
    })
}

/// `uri-host [":" port]` (RFC 3986 §3.2), without userinfo: RFC 9110 §4.2.4 has a recipient
/// "treat its presence as an error". Ports, when present, must fit in 16 bits.
fn valid_authority(authority: &[u8], empty_ok: bool, port_required: bool) -> bool {
    if authority.is_empty() {
        return empty_ok && !port_required;
    }
    let (host, port) = if let Some(literal) = authority.strip_prefix(b"[") {
        // IP-literal: IPv6address or IPvFuture, then an optional port.
        let Some(close) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &literal[..close];
        if inside.is_empty() || !inside.iter().all(|&b| is_reg_name_char(b) || b == b':') {
            return false;
        }
        match &literal[close + 1..] {
            [] => (&b""[..], None),
            [b':', port @ ..] => (&b""[..], Some(port)),
            _ => return false,
        }
    } else {
        match authority.iter().position(|&b| b == b':') {
            Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
            None => (authority, None),
        }
    };
    if !host.iter().all(|&b| is_reg_name_char(b)) {
        return false;
    }
    if authority[0] != b'[' && host.is_empty() {
        return false;
    }
    match port {
        None => !port_required,
        Some([]) => !port_required,
        Some(port) => {
            port.len() <= 5
                && port.iter().all(u8::is_ascii_digit)
                && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'))
                    <= u32::from(u16::MAX)
        }
    }
}

/// RFC 3986: unreserved / pct-encoded / sub-delims.
fn is_reg_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// `status-line = HTTP-version SP status-code SP [ reason-phrase ]` (RFC 9112 §4).
///
/// We also accept the status code directly followed by CRLF, which servers send and which
/// cannot be misread.
fn parse_status_line(line: &[u8]) -> Result<(Version, u16, &[u8]), Error> {
    let (Some(version), Some(b' '), Some(code), rest) = (
        line.get(..8),
        line.get(8),
        line.get(9..12),
        line.get(12..).unwrap_or_default(),
    ) else {
        return Err(Error::StatusLine);
    };
    let version = parse_version(version).ok_or(Error::StatusLine)??;
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(Error::StatusLine);
    }
    let code = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    // RFC 9110 §15: "Values outside the range 100..599 are invalid."
    if !(100..=599).contains(&code) {
        return Err(Error::StatusLine);
    }
    let reason = match rest {
        [] => rest,
        [b' ', reason @ ..] => reason,
        _ => return Err(Error::StatusLine),
    };
    // reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
    if !reason
        .iter()
        .all(|&b| b == b'\t' || b == b' ' || is_field_vchar(b))
    {
        return Err(Error::StatusLine);
    }
    Ok((version, code, reason))
}

/// What the framing and connection fields of a head say.
#[derive(Debug, Default)]
struct Fields<'a> {
    host: Option<&'a [u8]>,
    host_count: usize,
    /// `None` without Content-Length; the first error sticks.
    content_length: Option<Result<u64, Error>>,
    te: TransferCodings,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
    expect_other: bool,
}

/// The Transfer-Encoding codings of all its field lines, read in order (RFC 9112 §6.1).
#[derive(Debug, Default)]
struct TransferCodings {
    present: bool,
    last_chunked: bool,
    chunked_seen: bool,
    /// Empty, chunked twice, chunked with parameters, or not a token.
    invalid: bool,
    unknown: bool,
}

fn scan_fields<'a>(headers: &[Header<'a>]) -> Result<Fields<'a>, Error> {
    let mut fields = Fields::default();
    for header in headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            fields.host = Some(header.value);
            fields.host_count += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            fields.content_length = Some(match fields.content_length {
                Some(Err(e)) => Err(e),
                previous => parse_content_length(header.value).and_then(|n| match previous {
                    Some(Ok(m)) if m != n => Err(Error::InvalidContentLength),
                    _ => Ok(n),
                }),
            });
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            scan_transfer_encoding(header.value, &mut fields.te);
        } else if name.eq_ignore_ascii_case("connection") {
            // RFC 9112 §9.6 and §9.3: the "close" and "keep-alive" connection options.
            for option in list(header.value) {
                fields.close |= option.eq_ignore_ascii_case(b"close");
                fields.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            for expectation in list(header.value) {
                if expectation.eq_ignore_ascii_case(b"100-continue") {
                    fields.expect_continue = true;
                } else {
                    fields.expect_other = true;
                }
            }
        }
    }
    Ok(fields)
}

fn scan_transfer_encoding(value: &[u8], te: &mut TransferCodings) {
    te.present = true;
    let mut any = false;
    for coding in list(value) {
        any = true;
        let (name, params) = match coding.iter().position(|&b| b == b';') {
            Some(semi) => (trim_ows(&coding[..semi]), true),
            None => (coding, false),
        };
        let chunked = name.eq_ignore_ascii_case(b"chunked");
        // RFC 9112 §7: "A sender MUST NOT apply the chunked transfer coding more than once";
        // chunked takes no parameters.
        te.invalid |= !is_token(name) || (chunked && (params || te.chunked_seen));
        te.unknown |= !chunked
            && ![
                &b"gzip"[..],
                b"x-gzip",
                b"deflate",
                b"compress",
                b"x-compress",
            ]
            .iter()
            .any(|known| name.eq_ignore_ascii_case(known));
        te.chunked_seen |= chunked;
        te.last_chunked = chunked;
    }
    te.invalid |= !any;
}

/// `Content-Length = 1*DIGIT`, or a list of identical values (RFC 9112 §6.3 rule 5, RFC 9110
/// §8.6). Leading zeros are digits like any other.
fn parse_content_length(value: &[u8]) -> Result<u64, Error> {
    let mut length = None;
    for member in value.split(|&b| b == b',').map(trim_ows) {
        if member.is_empty() || !member.iter().all(u8::is_ascii_digit) {
            return Err(Error::InvalidContentLength);
        }
        let n = member.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        let n = n.ok_or(Error::ContentLengthOverflow)?;
        if length.is_some_and(|m| m != n) {
            return Err(Error::InvalidContentLength);
        }
        length = Some(n);
    }
    length.ok_or(Error::InvalidContentLength)
}

/// The non-empty members of a comma-separated list (RFC 9110 §5.6.1: a recipient "MUST
/// parse and ignore a reasonable number of empty list elements").
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|member| !member.is_empty())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `token = 1*tchar` (RFC 9110 §5.6.2).
fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// VCHAR or obs-text (RFC 9110 §5.5).
fn is_field_vchar(b: u8) -> bool {
    b.is_ascii_graphic() || b >= 0x80
}

/// Decodes the chunked transfer coding (RFC 9112 §7.1), byte by byte.
///
/// ```text
/// chunked-body   = *chunk last-chunk trailer-section CRLF
/// chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
/// last-chunk     = 1*("0") [ chunk-ext ] CRLF
/// chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
/// ```
///
/// Extensions are skipped ("A recipient MUST ignore unrecognized chunk extensions", §7.1.1)
/// and so are trailer fields (§7.1.2 lets a recipient discard them); both are bounded by
/// [`Limits`]. Lines end in CRLF only, as in heads. After an error the decoder keeps
/// returning it.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    line_len: usize,
    trailer_len: usize,
    max_chunk_line: usize,
    max_trailers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// At the start of a chunk-size line: a hex digit must come.
    SizeStart,
    /// Inside the hex digits.
    Size,
    /// BWS after the size: only more whitespace or ";" may follow.
    SizeWs,
    /// Inside chunk extensions, up to CR.
    Ext,
    /// CR of the chunk-size line seen.
    SizeLf,
    /// Bytes of chunk data still to come.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final CRLF.
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
    Failed(Error),
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new(limits: &Limits) -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::SizeStart,
            size: 0,
            line_len: 0,
            trailer_len: 0,
            max_chunk_line: limits.max_chunk_line,
            max_trailers: limits.max_trailers,
        }
    }

    /// Whether the whole body, trailers and final CRLF included, has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decode from `input`, handing chunk data to `out` as slices of `input`. Returns the
    /// bytes consumed and whether the body is complete: unless it is, all of `input` is
    /// consumed; once it is, the rest of `input` belongs to the next message.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut out: impl FnMut(&[u8]),
    ) -> Result<(usize, bool), Error> {
        let mut pos = 0;
        loop {
            match self.state {
                ChunkState::Done => return Ok((pos, true)),
                ChunkState::Failed(error) => return Err(error),
                _ if pos == input.len() => return Ok((pos, false)),
                ChunkState::Data(remaining) => {
                    let available = input.len() - pos;
                    let n = remaining.min(available as u64) as usize;
                    out(&input[pos..pos + n]);
                    pos += n;
                    self.state = match remaining - n as u64 {
                        0 => ChunkState::DataCr,
                        left => ChunkState::Data(left),
                    };
                }
                state => {
                    self.state = match self.step(state, input[pos]) {
                        Ok(next) => next,
                        Err(error) => ChunkState::Failed(error),
                    };
                    pos += 1;
                }
            }
        }
    }

    fn step(&mut self, state: ChunkState, b: u8) -> Result<ChunkState, Error> {
        use ChunkState::*;
        match state {
            SizeStart | Size | SizeWs | Ext => {
                self.line_len += 1;
                if self.line_len > self.max_chunk_line.saturating_add(1) {
                    return Err(Error::ChunkLineTooLong);
                }
            }
            TrailerStart | Trailer | TrailerLf | FinalLf => {
                self.trailer_len += 1;
                if self.trailer_len > self.max_trailers {
                    return Err(Error::TrailersTooLarge);
                }
            }
            _ => {}
        }
        let hex = (b as char).to_digit(16);
        Ok(match (state, b) {
            (SizeStart | Size, _) if hex.is_some() => {
                let digit = u64::from(hex.unwrap_or_default());
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|n| n.checked_add(digit))
                    .ok_or(Error::ChunkSizeOverflow)?;
                Size
            }
            (Size | SizeWs, b' ' | b'\t') => SizeWs,
            (Size | SizeWs | Ext, b';') => Ext,
            (Size | Ext, b'\r') => SizeLf,
            (Ext, b'\n') => return Err(Error::BareLf),
            (Ext, b) if b == b'\t' || b == b' ' || is_field_vchar(b) => Ext,
            (SizeLf, b'\n') => {
                self.line_len = 0;
                match self.size {
                    0 => TrailerStart,
                    size => Data(size),
                }
            }
            (TrailerLf, b'\n') => TrailerStart,
            (FinalLf, b'\n') => Done,
            (SizeLf | TrailerLf | FinalLf, _) => return Err(Error::BareCr),
            (SizeStart | Size | SizeWs | DataCr | TrailerStart | Trailer, b'\n') => {
                return Err(Error::BareLf);
            }
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => {
                self.size = 0;
                SizeStart
            }
            (TrailerStart, b'\r') => FinalLf,
            (Trailer, b'\r') => TrailerLf,
            (TrailerStart | Trailer, _) => Trailer,
            _ => return Err(Error::InvalidChunk),
        })
    }
}

/// A fuzz target's body: run every parser on `data` and check their invariants. Panics on a
/// violated invariant, never on input.
pub fn fuzz_http(data: &[u8]) {
    let small = Limits {
        max_head: 64,
        max_headers: 3,
        max_line: 24,
        max_chunk_line: 8,
        max_trailers: 16,
    };
    for limits in [Limits::default(), small] {
        match parse_request(data, &limits) {
            Ok(Status::Complete(len, request)) => {
                assert!(len <= data.len() && len <= limits.max_head);
                assert!(data[..len].ends_with(b"\r\n\r\n"));
                assert!(request.headers().len() <= limits.max_headers);
                // The head alone parses the same: nothing after it was looked at.
                assert_eq!(
                    parse_request(&data[..len], &limits),
                    Ok(Status::Complete(len, request.clone()))
                );
                assert_eq!(
                    parse_request(&data[..len - 1], &limits),
                    Ok(Status::Partial)
                );
            }
            Ok(Status::Partial) => assert!(data.len() < limits.max_head),
            Err(error) => assert!([400, 413, 414, 417, 431, 501, 505].contains(&error.status())),
        }
        for to in [ResponseTo::Other, ResponseTo::Head, ResponseTo::Connect] {
            match parse_response(data, &limits, to) {
                Ok(Status::Complete(len, response)) => {
                    assert!(len <= data.len() && len <= limits.max_head);
                    assert!(data[..len].ends_with(b"\r\n\r\n"));
                    assert!((100..=599).contains(&response.code));
                    assert!(response.headers().len() <= limits.max_headers);
                    assert_eq!(
                        parse_response(&data[..len], &limits, to),
                        Ok(Status::Complete(len, response.clone()))
                    );
                }
                Ok(Status::Partial) => assert!(data.len() < limits.max_head),
                Err(_) => {}
            }
        }
        // Whole input at once and byte by byte must agree on data, length and outcome.
        let mut whole_out = Vec::new();
        let whole = ChunkedDecoder::new(&limits).decode(data, |d| whole_out.extend_from_slice(d));
        let mut bytewise = ChunkedDecoder::new(&limits);
        let mut bytewise_out = Vec::new();
        let mut consumed = 0;
        let mut outcome = Ok((0, false));
        for &byte in data {
            outcome = bytewise.decode(&[byte], |d| bytewise_out.extend_from_slice(d));
            match outcome {
                Ok((n, done)) => {
                    consumed += n;
                    if done {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        match (whole, outcome) {
            (Ok((n, done)), Ok((_, bytewise_done))) => {
                assert!(n <= data.len());
                assert_eq!((n, done), (consumed, bytewise_done));
                assert!(done || n == data.len());
                assert_eq!(whole_out, bytewise_out);
            }
            (Err(a), Err(b)) => assert_eq!(a, b),
            (a, b) => panic!("chunked decoding depends on how input is split: {a:?} {b:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// RFC section, head, framing, keep-alive, expect-continue, host.
    type RequestCase<'a> = (&'a str, &'a [u8], Framing, bool, bool, Option<&'a [u8]>);

    /// RFC section, head, request answered, code, framing, keep-alive.
    type ResponseCase<'a> = (&'a str, &'a [u8], ResponseTo, u16, Framing, bool);

    fn request(head: &[u8]) -> Result<Status<Request<'_>>, Error> {
        parse_request(head, &Limits::default())
    }

    fn complete_request(head: &[u8]) -> (usize, Request<'_>) {
        match request(head) {
            Ok(Status::Complete(len, request)) => (len, request),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(head)),
        }
    }

    fn response(head: &[u8], to: ResponseTo) -> Result<Status<Response<'_>>, Error> {
        parse_response(head, &Limits::default(), to)
    }

    fn complete_response(head: &[u8], to: ResponseTo) -> Response<'_> {
        match response(head, to) {
            Ok(Status::Complete(len, response)) => {
                assert_eq!(len, head.len());
                response
            }
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(head)),
        }
    }

    /// Decode a whole chunked body at once: (data, consumed, done).
    fn dechunk(input: &[u8], limits: &Limits) -> Result<(Vec<u8>, usize, bool), Error> {
        let mut data = Vec::new();
        let (consumed, done) =
            ChunkedDecoder::new(limits).decode(input, |d| data.extend_from_slice(d))?;
        Ok((data, consumed, done))
    }

    #[test]
    fn parses_a_simple_request() {
        let head = b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n";
        let (len, req) = complete_request(head);
        assert_eq!(len, head.len());
        assert_eq!(req.method, "GET");
        assert_eq!(req.target, Target::Origin("/index.html?q=1"));
        assert_eq!(req.version, Version::Http11);
        assert_eq!(req.host, Some(&b"example.com"[..]));
        assert_eq!(req.framing, Framing::Length(0));
        assert!(req.keep_alive);
        assert!(!req.expect_continue);
        assert_eq!(
            req.headers(),
            [
                Header {
                    name: "Host",
                    value: b"example.com"
                },
                Header {
                    name: "User-Agent",
                    value: b"t"
                }
            ]
        );
        assert_eq!(req.header("user-agent"), Some(&b"t"[..]));
        assert_eq!(req.header("accept"), None);
    }

    #[test]
    fn every_error_rule() {
        // (RFC section, head, error). Each head is otherwise valid.
        let cases: &[(&str, &[u8], Error)] = &[
            ("9112 §2.2 bare LF", b"GET / HTTP/1.1\nHost: a\r\n\r\n", Error::BareLf),
            ("9112 §2.2 bare LF in field", b"GET / HTTP/1.1\r\nHost: a\n\r\n", Error::BareLf),
            ("9112 §2.2 bare LF ends head", b"GET / HTTP/1.1\r\nHost: a\r\n\n", Error::BareLf),
            ("9112 §2.2 bare CR", b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", Error::BareCr),
            ("9112 §2.2 bare CR in line", b"GET /\r HTTP/1.1\r\n", Error::BareCr),
            ("9112 §2.2 ws after start line", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", Error::ObsFold),
            ("9112 §3 double SP", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", Error::RequestLine),
            ("9112 §3 trailing SP", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", Error::RequestLine),
            ("9112 §3 HTAB separator", b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::RequestLine),
            ("9112 §3 two parts", b"GET /\r\nHost: a\r\n\r\n", Error::RequestLine),
            ("9110 §9.1 method token", b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", Error::Method),
            ("9110 §9.1 empty method", b" / HTTP/1.1\r\nHost: a\r\n\r\n", Error::Method),
            ("9112 §2.3 lowercase http", b"GET / http/1.1\r\nHost: a\r\n\r\n", Error::RequestLine),
            ("9112 §2.3 two-digit minor", b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", Error::RequestLine),
            ("9110 §15.6.6 HTTP/2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", Error::VersionNotSupported),
            ("9110 §15.6.6 HTTP/0.9", b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", Error::VersionNotSupported),
            ("9112 §3.2 fragment", b"GET /#x HTTP/1.1\r\nHost: a\r\n\r\n", Error::Target),
            ("9112 §3.2 non-ASCII", b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", Error::Target),
            ("9112 §3.2 relative", b"GET index HTTP/1.1\r\nHost: a\r\n\r\n", Error::Target),
            ("9112 §3.2.2 empty authority", b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", Error::Target),
            ("9110 §4.2.4 userinfo", b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::Target),
            ("9112 §3.2.2 bad scheme", b"GET 1http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", Error::Target),
            ("9112 §3.2.3 CONNECT no port", b"CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n", Error::Target),
            ("9112 §3.2.3 CONNECT path", b"CONNECT /a HTTP/1.1\r\nHost: a\r\n\r\n", Error::Target),
            ("9112 §3.2.3 CONNECT big port", b"CONNECT a:65536 HTTP/1.1\r\nHost: a\r\n\r\n", Error::Target),
            ("9112 §3.2.4 asterisk not OPTIONS", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", Error::Target),
            ("9112 §3.2 missing Host", b"GET / HTTP/1.1\r\n\r\n", Error::MissingHost),
            ("9112 §3.2 missing Host, absolute", b"GET http://a/ HTTP/1.1\r\n\r\n", Error::MissingHost),
            ("9112 §3.2 duplicate Host", b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", Error::DuplicateHost),
            ("9112 §3.2 duplicate Host 1.0", b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", Error::DuplicateHost),
            ("9112 §3.2 Host list", b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", Error::InvalidHost),
            ("9112 §3.2 Host userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", Error::InvalidHost),
            ("9112 §3.2 Host path", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", Error::InvalidHost),
            ("9112 §3.2 Host bad port", b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", Error::InvalidHost),
            ("9112 §5.1 space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", Error::WhitespaceBeforeColon),
            ("9112 §5.1 tab before colon", b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", Error::WhitespaceBeforeColon),
            ("9110 §5.1 name token", b"GET / HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n", Error::HeaderName),
            ("9110 §5.1 empty name", b"GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", Error::HeaderName),
            ("9112 §5 no colon", b"GET / HTTP/1.1\r\nHost: a\r\nX\r\n\r\n", Error::HeaderName),
            ("9110 §5.5 NUL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", Error::HeaderValue),
            ("9110 §5.5 DEL in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", Error::HeaderValue),
            ("9112 §5.2 obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", Error::ObsFold),
            ("9112 §5.2 obs-fold tab", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", Error::ObsFold),
            ("9112 §6.3 CL not digits", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1a\r\n\r\n", Error::InvalidContentLength),
            ("9112 §6.3 CL sign", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", Error::InvalidContentLength),
            ("9112 §6.3 CL negative", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", Error::InvalidContentLength),
            ("9112 §6.3 CL empty", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", Error::InvalidContentLength),
            ("9112 §6.3 CL inner space", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", Error::InvalidContentLength),
            ("9112 §6.3 CL hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", Error::InvalidContentLength),
            ("9112 §6.3 CL list differs", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n", Error::InvalidContentLength),
            ("9112 §6.3 CL list empty member", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,,1\r\n\r\n", Error::InvalidContentLength),
            ("9112 §6.3 CL lines differ", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", Error::InvalidContentLength),
            ("9110 §8.6 CL overflow", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", Error::ContentLengthOverflow),
            ("9112 §6.3 TE and CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Error::TransferEncodingWithContentLength),
            ("9112 §6.3 CL and TE", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", Error::TransferEncodingWithContentLength),
            ("9112 §6.1 TE in 1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Error::TransferEncodingInHttp10),
            ("9112 §6.3 chunked not last", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", Error::InvalidTransferEncoding),
            ("9112 §6.3 chunked not last, lines", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", Error::InvalidTransferEncoding),
            ("9112 §6.3 no chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", Error::InvalidTransferEncoding),
            ("9112 §7 chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", Error::InvalidTransferEncoding),
            ("9112 §6.1 empty TE", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", Error::InvalidTransferEncoding),
            ("9112 §7 chunked with params", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", Error::InvalidTransferEncoding),
            ("9112 §6.1 unknown coding", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: br, chunked\r\n\r\n", Error::UnsupportedTransferEncoding),
            ("9112 §6.1 identity is gone", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", Error::UnsupportedTransferEncoding),
            ("9112 §6.1 chunk ed", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked-false\r\n\r\n", Error::UnsupportedTransferEncoding),
            ("9110 §10.1.1 unknown expectation", b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", Error::UnsupportedExpectation),
        ];
        for (rfc, head, error) in cases {
            assert_eq!(request(head), Err(*error), "RFC {rfc}");
        }
    }

    #[test]
    fn accepted_forms_and_derived_facts() {
        // (RFC section, head, framing, keep-alive, expect-continue, host)
        let cases: &[RequestCase<'_>] = &[
            ("9112 §9.3 1.1 persists", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Framing::Length(0), true, false, Some(b"a")),
            ("9112 §9.6 close", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, CLOSE\r\n\r\n", Framing::Length(0), false, false, Some(b"a")),
            ("9112 §9.3 1.0 closes", b"GET / HTTP/1.0\r\n\r\n", Framing::Length(0), false, false, None),
            ("9112 §9.3 1.0 keep-alive", b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", Framing::Length(0), true, false, None),
            ("9112 §9.3 1.0 keep-alive, close", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", Framing::Length(0), false, false, None),
            ("9110 §2.5 HTTP/1.2 is 1.1", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", Framing::Length(0), true, false, Some(b"a")),
            ("9112 §6.3 CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\n\r\n", Framing::Length(42), true, false, Some(b"a")),
            ("9112 §6.3 CL leading zeros", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0042\r\n\r\n", Framing::Length(42), true, false, Some(b"a")),
            ("9112 §6.3 CL max", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n", Framing::Length(u64::MAX), true, false, Some(b"a")),
            ("9112 §6.3 CL identical list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7 , 07\r\n\r\n", Framing::Length(7), true, false, Some(b"a")),
            ("9112 §6.3 CL identical lines", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n", Framing::Length(7), true, false, Some(b"a")),
            ("9112 §6.3 chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", Framing::Chunked, true, false, Some(b"a")),
            ("9112 §6.3 gzip, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: , chunked\r\n\r\n", Framing::Chunked, true, false, Some(b"a")),
            ("9110 §10.1.1 100-continue", b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n", Framing::Length(3), true, true, Some(b"a")),
            ("9110 §10.1.1 ignored in 1.0", b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", Framing::Length(0), false, false, None),
            ("9112 §3.2 empty Host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", Framing::Length(0), true, false, Some(b"")),
            ("9112 §3.2 Host with port", b"GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n", Framing::Length(0), true, false, Some(b"a.example:8080")),
            ("9112 §3.2 Host IPv6", b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n", Framing::Length(0), true, false, Some(b"[2001:db8::1]:443")),
            ("9112 §3.2.2 absolute wins", b"GET http://b:81/x?y HTTP/1.1\r\nHost: a\r\n\r\n", Framing::Length(0), true, false, Some(b"b:81")),
            ("9112 §3.2.3 CONNECT", b"CONNECT b:443 HTTP/1.1\r\nHost: b:443\r\n\r\n", Framing::Length(0), true, false, Some(b"b:443")),
            ("9112 §3.2.4 OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Framing::Length(0), true, false, Some(b"a")),
            ("9112 §5 OWS trimmed", b"GET / HTTP/1.1\r\nHost:\t a \t\r\n\r\n", Framing::Length(0), true, false, Some(b"a")),
            ("9112 §2.2 empty lines first", b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Framing::Length(0), true, false, Some(b"a")),
        ];
        for (rfc, head, framing, keep_alive, expect_continue, host) in cases {
            let (len, req) = complete_request(head);
            assert_eq!(len, head.len(), "RFC {rfc}");
            assert_eq!(req.framing, *framing, "RFC {rfc}");
            assert_eq!(req.keep_alive, *keep_alive, "RFC {rfc}");
            assert_eq!(req.expect_continue, *expect_continue, "RFC {rfc}");
            assert_eq!(req.host, *host, "RFC {rfc}");
        }
    }

    #[test]
    fn target_forms() {
        let cases: &[(&[u8], Target<'_>)] = &[
            (
                b"GET /a/b?c HTTP/1.1\r\nHost: a\r\n\r\n",
                Target::Origin("/a/b?c"),
            ),
            (
                b"GET http://x.example:8080/p?q HTTP/1.1\r\nHost: a\r\n\r\n",
                Target::Absolute {
                    scheme: "http",
                    authority: "x.example:8080",
                    path: "/p?q",
                },
            ),
            (
                b"GET https://x?q HTTP/1.1\r\nHost: a\r\n\r\n",
                Target::Absolute {
                    scheme: "https",
                    authority: "x",
                    path: "?q",
                },
            ),
            (
                b"CONNECT [::1]:443 HTTP/1.1\r\nHost: a\r\n\r\n",
                Target::Authority("[::1]:443"),
            ),
            (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Target::Asterisk),
        ];
        for (head, target) in cases {
            assert_eq!(complete_request(head).1.target, *target);
        }
    }

    #[test]
    fn limits_map_to_statuses() {
        let limits = Limits {
            max_head: 64,
            max_headers: 2,
            max_line: 32,
            ..Limits::default()
        };
        let long_target = format!("GET /{} HTTP/1.1\r\n", "a".repeat(40));
        let cases: &[(&str, &[u8], Error, u16)] = &[
            (
                "9112 §3 long request-line",
                long_target.as_bytes(),
                Error::UriTooLong,
                414,
            ),
            (
                "6585 §5 long field line",
                b"GET / HTTP/1.1\r\nX: 0123456789012345678901234567890",
                Error::HeaderLineTooLong,
                431,
            ),
            (
                "6585 §5 too many fields",
                b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n",
                Error::TooManyHeaders,
                431,
            ),
            (
                "6585 §5 head too large",
                b"GET /0123456789 HTTP/1.1\r\nHost: a\r\nA: 0123456789012345678901234567\r\n\r\n",
                Error::HeadTooLarge,
                431,
            ),
            (
                "6585 §5 partial head too large",
                &[b'\r', b'\n'].repeat(32),
                Error::HeadTooLarge,
                431,
            ),
        ];
        for (rfc, head, error, status) in cases {
            assert_eq!(parse_request(head, &limits), Err(*error), "RFC {rfc}");
            assert_eq!(error.status(), *status, "RFC {rfc}");
        }
        // A long line fails before its end arrives, without scanning the rest of the buffer.
        let endless = [b'a'; 1 << 16];
        assert_eq!(parse_request(&endless, &limits), Err(Error::UriTooLong));
        // Exactly at the limits is fine.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX: 01234567890123456789\r\n\r\n";
        let at = Limits {
            max_head: head.len(),
            max_line: "X: 01234567890123456789".len(),
            ..limits
        };
        assert!(matches!(parse_request(head, &at), Ok(Status::Complete(..))));
        assert_eq!(
            parse_request(
                head,
                &Limits {
                    max_head: head.len() - 1,
                    ..at
                }
            ),
            Err(Error::HeadTooLarge)
        );
        assert_eq!(
            parse_request(
                head,
                &Limits {
                    max_line: at.max_line - 1,
                    ..at
                }
            ),
            Err(Error::HeaderLineTooLong)
        );
        for (error, status) in [
            (Error::ContentLengthOverflow, 413),
            (Error::UnsupportedTransferEncoding, 501),
            (Error::VersionNotSupported, 505),
            (Error::UnsupportedExpectation, 417),
            (Error::ObsFold, 400),
            (Error::TrailersTooLarge, 431),
        ] {
            assert_eq!(error.status(), status, "{error}");
        }
    }

    #[test]
    fn partial_until_the_empty_line() {
        let head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
        for cut in 0..head.len() {
            assert_eq!(request(&head[..cut]), Ok(Status::Partial), "cut at {cut}");
        }
        assert!(matches!(request(head), Ok(Status::Complete(n, _)) if n == head.len()));
    }

    #[test]
    fn pipelined_requests() {
        let buf = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\nHost: a\r\n\r\n";
        let (first, req) = complete_request(buf);
        assert_eq!(req.target, Target::Origin("/1"));
        let (second, req) = complete_request(&buf[first..]);
        assert_eq!(req.target, Target::Origin("/2"));
        assert_eq!(req.framing, Framing::Length(2));
        let third_at = first + second + 2;
        assert_eq!(&buf[first + second..third_at], b"hi");
        let (third, req) = complete_request(&buf[third_at..]);
        assert_eq!(req.target, Target::Origin("/3"));
        assert_eq!(third_at + third, buf.len());
    }

    #[test]
    fn responses() {
        use ResponseTo::{Connect, Head, Other};
        // (RFC 9112 §6.3 rule, head, answers, code, framing, keep-alive)
        let cases: &[ResponseCase<'_>] = &[
            (
                "rule 5 CL",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Other,
                200,
                Framing::Length(5),
                true,
            ),
            (
                "rule 1 HEAD",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Head,
                200,
                Framing::Length(0),
                true,
            ),
            (
                "rule 1 HEAD ignores TE",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Head,
                200,
                Framing::Length(0),
                true,
            ),
            (
                "rule 1 1xx",
                b"HTTP/1.1 100 Continue\r\n\r\n",
                Other,
                100,
                Framing::Length(0),
                true,
            ),
            (
                "rule 1 204",
                b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
                Other,
                204,
                Framing::Length(0),
                true,
            ),
            (
                "rule 1 304",
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Other,
                304,
                Framing::Length(0),
                true,
            ),
            (
                "9110 §15.2.2 101",
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                Other,
                101,
                Framing::Tunnel,
                true,
            ),
            (
                "rule 2 CONNECT 2xx",
                b"HTTP/1.1 200 Connection established\r\n\r\n",
                Connect,
                200,
                Framing::Tunnel,
                true,
            ),
            (
                "rule 2 CONNECT 407",
                b"HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n",
                Connect,
                407,
                Framing::Length(0),
                true,
            ),
            (
                "rule 4 chunked",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Other,
                200,
                Framing::Chunked,
                true,
            ),
            (
                "rule 4 not chunked",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: br\r\n\r\n",
                Other,
                200,
                Framing::CloseDelimited,
                false,
            ),
            (
                "rule 7 until close",
                b"HTTP/1.1 200 OK\r\n\r\n",
                Other,
                200,
                Framing::CloseDelimited,
                false,
            ),
            (
                "9112 §9.6 close",
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                Other,
                200,
                Framing::Length(0),
                false,
            ),
            (
                "9112 §9.3 1.0",
                b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
                Other,
                200,
                Framing::Length(0),
                false,
            ),
            (
                "9112 §9.3 1.0 keep-alive",
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                Other,
                200,
                Framing::Length(0),
                true,
            ),
            (
                "9112 §4 empty reason",
                b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n",
                Other,
                404,
                Framing::Length(0),
                true,
            ),
            (
                "9112 §4 no SP before CRLF",
                b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n",
                Other,
                404,
                Framing::Length(0),
                true,
            ),
        ];
        for (rfc, head, to, code, framing, keep_alive) in cases {
            let res = complete_response(head, *to);
            assert_eq!(res.code, *code, "{rfc}");
            assert_eq!(res.framing, *framing, "{rfc}");
            assert_eq!(res.keep_alive, *keep_alive, "{rfc}");
        }
        let res = complete_response(
            b"HTTP/1.1 503 Slow Down \tnow\r\nRetry-After: 5\r\n\r\n",
            Other,
        );
        assert_eq!(res.reason, b"Slow Down \tnow");
        assert_eq!(res.header("retry-after"), Some(&b"5"[..]));
    }

    #[test]
    fn response_errors() {
        let cases: &[(&str, &[u8], Error)] = &[
            (
                "9112 §4 code digits",
                b"HTTP/1.1 2x0 OK\r\n\r\n",
                Error::StatusLine,
            ),
            (
                "9110 §15 code range",
                b"HTTP/1.1 099 Low\r\n\r\n",
                Error::StatusLine,
            ),
            (
                "9110 §15 code range high",
                b"HTTP/1.1 600 High\r\n\r\n",
                Error::StatusLine,
            ),
            (
                "9112 §4 four digits",
                b"HTTP/1.1 2000 OK\r\n\r\n",
                Error::StatusLine,
            ),
            ("9112 §4 short", b"HTTP/1.1 20\r\n\r\n", Error::StatusLine),
            (
                "9112 §2.3 version",
                b"HTTP/2.0 200 OK\r\n\r\n",
                Error::VersionNotSupported,
            ),
            (
                "9112 §2.3 name",
                b"HTTX/1.1 200 OK\r\n\r\n",
                Error::StatusLine,
            ),
            (
                "9112 §4 NUL in reason",
                b"HTTP/1.1 200 O\0K\r\n\r\n",
                Error::StatusLine,
            ),
            (
                "9112 §6.3 rule 3 TE and CL",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
                Error::TransferEncodingWithContentLength,
            ),
            (
                "9112 §6.1 TE in 1.0",
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Error::TransferEncodingInHttp10,
            ),
            (
                "9112 §7 chunked twice",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                Error::InvalidTransferEncoding,
            ),
            (
                "9112 §6.3 rule 5 CL",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
                Error::InvalidContentLength,
            ),
            (
                "9112 §5.2 obs-fold",
                b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
                Error::ObsFold,
            ),
            ("9112 §2.2 bare LF", b"HTTP/1.1 200 OK\n\n", Error::BareLf),
            (
                "9112 §2.2 no empty lines first",
                b"\r\nHTTP/1.1 200 OK\r\n\r\n",
                Error::StatusLine,
            ),
        ];
        for (rfc, head, error) in cases {
            assert_eq!(response(head, ResponseTo::Other), Err(*error), "RFC {rfc}");
        }
    }

    #[test]
    fn response_to_request() {
        let (_, head) = complete_request(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
        let (_, connect) = complete_request(b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n");
        let (_, get) = complete_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(ResponseTo::of(&head), ResponseTo::Head);
        assert_eq!(ResponseTo::of(&connect), ResponseTo::Connect);
        assert_eq!(ResponseTo::of(&get), ResponseTo::Other);
    }

    #[test]
    fn chunked_bodies() {
        let limits = Limits::default();
        // (RFC 9112 section, body, data)
        let cases: &[(&str, &[u8], &[u8])] = &[
            (
                "§7.1",
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                b"hello world",
            ),
            (
                "§7.1 hex, leading zeros",
                b"000A\r\n0123456789\r\n00\r\n\r\n",
                b"0123456789",
            ),
            (
                "§7.1 lowercase hex",
                b"a\r\n0123456789\r\n0\r\n\r\n",
                b"0123456789",
            ),
            (
                "§7.1.1 extensions ignored",
                b"5;name=\"v\" ; x\r\nhello\r\n0;last\r\n\r\n",
                b"hello",
            ),
            (
                "§7.1.1 BWS before ;",
                b"5 \t;a=b\r\nhello\r\n0\r\n\r\n",
                b"hello",
            ),
            (
                "§7.1.2 trailers skipped",
                b"5\r\nhello\r\n0\r\nChecksum: x\r\nMore: y\r\n\r\n",
                b"hello",
            ),
            ("§7.1 empty body", b"0\r\n\r\n", b""),
        ];
        for (rfc, body, data) in cases {
            let mut input = body.to_vec();
            input.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(
                dechunk(&input, &limits),
                Ok((data.to_vec(), body.len(), true)),
                "RFC 9112 {rfc}"
            );
        }
    }

    #[test]
    fn chunked_errors() {
        let limits = Limits {
            max_chunk_line: 8,
            max_trailers: 16,
            ..Limits::default()
        };
        let cases: &[(&str, &[u8], Error)] = &[
            ("§7.1 no size", b"\r\n", Error::InvalidChunk),
            (
                "§7.1 leading space",
                b" 5\r\nhello\r\n",
                Error::InvalidChunk,
            ),
            ("§7.1 0x prefix", b"0x5\r\nhello\r\n", Error::InvalidChunk),
            ("§7.1 sign", b"+5\r\nhello\r\n", Error::InvalidChunk),
            ("§7.1 space inside size", b"5 5\r\n", Error::InvalidChunk),
            (
                "§7.1 trailing space",
                b"5 \r\nhello\r\n",
                Error::InvalidChunk,
            ),
            ("§2.2 bare LF size", b"5\nhello\r\n", Error::BareLf),
            ("§2.2 bare LF ext", b"5;a\nhello\r\n", Error::BareLf),
            ("§2.2 bare CR size", b"5\rhello\r\n", Error::BareCr),
            (
                "§7.1 data longer than size",
                b"5\r\nhello!\r\n",
                Error::InvalidChunk,
            ),
            (
                "§7.1 data then bare LF",
                b"5\r\nhello\n0\r\n\r\n",
                Error::BareLf,
            ),
            ("§7.1 CR then junk", b"5\r\nhello\rX", Error::InvalidChunk),
            ("§7.1 ext control char", b"5;\0\r\n", Error::InvalidChunk),
            (
                "§7.1 line limit",
                b"1;aaaaaaaaa\r\n",
                Error::ChunkLineTooLong,
            ),
            (
                "§7.1.2 trailer limit",
                b"0\r\nA: 0123456789abcdef\r\n\r\n",
                Error::TrailersTooLarge,
            ),
            ("§2.2 bare LF trailer", b"0\r\nA: b\n\r\n", Error::BareLf),
            ("§2.2 bare LF end", b"0\r\n\n", Error::BareLf),
            ("§2.2 bare CR end", b"0\r\n\rX", Error::BareCr),
        ];
        for (rfc, body, error) in cases {
            assert_eq!(dechunk(body, &limits), Err(*error), "RFC 9112 {rfc}");
        }
        assert_eq!(
            dechunk(b"10000000000000000\r\n", &Limits::default()),
            Err(Error::ChunkSizeOverflow),
            "RFC 9112 §7.1 size overflow"
        );
        assert_eq!(Error::ChunkSizeOverflow.status(), 413);
        // At the line limit exactly, and 16 hex digits, are fine.
        assert!(dechunk(b"1;aaaaaa\r\nx\r\n0\r\n\r\n", &limits).is_ok_and(|r| r.2));
        assert!(dechunk(b"000000000000000\r\n\r\n", &Limits::default()).is_ok());
        // Errors stick.
        let mut decoder = ChunkedDecoder::new(&limits);
        assert_eq!(decoder.decode(b"z", |_| {}), Err(Error::InvalidChunk));
        assert_eq!(
            decoder.decode(b"0\r\n\r\n", |_| {}),
            Err(Error::InvalidChunk)
        );
        assert!(!decoder.is_done());
    }

    #[test]
    fn chunked_decoder_stops_at_the_end() {
        let mut decoder = ChunkedDecoder::new(&Limits::default());
        let mut data = Vec::new();
        assert_eq!(
            decoder.decode(b"3\r\nab", |d| data.extend_from_slice(d)),
            Ok((5, false))
        );
        assert_eq!(
            decoder.decode(b"c\r\n0\r\n\r\nNEXT", |d| data.extend_from_slice(d)),
            Ok((8, true))
        );
        assert!(decoder.is_done());
        assert_eq!(data, b"abc");
        assert_eq!(decoder.decode(b"more", |_| {}), Ok((0, true)));
    }

    #[test]
    fn fuzz_body_on_fixtures() {
        for input in [
            &b""[..],
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n",
            b"5\r\nhello\r\n0\r\nA: b\r\n\r\n",
            b"\r\n\r\n\r\n",
        ] {
            fuzz_http(input);
        }
    }

    /// Parts of a valid request: method, path, HTTP/1.0?, extra fields, body framing.
    fn valid_request() -> impl Strategy<Value = (String, Vec<(String, String)>, Framing, bool)> {
        (
            prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "X-Custom"]),
            "/[a-zA-Z0-9._~/?=&%-]{0,40}",
            any::<bool>(),
            prop::collection::vec(("x-[a-z0-9-]{1,12}", "[!-~]([ !-~]{0,30}[!-~])?"), 0..20),
            prop_oneof![
                Just(Framing::Length(0)),
                any::<u64>().prop_map(Framing::Length),
                Just(Framing::Chunked),
            ],
            any::<bool>(),
        )
            .prop_map(|(method, path, http10, headers, framing, close)| {
                let framing = match framing {
                    Framing::Chunked if http10 => Framing::Length(0),
                    framing => framing,
                };
                let mut head = format!(
                    "{method} {path} HTTP/1.{}\r\nHost: lb.example:8443\r\n",
                    u8::from(!http10)
                );
                for (name, value) in &headers {
                    head += &format!("{name}:  {value}\r\n");
                }
                match framing {
                    Framing::Length(0) => {}
                    Framing::Length(n) => head += &format!("Content-Length: {n}\r\n"),
                    _ => head += "Transfer-Encoding: chunked\r\n",
                }
                if close {
                    head += "Connection: close\r\n";
                }
                head += "\r\n";
                (head, headers, framing, close || http10)
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
            fuzz_http(&data);
        }

        #[test]
        fn mutated_requests_never_panic(
            (head, _, _, _) in valid_request(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut data = head.into_bytes();
            let at = at.index(data.len());
            data[at] = byte;
            fuzz_http(&data);
        }

        #[test]
        fn valid_requests_parse_identically_at_every_split(
            (head, headers, framing, closes) in valid_request(),
        ) {
            let head = head.as_bytes();
            let (len, req) = complete_request(head);
            prop_assert_eq!(len, head.len());
            prop_assert_eq!(req.host, Some(&b"lb.example:8443"[..]));
            prop_assert_eq!(req.framing, framing);
            prop_assert_eq!(req.keep_alive, !closes);
            prop_assert_eq!(req.headers()[0].name, "Host");
            for (i, (name, value)) in headers.iter().enumerate() {
                prop_assert_eq!(req.headers()[i + 1].name, name.as_str());
                prop_assert_eq!(req.headers()[i + 1].value, value.as_bytes());
            }
            for cut in 0..head.len() {
                prop_assert_eq!(request(&head[..cut]), Ok(Status::Partial), "cut at {}", cut);
            }
            // Pipelined: a second request behind it changes nothing about the first.
            let mut two = head.to_vec();
            two.extend_from_slice(head);
            prop_assert_eq!(request(&two), Ok(Status::Complete(len, req.clone())));
            prop_assert_eq!(request(&two[len..]), Ok(Status::Complete(len, req)));
        }

        #[test]
        fn chunked_round_trip_at_every_split(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 0..8),
            ext in any::<bool>(),
        ) {
            let mut body = Vec::new();
            for chunk in &chunks {
                body.extend_from_slice(format!("{:x}", chunk.len()).as_bytes());
                if ext {
                    body.extend_from_slice(b" ; n=v");
                }
                body.extend_from_slice(b"\r\n");
                body.extend_from_slice(chunk);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\nTrailer: t\r\n\r\n");
            let expected = chunks.concat();
            for cut in 0..=body.len() {
                let mut decoder = ChunkedDecoder::new(&Limits::default());
                let mut data = Vec::new();
                let first = decoder.decode(&body[..cut], |d| data.extend_from_slice(d));
                prop_assert_eq!(first, Ok((cut, cut == body.len())));
                let mut rest = body[cut..].to_vec();
                rest.extend_from_slice(b"NEXT");
                let second = decoder.decode(&rest, |d| data.extend_from_slice(d));
                prop_assert_eq!(second, Ok((body.len() - cut, true)));
                prop_assert_eq!(&data, &expected);
            }
        }
    }
}
