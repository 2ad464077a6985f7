//! A tiny blocking HTTP/1.1 client for our own admin endpoints (`/readyz`, `/metrics`,
//! `/reload`), and a reader for the Prometheus text format they serve.
//!
//! Design: one request per connection (`Connection: close`), read to EOF, so there is no
//! connection state to get wrong. The servers are ours (axum on hyper) on loopback, but
//! the reply is still parsed as untrusted input: bodies may come with `Content-Length` or
//! `Transfer-Encoding: chunked`, and a reply larger than [`MAX_REPLY`] is refused rather
//! than buffered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The largest reply (head and body) we buffer: far above any `/metrics` of ours.
pub const MAX_REPLY: usize = 16 << 20;

/// Why an admin request failed (no HTTP status was received).
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// Could not connect to the admin endpoint.
    #[error("{addr}: cannot connect: {source}")]
    Connect {
        /// The admin endpoint.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed while sending the request or reading the reply.
    #[error("{addr}: {source}")]
    Io {
        /// The admin endpoint.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No complete reply came within the timeout.
    #[error("{addr}: no reply within {timeout:?}")]
    Timeout {
        /// The admin endpoint.
        addr: SocketAddr,
        /// The timeout of the request.
        timeout: Duration,
    },
    /// The reply is not HTTP/1.x as we know it.
    #[error("{addr}: malformed HTTP reply: {reason}")]
    Malformed {
        /// The admin endpoint.
        addr: SocketAddr,
        /// What is wrong with it.
        reason: String,
    },
    /// The reply is larger than [`MAX_REPLY`].
    #[error("{addr}: reply larger than {MAX_REPLY} bytes")]
    TooLarge {
        /// The admin endpoint.
        addr: SocketAddr,
    },
}

/// `GET path` on `addr`: the status code and the body. `timeout` bounds the whole exchange.
pub fn get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), AdminClientError> {
    request(addr, "GET", path, None, timeout)
}

/// `POST path` on `addr` with `body` (as `text/plain`): the status code and the body.
/// `timeout` bounds the whole exchange.
pub fn post(
    addr: SocketAddr,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), AdminClientError> {
    request(addr, "POST", path, Some(body), timeout)
}

/// Whether the instance behind `addr` answers `GET /readyz` with 200 within `timeout`.
pub fn ready(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(get(addr, "/readyz", timeout), Ok((200, _)))
}

/// One request on a fresh connection, read to EOF.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), AdminClientError> {
    let deadline = Instant::now() + timeout;
    let io = |source| AdminClientError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, timeout.max(Duration::from_millis(1)))
        .map_err(|source| AdminClientError::Connect { addr, source })?;

    let body = body.unwrap_or("");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: vnfctl\r\nAccept: */*\r\n\
         Connection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if method == "POST" {
        head.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    }
    head.push_str("\r\n");
    let left = time_left(deadline).ok_or(AdminClientError::Timeout { addr, timeout })?;
    stream.set_write_timeout(Some(left)).map_err(io)?;
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| timeout_or(e, addr, timeout))?;

    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = time_left(deadline).ok_or(AdminClientError::Timeout { addr, timeout })?;
        stream.set_read_timeout(Some(left)).map_err(io)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if reply.len() + n > MAX_REPLY {
                    return Err(AdminClientError::TooLarge { addr });
                }
                reply.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timeout_or(e, addr, timeout)),
        }
    }
    parse_reply(&reply).map_err(|reason| AdminClientError::Malformed { addr, reason })
}

/// Time left until `deadline`, or `None` if it has passed.
fn time_left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// A socket timeout is a [`AdminClientError::Timeout`]; anything else an I/O error.
fn timeout_or(e: std::io::Error, addr: SocketAddr, timeout: Duration) -> AdminClientError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            AdminClientError::Timeout { addr, timeout }
        }
        _ => AdminClientError::Io { addr, source: e },
    }
}

/// Split a whole HTTP/1.x reply into its status code and decoded body.
fn parse_reply(reply: &[u8]) -> Result<(u16, String), String> {
    let end = find(reply, b"\r\n\r\n").ok_or_else(|| {
        format!(
            "no end of headers in {} bytes: {:?}",
            reply.len(),
            String::from_utf8_lossy(&reply[..reply.len().min(80)])
        )
    })?;
    let head = std::str::from_utf8(&reply[..end]).map_err(|_| "headers are not UTF-8")?;
    let raw_body = &reply[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|c| (100..1000).contains(c))
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;

    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        }
    }

    // RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length.
    let body = if chunked {
        dechunk(raw_body)?
    } else if let Some(n) = length {
        if raw_body.len() < n {
            return Err(format!(
                "body cut short: {} of {n} bytes (Content-Length)",
                raw_body.len()
            ));
        }
        raw_body[..n].to_vec()
    } else {
        raw_body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Undo `Transfer-Encoding: chunked` (RFC 9112 section 7.1): `SIZE[;ext]\r\nDATA\r\n`
/// repeated, ended by a zero-size chunk and optional trailers, which are ignored.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = find(rest, b"\r\n").ok_or("chunk size line without CRLF")?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| "chunk size is not UTF-8")?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {size:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 || &rest[size..size + 2] != b"\r\n" {
            return Err(format!("chunk of {size} bytes cut short"));
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The sum of every sample of metric `name` whose labels include all of `label_filter`,
/// from a Prometheus text-format exposition; `None` if no sample matches.
///
/// Sample lines are `name value [timestamp]` and `name{a="b",c="d"} value [timestamp]`;
/// `#` lines (`HELP`, `TYPE`) and lines that do not parse are skipped. Only samples named
/// exactly `name` count: pass `x_bucket` or `x_count` for those series of a histogram.
pub fn metric_sum(metrics_text: &str, name: &str, label_filter: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in metrics_text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(sample) = parse_sample(line) else {
            continue;
        };
        if sample.name != name {
            continue;
        }
        let matches = label_filter.iter().all(|(k, v)| {
            sample
                .labels
                .iter()
                .any(|(lk, lv)| lk == k && lv.as_str() == *v)
        });
        if matches {
            sum = Some(sum.unwrap_or(0.0) + sample.value);
        }
    }
    sum
}

/// One sample line of the text format.
#[derive(Debug, PartialEq)]
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

/// Parse `name{labels} value [timestamp]`; `None` if it is not one.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_ascii_whitespace().next()?;
    // The text format writes `+Inf`, `-Inf` and `NaN`, which `f64::from_str` accepts.
    let value = value.parse::<f64>().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Parse `a="b",c="d"}` (the text after `{`): the pairs and the text after `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = s[end + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP vnf_drops_total Packets dropped by the datapath, by reason.
# TYPE vnf_drops_total counter
vnf_drops_total{reason="arp_queue_full"} 3
vnf_drops_total{reason="no_route",port="a"} 4
vnf_drops_total{port="b",reason="no_route"} 5 1700000000000
vnf_build_info{version="0.1.0",vnf="vnf-router"} 1
vnf_odd{msg="a \"quoted\", comma}",x="y"} 2.5
vnf_plain 7
vnf_plain_total 100
vnf_inf +Inf
"#;

    #[test]
    fn metric_sum_filters_and_sums() {
        assert_eq!(metric_sum(METRICS, "vnf_drops_total", &[]), Some(12.0));
        assert_eq!(
            metric_sum(METRICS, "vnf_drops_total", &[("reason", "no_route")]),
            Some(9.0)
        );
        assert_eq!(
            metric_sum(
                METRICS,
                "vnf_drops_total",
                &[("reason", "no_route"), ("port", "b")]
            ),
            Some(5.0)
        );
        assert_eq!(
            metric_sum(METRICS, "vnf_drops_total", &[("reason", "other")]),
            None
        );
        assert_eq!(metric_sum(METRICS, "vnf_plain", &[]), Some(7.0));
        assert_eq!(metric_sum(METRICS, "vnf_missing", &[]), None);
        assert_eq!(
            metric_sum(METRICS, "vnf_odd", &[("msg", "a \"quoted\", comma}")]),
            Some(2.5)
        );
        assert_eq!(metric_sum(METRICS, "vnf_odd", &[("x", "y")]), Some(2.5));
        assert_eq!(metric_sum(METRICS, "vnf_inf", &[]), Some(f64::INFINITY));
    }

    #[test]
    fn reply_with_content_length() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 6\r\n\r\nready\n";
        assert_eq!(parse_reply(r), Ok((200, "ready\n".to_string())));
        let short = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nready\n";
        assert!(parse_reply(short).is_err());
    }

    #[test]
    fn reply_chunked() {
        let r = b"HTTP/1.1 422 Unprocessable Entity\r\nTransfer-Encoding: chunked\r\n\r\n\
                  6\r\nline 1\r\na;ext=1\r\n\nline 2\n!!\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(parse_reply(r), Ok((422, "line 1\nline 2\n!!".to_string())));
        let cut = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nabc";
        assert!(parse_reply(cut).is_err());
    }

    #[test]
    fn reply_until_eof_and_garbage() {
        assert_eq!(
            parse_reply(b"HTTP/1.0 204 No Content\r\n\r\n"),
            Ok((204, String::new()))
        );
        assert!(parse_reply(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn get_against_a_local_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while find(&req, b"\r\n\r\n").is_none() {
                let n = s.read(&mut buf).expect("read");
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            )
            .expect("write");
            String::from_utf8(req).expect("utf-8")
        });
        let reply = get(addr, "/metrics", Duration::from_secs(5)).expect("get");
        assert_eq!(reply, (200, "abc".to_string()));
        let req = server.join().expect("server");
        assert!(req.starts_with("GET /metrics HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Connection: close\r\n"), "{req}");
    }

    #[test]
    fn connect_refused_is_an_error_and_not_ready() {
        // Bind and drop to get a port nobody listens on.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        assert!(matches!(
            get(addr, "/readyz", Duration::from_secs(1)),
            Err(AdminClientError::Connect { .. })
        ));
        assert!(!ready(addr, Duration::from_secs(1)));
    }
}
