//! Active health checks of backends, sans-IO.
//!
//! The load balancer probes its backends from its own userspace TCP stack. This module holds
//! the protocol side of a check and nothing else: it never opens a socket or reads the clock.
//! The glue that owns the sockets moves bytes and passes `now` in, as quinn-proto's
//! connection does.
//!
//! - [`CheckCfg`] says what a check does ([`CheckKind`]: TCP connect, HTTP, HTTPS, TLS
//!   handshake), how often, how long it may take and how many results flip a backend.
//! - [`Probe`] is one check attempt over one TCP connection: events in ([`Probe::connected`],
//!   [`Probe::recv`], [`Probe::eof`], [`Probe::handle_timeout`], ...), bytes out
//!   ([`Probe::output`]) and, once decided, an [`Outcome`] with a [`Failure`] reason whose
//!   [`Failure::label`] is a metric label.
//! - [`Tracker`] turns outcomes into up/down state with rise/fall hysteresis.
//! - [`Schedule`] says when a backend's next check is due.
//!
//! # Driving it
//!
//! Per backend the glue keeps a [`Schedule`], a [`Tracker`] and at most one [`Probe`] in
//! flight with its socket:
//!
//! ```text
//! if schedule.poll(now) && no probe in flight:
//!     probe = Probe::new(&cfg, backend, tls_config, now)
//!     if probe.outcome() is None: open a socket and connect   // Some: a TLS config error
//! on socket events:  probe.connected(now) | connect_failed(now) | recv(data, now) | eof(now)
//! on timer:          probe.handle_timeout(now)                // timer = probe.deadline()
//! after each event:  send probe.output() as far as the socket takes it; probe.consumed(n)
//! once probe.outcome() is Some(o):
//!     send what output() still holds if the socket takes it (a TLS close_notify), close
//!     if let Some(t) = tracker.record(o.is_up()): log o and t, update the pool
//! sleep until min(schedule.next_due(), probe.deadline())
//! ```
//!
//! # Design
//!
//! A probe decides as early as it can: a TCP check when the handshake completes, an HTTP
//! check when the status line and headers parse (the body is never read), a TLS check when the
//! handshake completes. Everything it holds is bounded: the response head to [`MAX_HEAD`]
//! bytes, the output to one request and TLS handshake flights. Any byte sequence from the
//! backend yields an [`Outcome`], never a panic. A check that has not decided `timeout` after
//! it started is down, whichever phase it is in; an event that arrives at or after the
//! deadline counts as the timeout, not as the event.
//!
//! A backend's state changes only after `rise` consecutive successes or `fall` consecutive
//! failures, so one lost probe does not drain a backend and a flapping one does not come
//! back. The caller chooses the initial state ([`Tracker::new`]).
//!
//! Checks run on a fixed grid, `first + k * interval`, whatever each took, and the first
//! check of each backend is offset by a hash of its address ([`first_delay`]) so that a pool
//! of 100 backends is not probed in one burst.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddrV4;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::http::{self, Limits, ResponseTo, Status};

/// The largest response head (status line, fields, empty line) a check reads; a longer one is
/// a [`Failure::BadResponse`].
pub const MAX_HEAD: usize = 8 * 1024;

/// The User-Agent of HTTP checks, so backend logs can tell them from traffic.
pub const USER_AGENT: &str = "vnf-lb-health";

/// How far ahead "never" is, for configured durations too large for [`Instant`].
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// The status codes an HTTP check accepts.
///
/// Parsed from `"200"`, `"2xx"` or `"200-399"` ([`FromStr`], and [`serde::Deserialize`] from
/// a string or an integer); [`fmt::Display`] writes the same forms back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// Exactly this code.
    Exact(u16),
    /// Any code of this class: `2` for 200 to 299.
    Class(u8),
    /// Any code from the first to the second, both included.
    Range(u16, u16),
}

impl StatusMatch {
    /// Whether `code` passes.
    pub fn matches(&self, code: u16) -> bool {
        match *self {
            StatusMatch::Exact(want) => code == want,
            StatusMatch::Class(class) => code / 100 == u16::from(class),
            StatusMatch::Range(low, high) => (low..=high).contains(&code),
        }
    }
}

impl Default for StatusMatch {
    /// `2xx`.
    fn default() -> Self {
        StatusMatch::Class(2)
    }
}

impl fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusMatch::Exact(code) => write!(f, "{code}"),
            StatusMatch::Class(class) => write!(f, "{class}xx"),
            StatusMatch::Range(low, high) => write!(f, "{low}-{high}"),
        }
    }
}

/// Why a string is not a [`StatusMatch`]; the messages are for whoever wrote the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusMatchError {
    /// the input is none of the three forms
    #[error("`{0}` is not a status code (200), class (2xx) or range (200-399)")]
    Syntax(String),
    /// a code outside RFC 9110 §15's three digits from 100 to 599
    #[error("status code {0} is outside 100-599")]
    Code(u16),
    /// a class other than 1 to 5
    #[error("status class {0}xx does not exist: classes are 1xx to 5xx")]
    Class(u8),
    /// a range whose start is above its end
    #[error("status range {0}-{1} is empty: {0} is above {1}")]
    EmptyRange(u16, u16),
}

impl FromStr for StatusMatch {
    type Err = StatusMatchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || StatusMatchError::Syntax(s.to_owned());
        if let Some((low, high)) = s.split_once('-') {
            let low = parse_code(low).ok_or_else(syntax)??;
            let high = parse_code(high).ok_or_else(syntax)??;
            if low > high {
                return Err(StatusMatchError::EmptyRange(low, high));
            }
            return Ok(StatusMatch::Range(low, high));
        }
        match s.as_bytes() {
            [class @ b'0'..=b'9', x, y]
                if x.eq_ignore_ascii_case(&b'x') && y.eq_ignore_ascii_case(&b'x') =>
            {
                let class = class - b'0';
                if !(1..=5).contains(&class) {
                    return Err(StatusMatchError::Class(class));
                }
                Ok(StatusMatch::Class(class))
            }
            _ => Ok(StatusMatch::Exact(parse_code(s).ok_or_else(syntax)??)),
        }
    }
}

/// Three ASCII digits: `None` if not, `Some(Err)` if outside 100-599.
fn parse_code(s: &str) -> Option<Result<u16, StatusMatchError>> {
    if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code = s.parse().ok()?;
    Some(check_code(code))
}

fn check_code(code: u16) -> Result<u16, StatusMatchError> {
    if (100..=599).contains(&code) {
        Ok(code)
    } else {
        Err(StatusMatchError::Code(code))
    }
}

impl<'de> serde::Deserialize<'de> for StatusMatch {
    /// From a string in any [`FromStr`] form, or from an integer, as YAML reads `expect: 200`.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = StatusMatch;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code (200), class (\"2xx\") or range (\"200-399\")")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<StatusMatch, E> {
                s.parse().map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<StatusMatch, E> {
                let code = u16::try_from(n).unwrap_or(u16::MAX);
                check_code(code)
                    .map(StatusMatch::Exact)
                    .map_err(|_| E::custom(format!("status code {n} is outside 100-599")))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<StatusMatch, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("status code {n} is outside 100-599"))),
                }
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// What a check does over its TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// Passes when the TCP handshake completes.
    Tcp,
    /// Sends a GET and passes when the response's status matches.
    Http {
        /// The origin-form request-target, e.g. `/healthz`.
        path: String,
        /// The Host field; `None` sends the backend's `ip:port`.
        host: Option<String>,
        /// The statuses that pass.
        expect: StatusMatch,
    },
    /// A [`CheckKind::Http`] check over TLS.
    Https {
        /// The origin-form request-target, e.g. `/healthz`.
        path: String,
        /// The Host field; `None` sends the backend's `ip:port`.
        host: Option<String>,
        /// The statuses that pass.
        expect: StatusMatch,
        /// The TLS server name; `None` takes the Host field's name, and sends none when Host
        /// is an IP address or absent (RFC 6066 §3 does not allow addresses).
        sni: Option<String>,
    },
    /// Passes when a TLS handshake completes, then closes with close_notify.
    Tls {
        /// The TLS server name; `None` sends none.
        sni: Option<String>,
    },
}

/// Whether checks of this kind need a TLS client configuration in [`Probe::new`].
pub fn needs_tls(kind: &CheckKind) -> bool {
    matches!(kind, CheckKind::Https { .. } | CheckKind::Tls { .. })
}

/// How one pool checks its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckCfg {
    /// What a check does.
    pub kind: CheckKind,
    /// From the start of one check to the start of the next.
    pub interval: Duration,
    /// How long a check may take, from its start to its decision; at most `interval`.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
}

impl Default for CheckCfg {
    /// A TCP check every 2 s with a 1 s timeout, rise 2, fall 3.
    fn default() -> Self {
        CheckCfg {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

/// Why a [`CheckCfg`] is unusable; the messages are for whoever wrote the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckCfgError {
    /// a zero interval
    #[error("health check interval must be above zero")]
    ZeroInterval,
    /// a zero timeout
    #[error("health check timeout must be above zero")]
    ZeroTimeout,
    /// a timeout longer than the interval
    #[error("health check timeout {timeout:?} is longer than the interval {interval:?}")]
    TimeoutAboveInterval {
        /// The configured timeout.
        timeout: Duration,
        /// The configured interval.
        interval: Duration,
    },
    /// rise or fall of zero
    #[error("health check rise and fall must be at least 1")]
    ZeroRiseFall,
    /// a path that is not an origin-form target
    #[error("health check path {0:?} must start with / and hold only visible ASCII")]
    Path(String),
    /// a Host that is empty or holds spaces or control characters
    #[error("health check host {0:?} must be non-empty visible ASCII")]
    Host(String),
    /// an SNI that is neither a DNS name nor an IP address
    #[error("health check SNI {0:?} is not a DNS name or IP address")]
    Sni(String),
}

impl CheckCfg {
    /// Check what the types cannot say. A [`Probe`] built from a config that fails this never
    /// panics, but may send a malformed request.
    pub fn validate(&self) -> Result<(), CheckCfgError> {
        if self.interval.is_zero() {
            return Err(CheckCfgError::ZeroInterval);
        }
        if self.timeout.is_zero() {
            return Err(CheckCfgError::ZeroTimeout);
        }
        // A longer timeout would overlap checks; the glue would skip slots instead.
        if self.timeout > self.interval {
            return Err(CheckCfgError::TimeoutAboveInterval {
                timeout: self.timeout,
                interval: self.interval,
            });
        }
        if self.rise == 0 || self.fall == 0 {
            return Err(CheckCfgError::ZeroRiseFall);
        }
        let (http, sni) = match &self.kind {
            CheckKind::Tcp => (None, None),
            CheckKind::Http { path, host, .. } => (Some((path, host)), None),
            CheckKind::Https {
                path, host, sni, ..
            } => (Some((path, host)), sni.as_ref()),
            CheckKind::Tls { sni } => (None, sni.as_ref()),
        };
        if let Some((path, host)) = http {
            // Anything else, CR and LF above all, would let the config write into the request.
            let visible = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
            if !path.starts_with('/') || !visible(path) {
                return Err(CheckCfgError::Path(path.clone()));
            }
            if let Some(host) = host.as_ref().filter(|h| !visible(h)) {
                return Err(CheckCfgError::Host(host.clone()));
            }
        }
        if let Some(sni) = sni.filter(|s| ServerName::try_from(s.as_str()).is_err()) {
            return Err(CheckCfgError::Sni(sni.clone()));
        }
        Ok(())
    }
}

/// Where a probe was when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the TCP handshake.
    Connect,
    /// In the TLS handshake.
    Handshake,
    /// Waiting for the HTTP response head.
    Response,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connecting",
            Phase::Handshake => "in the TLS handshake",
            Phase::Response => "awaiting the response head",
        })
    }
}

/// Why a check failed; the message is for logs, [`Failure::label`] for metrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    /// The TCP connection was reset or the backend unreachable.
    #[error("connection refused or unreachable")]
    Refused,
    /// No decision within the timeout.
    #[error("timed out {0}")]
    Timeout(Phase),
    /// An HTTP status the check does not accept.
    #[error("HTTP status {status}, expected {expected}")]
    BadStatus {
        /// The status received.
        status: u16,
        /// The statuses accepted.
        expected: StatusMatch,
    },
    /// A response head that does not parse, or is longer than [`MAX_HEAD`].
    #[error("malformed HTTP response: {0}")]
    BadResponse(http::Error),
    /// The TLS handshake or record layer failed, or the TLS configuration is unusable.
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    /// The backend closed the connection before the check could decide.
    #[error("connection closed {0}")]
    Closed(Phase),
}

impl Failure {
    /// A metric label value, one per variant.
    pub fn label(&self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Timeout(_) => "timeout",
            Failure::BadStatus { .. } => "bad_status",
            Failure::BadResponse(_) => "bad_response",
            Failure::Tls(_) => "tls",
            Failure::Closed(_) => "closed",
        }
    }
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The backend passed.
    Up,
    /// The backend failed, and why.
    Down(Failure),
}

impl Outcome {
    /// Whether the check passed.
    pub fn is_up(&self) -> bool {
        matches!(self, Outcome::Up)
    }
}

/// One check attempt over one TCP connection; see the [module docs](self) for how to drive it.
#[derive(Debug)]
pub struct Probe {
    deadline: Instant,
    phase: Phase,
    /// The request to send and what passes; `None` for TCP and TLS checks.
    http: Option<HttpProbe>,
    /// The TLS client; `None` for TCP and HTTP checks.
    tls: Option<Box<ClientConnection>>,
    /// Bytes for the backend, TLS records when `tls` is set.
    out: Vec<u8>,
    /// The response head received so far, plaintext, at most [`MAX_HEAD`] bytes.
    head: Vec<u8>,
    outcome: Option<Outcome>,
}

#[derive(Debug)]
struct HttpProbe {
    request: Vec<u8>,
    expect: StatusMatch,
}

impl Probe {
    /// Start a check of `backend` at `now`; the glue connects next.
    ///
    /// `tls` is the client configuration of HTTPS and TLS checks, ignored by the others. A
    /// TLS check without one, or whose SNI does not parse, is decided at once as
    /// [`Failure::Tls`]: check [`Probe::outcome`] before connecting.
    pub fn new(
        cfg: &CheckCfg,
        backend: SocketAddrV4,
        tls: Option<Arc<ClientConfig>>,
        now: Instant,
    ) -> Probe {
        let mut probe = Probe {
            deadline: later(now, cfg.timeout),
            phase: Phase::Connect,
            http: None,
            tls: None,
            out: Vec::new(),
            head: Vec::new(),
            outcome: None,
        };
        let (host, sni) = match &cfg.kind {
            CheckKind::Tcp => return probe,
            CheckKind::Http { path, host, expect } => {
                probe.http = Some(HttpProbe::new(path, host.as_deref(), *expect, backend));
                return probe;
            }
            CheckKind::Https {
                path,
                host,
                expect,
                sni,
            } => {
                probe.http = Some(HttpProbe::new(path, host.as_deref(), *expect, backend));
                (host.as_deref(), sni.as_deref())
            }
            CheckKind::Tls { sni } => (None, sni.as_deref()),
        };
        let connection = match tls {
            None => Err(rustls::Error::General(
                "no TLS client configuration".to_owned(),
            )),
            Some(config) => {
                server_name(sni, host, backend).and_then(|name| ClientConnection::new(config, name))
            }
        };
        match connection {
            Ok(connection) => probe.tls = Some(Box::new(connection)),
            Err(error) => probe.outcome = Some(Outcome::Down(Failure::Tls(error))),
        }
        probe
    }

    /// The TCP handshake completed. A TCP check passes; the others start talking.
    pub fn connected(&mut self, now: Instant) {
        if self.settled(now) || self.phase != Phase::Connect {
            return;
        }
        if let Some(mut tls) = self.tls.take() {
            self.phase = Phase::Handshake;
            // The ClientHello has waited in rustls since `new`.
            flush(&mut tls, &mut self.out);
            self.tls = Some(tls);
        } else if let Some(http) = &self.http {
            self.phase = Phase::Response;
            self.out.extend_from_slice(&http.request);
        } else {
            self.outcome = Some(Outcome::Up);
        }
    }

    /// The connection was refused (RST) or the backend is unreachable.
    pub fn connect_failed(&mut self, now: Instant) {
        if !self.settled(now) {
            self.outcome = Some(Outcome::Down(Failure::Refused));
        }
    }

    /// Bytes from the backend; returns how many were consumed, all of them: bytes after a
    /// decision are discarded.
    pub fn recv(&mut self, data: &[u8], now: Instant) -> usize {
        // Data implies the handshake completed, should the glue not have said so.
        if self.phase == Phase::Connect {
            self.connected(now);
        }
        if self.settled(now) {
            return data.len();
        }
        match self.tls.take() {
            Some(mut tls) => {
                self.recv_tls(&mut tls, data);
                self.tls = Some(tls);
            }
            None => self.recv_plain(data),
        }
        data.len()
    }

    /// The backend closed its side (FIN). A check that has not decided fails.
    pub fn eof(&mut self, now: Instant) {
        if self.settled(now) {
            return;
        }
        if self.phase == Phase::Connect {
            self.outcome = Some(Outcome::Down(Failure::Refused));
            return;
        }
        if let Some(mut tls) = self.tls.take() {
            // Reading from an empty slice is how rustls learns of EOF; the plaintext buffer
            // cannot be full, as `drive_tls` empties it, so this cannot fail.
            let _ = tls.read_tls(&mut &[][..]);
            self.drive_tls(&mut tls);
            self.tls = Some(tls);
        }
        let phase = self.phase;
        self.decide(Outcome::Down(Failure::Closed(phase)));
    }

    /// Bytes to send to the backend, in order; report what was sent with [`Probe::consumed`].
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// The first `n` bytes of [`Probe::output`] were sent.
    pub fn consumed(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// When [`Probe::handle_timeout`] must be called if nothing else happens: `timeout`
    /// after the start. Meaningless once decided.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Fail the check if `now` is at or past its deadline and it has not decided.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.settled(now);
    }

    /// The decision, once there is one; it never changes after that. The glue then sends what
    /// [`Probe::output`] still holds, if it can, and closes the connection.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome.clone()
    }

    /// Time out if due; whether the probe has decided.
    fn settled(&mut self, now: Instant) -> bool {
        if self.outcome.is_none() && now >= self.deadline {
            self.outcome = Some(Outcome::Down(Failure::Timeout(self.phase)));
        }
        self.outcome.is_some()
    }

    /// Record `outcome` unless an earlier one stands.
    fn decide(&mut self, outcome: Outcome) {
        self.outcome.get_or_insert(outcome);
    }

    fn recv_plain(&mut self, mut data: &[u8]) {
        while self.outcome.is_none() && !data.is_empty() {
            let take = data.len().min(MAX_HEAD - self.head.len());
            if take == 0 {
                // `parse_head` fails a full head first; this only guards the loop.
                self.decide(Outcome::Down(Failure::BadResponse(
                    http::Error::HeadTooLarge,
                )));
                return;
            }
            let (taken, rest) = data.split_at(take);
            self.head.extend_from_slice(taken);
            data = rest;
            self.parse_head();
        }
    }

    fn recv_tls(&mut self, tls: &mut ClientConnection, mut data: &[u8]) {
        while self.outcome.is_none() && !data.is_empty() {
            match tls.read_tls(&mut data) {
                // Only after the server's close_notify: nothing after it counts.
                Ok(0) => {
                    let phase = self.phase;
                    self.decide(Outcome::Down(Failure::Closed(phase)));
                }
                Ok(_) => self.drive_tls(tls),
                Err(error) => {
                    self.decide(Outcome::Down(Failure::Tls(rustls::Error::General(
                        error.to_string(),
                    ))));
                }
            }
        }
    }

    /// Process TLS records read so far: advance the handshake, send the request, read the
    /// response head.
    fn drive_tls(&mut self, tls: &mut ClientConnection) {
        let processed = tls.process_new_packets();
        // Before deciding: a failed handshake leaves an alert for the server.
        flush(tls, &mut self.out);
        if let Err(error) = processed {
            self.decide(Outcome::Down(Failure::Tls(error)));
            return;
        }
        if self.phase == Phase::Handshake && !tls.is_handshaking() {
            let Some(http) = &self.http else {
                tls.send_close_notify();
                flush(tls, &mut self.out);
                self.decide(Outcome::Up);
                return;
            };
            // Fails only past rustls's 64 KiB send buffer limit, for an absurd path.
            if let Err(error) = tls.writer().write_all(&http.request) {
                self.decide(Outcome::Down(Failure::Tls(rustls::Error::General(
                    error.to_string(),
                ))));
                return;
            }
            flush(tls, &mut self.out);
            self.phase = Phase::Response;
        }
        if self.phase != Phase::Response {
            return;
        }
        let mut buf = [0; 2048];
        while self.outcome.is_none() {
            let room = (MAX_HEAD - self.head.len()).min(buf.len());
            match tls.reader().read(&mut buf[..room]) {
                // `parse_head` fails a full head, so `room` is 0 only after a decision.
                Ok(0) if room == 0 => break,
                Ok(n) if n > 0 => {
                    self.head.extend_from_slice(&buf[..n]);
                    self.parse_head();
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                // Ok(0): close_notify; UnexpectedEof: TCP FIN without it.
                Ok(_) | Err(_) => self.decide(Outcome::Down(Failure::Closed(Phase::Response))),
            }
        }
        if self.outcome.is_some() {
            tls.send_close_notify();
            flush(tls, &mut self.out);
        }
    }

    /// Decide if `head` holds a whole final response head, or cannot become one.
    fn parse_head(&mut self) {
        let Some(http) = &self.http else {
            return;
        };
        let limits = Limits {
            max_head: MAX_HEAD,
            ..Limits::default()
        };
        loop {
            // The parser judges a status line once it ends, and a backend speaking another
            // protocol may never send a CRLF: fail it now rather than at the timeout.
            let start = &self.head[..self.head.len().min(5)];
            if !b"HTTP/".starts_with(start) {
                self.outcome = Some(Outcome::Down(Failure::BadResponse(http::Error::StatusLine)));
                return;
            }
            let (len, code) = match http::parse_response(&self.head, &limits, ResponseTo::Other) {
                Ok(Status::Partial) => return,
                Ok(Status::Complete(len, response)) => (len, response.code),
                Err(error) => {
                    self.outcome = Some(Outcome::Down(Failure::BadResponse(error)));
                    return;
                }
            };
            // RFC 9110 §15.2: "A client MUST be able to parse one or more 1xx responses
            // received prior to a final response, even if the client does not expect one."
            // 101 is final: it switches protocols.
            if (100..200).contains(&code) && code != 101 {
                self.head.drain(..len);
                continue;
            }
            self.outcome = Some(if http.expect.matches(code) {
                Outcome::Up
            } else {
                Outcome::Down(Failure::BadStatus {
                    status: code,
                    expected: http.expect,
                })
            });
            // The head is no longer needed.
            self.head = Vec::new();
            return;
        }
    }
}

impl HttpProbe {
    fn new(path: &str, host: Option<&str>, expect: StatusMatch, backend: SocketAddrV4) -> Self {
        let host = match host {
            Some(host) => host.to_owned(),
            None => backend.to_string(),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n\
             Connection: close\r\nAccept: */*\r\n\r\n"
        );
        HttpProbe {
            request: request.into_bytes(),
            expect,
        }
    }
}

/// Move every TLS record rustls has queued into `out`.
fn flush(tls: &mut ClientConnection, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail; the `Ok(0)` arm only guards the loop.
    while tls.wants_write() {
        match tls.write_tls(out) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// The name to send as SNI and verify the certificate against: `sni`, else the name in
/// `host`, else the backend's address, for which rustls sends no SNI.
fn server_name(
    sni: Option<&str>,
    host: Option<&str>,
    backend: SocketAddrV4,
) -> Result<ServerName<'static>, rustls::Error> {
    if let Some(sni) = sni {
        return ServerName::try_from(sni)
            .map(|name| name.to_owned())
            .map_err(|_| {
                rustls::Error::General(format!("SNI {sni:?} is not a DNS name or IP address"))
            });
    }
    let from_host = host
        .map(strip_port)
        .and_then(|host| ServerName::try_from(host).ok());
    Ok(match from_host {
        Some(name) => name.to_owned(),
        None => ServerName::from(*backend.ip()),
    })
}

/// `host` of `host:port`, `[v6]:port` or `[v6]`; anything else as is.
fn strip_port(host: &str) -> &str {
    if let Some(bracketed) = host.strip_prefix('[') {
        return bracketed.split_once(']').map_or(bracketed, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// `t + d`, saturating: a configured duration can be anything, and `Instant + Duration`
/// panics on overflow.
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).or_else(|| t.checked_add(FAR)).unwrap_or(t)
}

/// A change of a backend's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The backend came up: it may take traffic.
    Up,
    /// The backend went down: it takes no new traffic.
    Down,
}

/// A backend's up/down state, with rise/fall hysteresis over check outcomes.
#[derive(Debug, Clone)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    up: bool,
    /// Consecutive outcomes against the current state.
    streak: u32,
}

impl Tracker {
    /// Track a backend that starts up or down, as the caller decides.
    ///
    /// A backend new to the pool should usually start down (`initially_up = false`), so that
    /// it takes traffic only after `rise` successful checks; starting up suits backends known
    /// to be serving, such as those of a pool reloaded with the same members, or a config that
    /// asks to trust new backends at once. A `rise` or `fall` of 0 counts as 1.
    pub fn new(cfg: &CheckCfg, initially_up: bool) -> Tracker {
        Tracker {
            rise: cfg.rise.max(1),
            fall: cfg.fall.max(1),
            up: initially_up,
            streak: 0,
        }
    }

    /// Count one check's outcome, `ok` if it passed. Returns the transition when this
    /// outcome flips the state: the `rise`-th consecutive success while down, or the
    /// `fall`-th consecutive failure while up. An outcome that agrees with the state resets
    /// the count.
    pub fn record(&mut self, ok: bool) -> Option<Transition> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(if ok { Transition::Up } else { Transition::Down })
    }

    /// Whether the backend may take traffic.
    pub fn is_up(&self) -> bool {
        self.up
    }
}

/// When a backend's checks are due: `first + k * interval`.
///
/// `first` is when the pool was configured plus [`first_delay`].
#[derive(Debug, Clone)]
pub struct Schedule {
    interval: Duration,
    next: Instant,
}

impl Schedule {
    /// The schedule of the checks of `backend`, entry `index` of its pool, for a pool
    /// configured at `now`.
    pub fn new(cfg: &CheckCfg, backend: SocketAddrV4, index: usize, now: Instant) -> Schedule {
        Schedule {
            interval: cfg.interval,
            next: later(now, first_delay(cfg, backend, index)),
        }
    }

    /// When the next check is due.
    pub fn next_due(&self) -> Instant {
        self.next
    }

    /// Whether a check is due at `now`; if so, the slot is taken and the next one set.
    ///
    /// The next slot stays on the grid, however late the poll: a check that took long, or a
    /// slow event loop, does not push later checks back. Slots missed entirely, as when the
    /// glue stalled or skipped a slot because the previous probe was still running, are
    /// dropped, not fired in a burst.
    pub fn poll(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        let interval = self.interval.as_nanos();
        if interval == 0 {
            self.next = now;
            return true;
        }
        let late = now.saturating_duration_since(self.next).as_nanos();
        // At most `late + interval` nanoseconds: the product cannot overflow.
        let advance = (late / interval + 1) * interval;
        self.next = later(
            self.next,
            u64::try_from(advance).map_or(FAR, Duration::from_nanos),
        );
        true
    }
}

/// How long after a pool is configured the first check of `backend`, entry `index` of the
/// pool, is due: in `[0, interval)`, a hash of the address and index.
///
/// It spreads a pool's first checks evenly over the interval, so that 100 backends are not
/// probed in the same millisecond, and a backend always gets the same delay, so runs and
/// tests repeat. The index tells apart two entries with one address.
pub fn first_delay(cfg: &CheckCfg, backend: SocketAddrV4, index: usize) -> Duration {
    let address = u64::from(backend.ip().to_bits()) << 16 | u64::from(backend.port());
    let hash = splitmix64(splitmix64(address) ^ index as u64);
    // `hash * interval / 2^64`: uniform when the hash is, and below the interval.
    // Past u64 nanoseconds (584 years) the interval is as good as infinite.
    let interval = u64::try_from(cfg.interval.as_nanos()).unwrap_or(u64::MAX);
    let nanos = (u128::from(hash) * u128::from(interval)) >> 64;
    Duration::from_nanos(nanos as u64)
}

/// The SplitMix64 finalizer (Steele, Lea and Flood, OOPSLA 2014): every input bit flips
/// about half the output bits, so neighbouring addresses land far apart.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::OnceLock;

    use proptest::prelude::*;
    use rustls::crypto::CryptoProvider;
    use rustls::{RootCertStore, ServerConfig, ServerConnection};

    use super::*;

    const BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 7), 8080);
    const MS: Duration = Duration::from_millis(1);

    fn cfg(kind: CheckKind) -> CheckCfg {
        CheckCfg {
            kind,
            ..CheckCfg::default()
        }
    }

    fn http_kind(path: &str, host: Option<&str>, expect: StatusMatch) -> CheckKind {
        CheckKind::Http {
            path: path.to_owned(),
            host: host.map(str::to_owned),
            expect,
        }
    }

    fn http_cfg() -> CheckCfg {
        cfg(http_kind("/healthz", None, StatusMatch::Class(2)))
    }

    fn down(failure: Failure) -> Option<Outcome> {
        Some(Outcome::Down(failure))
    }

    /// An HTTP probe, connected, its request sent.
    fn http_probe(now: Instant) -> Probe {
        let mut probe = Probe::new(&http_cfg(), BACKEND, None, now);
        probe.connected(now);
        let sent = probe.output().len();
        probe.consumed(sent);
        probe
    }

    #[test]
    fn tcp_connect() {
        let t0 = Instant::now();
        let mut probe = Probe::new(&CheckCfg::default(), BACKEND, None, t0);
        assert_eq!(probe.outcome(), None);
        assert_eq!(probe.deadline(), t0 + Duration::from_secs(1));
        probe.connected(t0 + MS);
        assert_eq!(probe.outcome(), Some(Outcome::Up));
        assert!(probe.output().is_empty());
        // Decided is final.
        probe.eof(t0 + 2 * MS);
        probe.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(probe.outcome(), Some(Outcome::Up));
    }

    #[test]
    fn tcp_refused() {
        let t0 = Instant::now();
        let mut probe = Probe::new(&CheckCfg::default(), BACKEND, None, t0);
        probe.connect_failed(t0 + MS);
        assert_eq!(probe.outcome(), down(Failure::Refused));
        assert_eq!(Failure::Refused.label(), "refused");
    }

    #[test]
    fn tcp_timeout() {
        let t0 = Instant::now();
        let mut probe = Probe::new(&CheckCfg::default(), BACKEND, None, t0);
        probe.handle_timeout(probe.deadline() - MS);
        assert_eq!(probe.outcome(), None);
        // An event at the deadline is too late.
        probe.connected(probe.deadline());
        assert_eq!(probe.outcome(), down(Failure::Timeout(Phase::Connect)));
        assert_eq!(
            Failure::Timeout(Phase::Connect).to_string(),
            "timed out connecting"
        );
    }

    #[test]
    fn http_request_bytes() {
        let t0 = Instant::now();
        let mut probe = Probe::new(&http_cfg(), BACKEND, None, t0);
        assert!(probe.output().is_empty(), "nothing before the handshake");
        probe.connected(t0);
        assert_eq!(
            probe.output(),
            b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.7:8080\r\nUser-Agent: vnf-lb-health\r\n\
              Connection: close\r\nAccept: */*\r\n\r\n"
        );
        probe.consumed(4);
        assert!(probe.output().starts_with(b"/healthz "));
        probe.consumed(usize::MAX);
        assert!(probe.output().is_empty());

        let host = cfg(http_kind("/", Some("app.example"), StatusMatch::Class(2)));
        let mut probe = Probe::new(&host, BACKEND, None, t0);
        probe.connected(t0);
        assert!(
            probe
                .output()
                .starts_with(b"GET / HTTP/1.1\r\nHost: app.example\r\n")
        );
    }

    #[test]
    fn http_200_up_without_waiting_for_the_body() {
        let t0 = Instant::now();
        let mut probe = http_probe(t0);
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\nstart of body";
        assert_eq!(probe.recv(response, t0 + MS), response.len());
        assert_eq!(probe.outcome(), Some(Outcome::Up));
        // More body and the close change nothing.
        assert_eq!(probe.recv(b"more", t0 + 2 * MS), 4);
        probe.eof(t0 + 3 * MS);
        assert_eq!(probe.outcome(), Some(Outcome::Up));
    }

    #[test]
    fn http_500_down_with_the_status() {
        let t0 = Instant::now();
        let mut probe = http_probe(t0);
        probe.recv(b"HTTP/1.1 500 Internal Server Error\r\n\r\n", t0);
        let failure = Failure::BadStatus {
            status: 500,
            expected: StatusMatch::Class(2),
        };
        assert_eq!(probe.outcome(), down(failure.clone()));
        assert_eq!(failure.to_string(), "HTTP status 500, expected 2xx");
        assert_eq!(failure.label(), "bad_status");
    }

    #[test]
    fn http_expect_range_and_exact() {
        let t0 = Instant::now();
        for (expect, code, up) in [
            ("200-399", "302", true),
            ("200-399", "404", false),
            ("204", "204", true),
            ("204", "200", false),
            ("3xx", "301", true),
        ] {
            let cfg = cfg(http_kind("/", None, expect.parse().unwrap()));
            let mut probe = Probe::new(&cfg, BACKEND, None, t0);
            probe.connected(t0);
            probe.recv(format!("HTTP/1.1 {code} X\r\n\r\n").as_bytes(), t0);
            assert_eq!(
                probe.outcome().map(|o| o.is_up()),
                Some(up),
                "{expect} {code}"
            );
        }
    }

    #[test]
    fn http_garbage_is_bad_response() {
        let t0 = Instant::now();
        for garbage in [
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
            b"HTTP/1.1 200 OK\n\n",
            b"HTTP/1.1 999 Nope\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        ] {
            let mut probe = http_probe(t0);
            probe.recv(garbage, t0);
            assert!(
                matches!(
                    probe.outcome(),
                    Some(Outcome::Down(Failure::BadResponse(_)))
                ),
                "{garbage:?}: {:?}",
                probe.outcome()
            );
        }
        let failure = Failure::BadResponse(http::Error::StatusLine);
        assert_eq!(
            failure.to_string(),
            "malformed HTTP response: malformed status-line or status code outside 100..=599"
        );
    }

    #[test]
    fn http_head_is_bounded() {
        let t0 = Instant::now();
        let mut probe = http_probe(t0);
        probe.recv(b"HTTP/1.1 200 OK\r\n", t0);
        let field = format!("X-Padding: {}\r\n", "a".repeat(200));
        let fields = MAX_HEAD / field.len();
        for _ in 0..fields {
            probe.recv(field.as_bytes(), t0);
        }
        assert_eq!(probe.outcome(), None, "{fields} fields fit");
        probe.recv(field.as_bytes(), t0);
        assert_eq!(
            probe.outcome(),
            down(Failure::BadResponse(http::Error::HeadTooLarge))
        );

        // One unending line, in one call.
        let mut probe = http_probe(t0);
        let line = format!("HTTP/1.1 200 {}", "a".repeat(3 * MAX_HEAD));
        assert_eq!(probe.recv(line.as_bytes(), t0), line.len());
        assert!(matches!(
            probe.outcome(),
            Some(Outcome::Down(Failure::BadResponse(_)))
        ));
        assert!(probe.head.len() <= MAX_HEAD);
    }

    #[test]
    fn http_head_split_across_many_recvs() {
        let response = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Type: text/plain\r\n\r\nok";
        let head_len = response.len() - 2;
        let t0 = Instant::now();
        let mut probe = http_probe(t0);
        for (i, byte) in response.iter().enumerate() {
            probe.recv(&[*byte], t0 + MS);
            let decided = probe.outcome().is_some();
            assert_eq!(decided, i + 1 >= head_len, "after byte {i}");
        }
        assert_eq!(probe.outcome(), Some(Outcome::Up));
    }

    #[test]
    fn http_skips_interim_responses() {
        let t0 = Instant::now();
        let mut probe = http_probe(t0);
        probe.recv(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n",
            t0,
        );
        probe.recv(b"Link: </s.css>; rel=preload\r\n\r\n", t0);
        assert_eq!(probe.outcome(), None);
        probe.recv(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", t0);
        assert!(matches!(
            probe.outcome(),
            Some(Outcome::Down(Failure::BadStatus { status: 503, .. }))
        ));
    }

    #[test]
    fn http_timeout_and_close() {
        let t0 = Instant::now();
        let mut probe = http_probe(t0);
        probe.recv(b"HTTP/1.1 200 OK\r\n", t0 + MS);
        probe.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(probe.outcome(), down(Failure::Timeout(Phase::Response)));

        // A whole response after the deadline still times out.
        let mut probe = http_probe(t0);
        probe.recv(b"HTTP/1.1 200 OK\r\n\r\n", t0 + Duration::from_secs(2));
        assert_eq!(probe.outcome(), down(Failure::Timeout(Phase::Response)));

        let mut probe = http_probe(t0);
        probe.recv(b"HTTP/1.1 200 OK\r\n", t0 + MS);
        probe.eof(t0 + 2 * MS);
        let failure = Failure::Closed(Phase::Response);
        assert_eq!(probe.outcome(), down(failure.clone()));
        assert_eq!(
            failure.to_string(),
            "connection closed awaiting the response head"
        );
    }

    #[test]
    fn status_match_parses() {
        let cases = [
            ("200", StatusMatch::Exact(200)),
            ("599", StatusMatch::Exact(599)),
            ("2xx", StatusMatch::Class(2)),
            ("5XX", StatusMatch::Class(5)),
            ("4xX", StatusMatch::Class(4)),
            ("200-399", StatusMatch::Range(200, 399)),
            ("204-204", StatusMatch::Range(204, 204)),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<StatusMatch>(), Ok(want), "{s}");
            assert_eq!(want.to_string().parse::<StatusMatch>(), Ok(want));
        }
        assert_eq!(StatusMatch::Class(5).to_string(), "5xx");
        assert_eq!(StatusMatch::Range(200, 399).to_string(), "200-399");
        assert_eq!(StatusMatch::default(), StatusMatch::Class(2));
    }

    #[test]
    fn status_match_errors() {
        let cases = [
            (
                "",
                "`` is not a status code (200), class (2xx) or range (200-399)",
            ),
            (
                "ok",
                "`ok` is not a status code (200), class (2xx) or range (200-399)",
            ),
            (
                " 200",
                "` 200` is not a status code (200), class (2xx) or range (200-399)",
            ),
            (
                "2x",
                "`2x` is not a status code (200), class (2xx) or range (200-399)",
            ),
            (
                "2xy",
                "`2xy` is not a status code (200), class (2xx) or range (200-399)",
            ),
            (
                "200-",
                "`200-` is not a status code (200), class (2xx) or range (200-399)",
            ),
            ("099", "status code 99 is outside 100-599"),
            ("600", "status code 600 is outside 100-599"),
            ("200-600", "status code 600 is outside 100-599"),
            (
                "6xx",
                "status class 6xx does not exist: classes are 1xx to 5xx",
            ),
            (
                "0xx",
                "status class 0xx does not exist: classes are 1xx to 5xx",
            ),
            ("399-200", "status range 399-200 is empty: 399 is above 200"),
        ];
        for (s, message) in cases {
            let error = s.parse::<StatusMatch>().unwrap_err();
            assert_eq!(error.to_string(), message, "{s:?}");
        }
    }

    #[test]
    fn status_match_deserializes_from_strings_and_integers() {
        let parse = serde_json::from_str::<StatusMatch>;
        assert_eq!(parse("\"2xx\"").unwrap(), StatusMatch::Class(2));
        assert_eq!(parse("\"200-299\"").unwrap(), StatusMatch::Range(200, 299));
        assert_eq!(parse("204").unwrap(), StatusMatch::Exact(204));
        let error = parse("700").unwrap_err().to_string();
        assert!(
            error.contains("status code 700 is outside 100-599"),
            "{error}"
        );
        assert!(parse("-1").is_err());
        assert!(parse("\"7xx\"").is_err());
        assert!(parse("true").is_err());
    }

    #[test]
    fn status_match_matches() {
        assert!(StatusMatch::Class(2).matches(200));
        assert!(StatusMatch::Class(2).matches(299));
        assert!(!StatusMatch::Class(2).matches(300));
        assert!(!StatusMatch::Class(2).matches(199));
        assert!(StatusMatch::Range(200, 399).matches(399));
        assert!(!StatusMatch::Range(200, 399).matches(400));
        assert!(StatusMatch::Exact(418).matches(418));
    }

    #[test]
    fn config_defaults_and_validation() {
        let default = CheckCfg::default();
        assert_eq!(default.kind, CheckKind::Tcp);
        assert_eq!(default.interval, Duration::from_secs(2));
        assert_eq!(default.timeout, Duration::from_secs(1));
        assert_eq!((default.rise, default.fall), (2, 3));
        assert_eq!(default.validate(), Ok(()));
        assert!(!needs_tls(&default.kind));
        assert!(!needs_tls(&http_cfg().kind));
        assert!(needs_tls(&https(None, None)));
        assert!(needs_tls(&CheckKind::Tls { sni: None }));
        assert_eq!(http_cfg().validate(), Ok(()));

        let bad_http = |path: &str, host: Option<&str>| {
            cfg(http_kind(path, host, StatusMatch::Class(2))).validate()
        };
        assert_eq!(
            bad_http("/a\r\nX: y", None),
            Err(CheckCfgError::Path("/a\r\nX: y".to_owned()))
        );
        assert_eq!(
            bad_http("healthz", None),
            Err(CheckCfgError::Path("healthz".to_owned()))
        );
        assert_eq!(
            bad_http("/", Some("a b")),
            Err(CheckCfgError::Host("a b".to_owned()))
        );
        assert_eq!(
            bad_http("/", Some("")),
            Err(CheckCfgError::Host(String::new()))
        );
        let sni = cfg(CheckKind::Tls {
            sni: Some("bad name!".to_owned()),
        });
        assert_eq!(
            sni.validate(),
            Err(CheckCfgError::Sni("bad name!".to_owned()))
        );
        let slow = CheckCfg {
            timeout: Duration::from_secs(3),
            ..CheckCfg::default()
        };
        assert!(matches!(
            slow.validate(),
            Err(CheckCfgError::TimeoutAboveInterval { .. })
        ));
        let zero = CheckCfg {
            rise: 0,
            ..CheckCfg::default()
        };
        assert_eq!(zero.validate(), Err(CheckCfgError::ZeroRiseFall));
        let zero = CheckCfg {
            interval: Duration::ZERO,
            ..CheckCfg::default()
        };
        assert_eq!(zero.validate(), Err(CheckCfgError::ZeroInterval));
    }

    #[test]
    fn huge_durations_do_not_panic() {
        let t0 = Instant::now();
        let cfg = CheckCfg {
            interval: Duration::MAX,
            timeout: Duration::MAX,
            ..CheckCfg::default()
        };
        let mut probe = Probe::new(&cfg, BACKEND, None, t0);
        assert!(probe.deadline() > t0);
        probe.handle_timeout(t0 + Duration::from_secs(3600));
        assert_eq!(probe.outcome(), None);
        let mut schedule = Schedule::new(&cfg, BACKEND, 0, t0);
        let due = schedule.next_due();
        assert!(schedule.poll(due));
        assert!(!schedule.poll(due));

        let zero = CheckCfg {
            interval: Duration::ZERO,
            timeout: Duration::ZERO,
            ..CheckCfg::default()
        };
        let mut schedule = Schedule::new(&zero, BACKEND, 0, t0);
        assert!(schedule.poll(t0));
        let mut probe = Probe::new(&zero, BACKEND, None, t0);
        probe.connected(t0);
        assert_eq!(probe.outcome(), down(Failure::Timeout(Phase::Connect)));
    }

    fn results(tracker: &mut Tracker, outcomes: &str) -> Vec<Option<Transition>> {
        outcomes
            .bytes()
            .map(|b| tracker.record(b == b'+'))
            .collect()
    }

    #[test]
    fn tracker_rise_and_fall() {
        let cfg = CheckCfg::default(); // rise 2, fall 3
        let mut tracker = Tracker::new(&cfg, false);
        assert!(!tracker.is_up());
        assert_eq!(results(&mut tracker, "++"), [None, Some(Transition::Up)]);
        assert!(tracker.is_up());
        assert_eq!(
            results(&mut tracker, "+---"),
            [None, None, None, Some(Transition::Down)]
        );
        assert!(!tracker.is_up());
        // Failures while down and successes while up change nothing.
        assert_eq!(results(&mut tracker, "----"), [None; 4]);
        assert_eq!(
            results(&mut tracker, "+++"),
            [None, Some(Transition::Up), None]
        );

        let mut tracker = Tracker::new(&cfg, true);
        assert!(tracker.is_up());
        assert_eq!(
            results(&mut tracker, "---"),
            [None, None, Some(Transition::Down)]
        );
    }

    #[test]
    fn tracker_flapping() {
        let cfg = CheckCfg::default();
        // Up, flapping: never three failures in a row, so it stays up.
        let mut tracker = Tracker::new(&cfg, true);
        assert_eq!(results(&mut tracker, "-+-+--+--+-+"), [None; 12]);
        assert!(tracker.is_up());
        // Down, flapping: never two successes in a row, so it stays down.
        let mut tracker = Tracker::new(&cfg, false);
        assert_eq!(results(&mut tracker, "+-+-+-+-"), [None; 8]);
        assert!(!tracker.is_up());
        // Rise and fall of 1 follow every change.
        let every = CheckCfg {
            rise: 1,
            fall: 1,
            ..CheckCfg::default()
        };
        let mut tracker = Tracker::new(&every, false);
        assert_eq!(
            results(&mut tracker, "+-+"),
            [
                Some(Transition::Up),
                Some(Transition::Down),
                Some(Transition::Up)
            ]
        );
        // Zero counts as one.
        let zero = CheckCfg {
            rise: 0,
            fall: 0,
            ..CheckCfg::default()
        };
        let mut tracker = Tracker::new(&zero, false);
        assert_eq!(results(&mut tracker, "+"), [Some(Transition::Up)]);
    }

    #[test]
    fn schedule_spreads_first_checks() {
        let t0 = Instant::now();
        let cfg = CheckCfg::default();
        let mut offsets: Vec<Duration> = (1..=100)
            .map(|i| {
                let backend = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i), 80);
                Schedule::new(&cfg, backend, usize::from(i), t0).next_due() - t0
            })
            .collect();
        assert!(offsets.iter().all(|&o| o < cfg.interval));
        // Ten slices of 200 ms, each within half of its share of 10.
        let mut slices = [0; 10];
        for offset in &offsets {
            slices[(offset.as_millis() / 200) as usize] += 1;
        }
        assert!(slices.iter().all(|&n| (5..=15).contains(&n)), "{slices:?}");
        // Hardly any two in the same millisecond.
        offsets.sort();
        let same_ms = offsets.windows(2).filter(|w| w[1] - w[0] < MS).count();
        assert!(same_ms <= 5, "{same_ms} pairs within 1 ms");
        // Deterministic; ports matter too.
        let a = Schedule::new(&cfg, BACKEND, 0, t0).next_due();
        assert_eq!(Schedule::new(&cfg, BACKEND, 0, t0).next_due(), a);
        let other_port = SocketAddrV4::new(*BACKEND.ip(), 8081);
        assert_ne!(Schedule::new(&cfg, other_port, 0, t0).next_due(), a);
    }

    #[test]
    fn schedule_keeps_a_fixed_period() {
        let t0 = Instant::now();
        let cfg = CheckCfg::default();
        let interval = cfg.interval;
        let mut schedule = Schedule::new(&cfg, BACKEND, 0, t0);
        let first = schedule.next_due();
        assert!(!schedule.poll(first - MS));
        assert!(schedule.poll(first));
        assert_eq!(schedule.next_due(), first + interval);
        assert!(!schedule.poll(first + 300 * MS));
        // A late poll does not shift the grid.
        assert!(schedule.poll(first + interval + 300 * MS));
        assert_eq!(schedule.next_due(), first + 2 * interval);
        // A stall of several intervals fires once and skips to the next slot ahead.
        let now = first + 5 * interval + MS;
        assert!(schedule.poll(now));
        assert_eq!(schedule.next_due(), first + 6 * interval);
        assert!(!schedule.poll(now));
    }

    // TLS: an in-memory rustls server with a self-signed certificate from the openssl CLI.

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// The health checks' own client config: any certificate, handshake signatures checked.
    fn insecure_client() -> Arc<ClientConfig> {
        crate::tls::insecure_client_config()
    }

    /// Trusts nothing: every server certificate is from an unknown issuer.
    fn strict_client() -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        Arc::new(config)
    }

    fn server_config() -> Arc<ServerConfig> {
        static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
        CONFIG
            .get_or_init(|| {
                let dir = tempfile::TempDir::new().unwrap();
                let spec = crate::tls::testcert::generate(dir.path(), "b", "b.example", &[]);
                let store = crate::tls::CertStore::load(&[spec]).unwrap();
                crate::tls::server_config(Arc::new(store))
            })
            .clone()
    }

    /// A probe connected to an in-memory TLS server.
    struct Pair {
        probe: Probe,
        server: ServerConnection,
        /// Plaintext the server received.
        request: Vec<u8>,
        /// Set once the server read the probe's close_notify.
        closed: bool,
        server_error: Option<rustls::Error>,
        now: Instant,
    }

    impl Pair {
        fn new(kind: CheckKind, client: Arc<ClientConfig>) -> Pair {
            let now = Instant::now();
            let mut probe = Probe::new(&cfg(kind), BACKEND, Some(client), now);
            assert_eq!(probe.outcome(), None);
            probe.connected(now);
            Pair {
                probe,
                server: ServerConnection::new(server_config()).unwrap(),
                request: Vec::new(),
                closed: false,
                server_error: None,
                now,
            }
        }

        /// Move bytes both ways until neither side has any, delivering the server's in
        /// pieces of `chunk` bytes.
        fn run(&mut self, chunk: usize) {
            loop {
                let mut moved = false;
                let out = self.probe.output().to_vec();
                self.probe.consumed(out.len());
                if !out.is_empty() && self.server_error.is_none() {
                    moved = true;
                    let mut rest = &out[..];
                    while !rest.is_empty() {
                        self.server.read_tls(&mut rest).unwrap();
                        if let Err(error) = self.server.process_new_packets() {
                            self.server_error = Some(error);
                            break;
                        }
                    }
                    let mut buf = [0; 1024];
                    loop {
                        match self.server.reader().read(&mut buf) {
                            Ok(0) => {
                                self.closed = true;
                                break;
                            }
                            Ok(n) => self.request.extend_from_slice(&buf[..n]),
                            Err(_) => break,
                        }
                    }
                }
                let mut wire = Vec::new();
                while self.server.wants_write() {
                    self.server.write_tls(&mut wire).unwrap();
                }
                for piece in wire.chunks(chunk) {
                    moved = true;
                    assert_eq!(self.probe.recv(piece, self.now), piece.len());
                }
                if !moved {
                    return;
                }
            }
        }

        fn respond(&mut self, response: &[u8], chunk: usize) {
            self.server.writer().write_all(response).unwrap();
            self.run(chunk);
        }
    }

    fn https(host: Option<&str>, sni: Option<&str>) -> CheckKind {
        CheckKind::Https {
            path: "/ready".to_owned(),
            host: host.map(str::to_owned),
            expect: StatusMatch::Class(2),
            sni: sni.map(str::to_owned),
        }
    }

    #[test]
    fn https_200_up() {
        for chunk in [usize::MAX, 1] {
            let mut pair = Pair::new(https(None, None), insecure_client());
            pair.run(chunk);
            assert_eq!(pair.probe.outcome(), None);
            assert_eq!(
                pair.request,
                b"GET /ready HTTP/1.1\r\nHost: 10.0.0.7:8080\r\nUser-Agent: vnf-lb-health\r\n\
                  Connection: close\r\nAccept: */*\r\n\r\n"
            );
            assert_eq!(pair.server.server_name(), None, "no SNI for an address");
            pair.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", chunk);
            assert_eq!(pair.probe.outcome(), Some(Outcome::Up), "chunk {chunk}");
            assert!(pair.closed, "close_notify sent");
        }
    }

    #[test]
    fn https_503_down() {
        let mut pair = Pair::new(https(None, None), insecure_client());
        pair.run(usize::MAX);
        pair.respond(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", 7);
        assert_eq!(
            pair.probe.outcome(),
            down(Failure::BadStatus {
                status: 503,
                expected: StatusMatch::Class(2)
            })
        );
    }

    #[test]
    fn https_close_before_the_head() {
        let mut pair = Pair::new(https(None, None), insecure_client());
        pair.run(usize::MAX);
        pair.server.writer().write_all(b"HTTP/1.1 200").unwrap();
        pair.server.send_close_notify();
        pair.run(usize::MAX);
        assert_eq!(pair.probe.outcome(), down(Failure::Closed(Phase::Response)));

        let mut pair = Pair::new(https(None, None), insecure_client());
        pair.run(usize::MAX);
        pair.probe.eof(pair.now);
        assert_eq!(pair.probe.outcome(), down(Failure::Closed(Phase::Response)));
    }

    #[test]
    fn https_sni() {
        let cases = [
            (None, None, None),
            (Some("10.1.2.3:443"), None, None),
            (Some("b.example"), None, Some("b.example")),
            (Some("b.example:8443"), None, Some("b.example")),
            (Some("b.example"), Some("sni.example"), Some("sni.example")),
            (None, Some("sni.example"), Some("sni.example")),
        ];
        for (host, sni, want) in cases {
            let mut pair = Pair::new(https(host, sni), insecure_client());
            pair.run(usize::MAX);
            assert_eq!(pair.server.server_name(), want, "host {host:?} sni {sni:?}");
            if let Some(host) = host {
                let field = format!("\r\nHost: {host}\r\n");
                assert!(
                    pair.request
                        .windows(field.len())
                        .any(|w| w == field.as_bytes())
                );
            }
        }
    }

    #[test]
    fn tls_handshake_up_then_close_notify() {
        let mut pair = Pair::new(CheckKind::Tls { sni: None }, insecure_client());
        pair.run(usize::MAX);
        assert_eq!(pair.probe.outcome(), Some(Outcome::Up));
        assert!(pair.closed);
        assert!(pair.request.is_empty());
        assert_eq!(pair.server.server_name(), None);

        let sni = CheckKind::Tls {
            sni: Some("b.example".to_owned()),
        };
        let mut pair = Pair::new(sni, insecure_client());
        pair.run(1);
        assert_eq!(pair.probe.outcome(), Some(Outcome::Up));
        assert_eq!(pair.server.server_name(), Some("b.example"));
    }

    #[test]
    fn tls_untrusted_certificate() {
        let mut pair = Pair::new(CheckKind::Tls { sni: None }, strict_client());
        pair.run(usize::MAX);
        let Some(Outcome::Down(failure)) = pair.probe.outcome() else {
            panic!("{:?}", pair.probe.outcome());
        };
        let Failure::Tls(error) = &failure else {
            panic!("{failure:?}");
        };
        assert!(
            matches!(error, rustls::Error::InvalidCertificate(_)),
            "{error:?}"
        );
        assert_eq!(failure.label(), "tls");
        // The alert reached the server.
        assert!(pair.server_error.is_some());
    }

    #[test]
    fn tls_timeout_close_and_garbage() {
        let t0 = Instant::now();
        let tls = CheckKind::Tls { sni: None };
        let mut probe = Probe::new(&cfg(tls.clone()), BACKEND, Some(insecure_client()), t0);
        probe.connected(t0);
        assert!(probe.output().starts_with(&[0x16, 0x03]), "a ClientHello");
        probe.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(probe.outcome(), down(Failure::Timeout(Phase::Handshake)));

        let mut probe = Probe::new(&cfg(tls.clone()), BACKEND, Some(insecure_client()), t0);
        probe.connected(t0);
        probe.eof(t0);
        assert_eq!(probe.outcome(), down(Failure::Closed(Phase::Handshake)));

        let mut probe = Probe::new(&cfg(tls), BACKEND, Some(insecure_client()), t0);
        probe.connected(t0);
        probe.recv(b"HTTP/1.1 400 Bad Request\r\n\r\n", t0);
        assert!(matches!(
            probe.outcome(),
            Some(Outcome::Down(Failure::Tls(_)))
        ));
    }

    #[test]
    fn tls_without_config_fails_at_once() {
        let t0 = Instant::now();
        for kind in [https(None, None), CheckKind::Tls { sni: None }] {
            let probe = Probe::new(&cfg(kind), BACKEND, None, t0);
            assert!(matches!(
                probe.outcome(),
                Some(Outcome::Down(Failure::Tls(_)))
            ));
        }
        let bad_sni = CheckKind::Tls {
            sni: Some("not a name".to_owned()),
        };
        let probe = Probe::new(&cfg(bad_sni), BACKEND, Some(insecure_client()), t0);
        assert!(matches!(
            probe.outcome(),
            Some(Outcome::Down(Failure::Tls(_)))
        ));
    }

    #[test]
    fn host_ports_are_stripped() {
        assert_eq!(strip_port("a.example:80"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:443"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("a:b"), "a:b");
    }

    /// Feed `chunks` to `probe` with events in between; the outcome, once set, must stay.
    fn feed(mut probe: Probe, chunks: &[Vec<u8>], eof: bool) {
        let t0 = Instant::now();
        probe.connected(t0);
        let mut decided: Option<Outcome> = None;
        for chunk in chunks {
            assert_eq!(probe.recv(chunk, t0 + MS), chunk.len());
            let sent = probe.output().len();
            probe.consumed(sent / 2);
            assert!(probe.head.len() <= MAX_HEAD);
            if decided.is_some() {
                assert_eq!(probe.outcome(), decided);
            }
            decided = probe.outcome();
        }
        if eof {
            probe.eof(t0 + 2 * MS);
            assert!(probe.outcome().is_some());
        }
        probe.handle_timeout(t0 + Duration::from_secs(1));
        assert!(probe.outcome().is_some());
        if decided.is_some() {
            assert_eq!(probe.outcome(), decided);
        }
    }

    /// Pieces of response heads: status lines, fields, empty lines, in any order.
    const NEAR_HTTP: &str = concat!(
        "(HTTP/1\\.[01] [0-9]{3} [A-Za-z ]{0,8}\r\n)?",
        "([A-Za-z-]{1,8}: ?[ -~]{0,12}\r\n){0,4}(\r\n)?",
    );

    proptest! {
        #[test]
        fn http_probe_never_panics(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16),
            eof in any::<bool>(),
        ) {
            feed(Probe::new(&http_cfg(), BACKEND, None, Instant::now()), &chunks, eof);
        }

        #[test]
        fn http_probe_never_panics_on_near_http(
            chunks in prop::collection::vec(NEAR_HTTP, 0..4),
            eof in any::<bool>(),
        ) {
            let chunks: Vec<Vec<u8>> = chunks.into_iter().map(String::into_bytes).collect();
            feed(Probe::new(&http_cfg(), BACKEND, None, Instant::now()), &chunks, eof);
        }

        #[test]
        fn tls_probe_never_panics(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8),
            eof in any::<bool>(),
        ) {
            let probe = Probe::new(
                &cfg(https(None, None)), BACKEND, Some(insecure_client()), Instant::now(),
            );
            feed(probe, &chunks, eof);
        }
    }
}
