//! One client connection of the HTTP/1.1 reverse proxy, as a sans-IO state machine.
//!
//! The glue owns the sockets (the client's, in the LB's smoltcp stack, and one backend
//! connection at a time) and the clock. [`ProxyConn`] owns the rest: TLS termination, parsing
//! with [`crate::http`], routing, rewriting heads, relaying bodies, keep-alive, timeouts and the
//! error responses a proxy answers with. Every call hands it bytes or an event and `now`; it
//! leaves bytes to write and decisions to act on.
//!
//! # What the glue does
//!
//! After every call into a `ProxyConn`, in this order:
//!
//! 1. write [`ProxyConn::client_output`] to the client socket and report how much was taken
//!    with [`ProxyConn::client_consumed`];
//! 2. if it holds a backend socket: write [`ProxyConn::backend_output`], report it with
//!    [`ProxyConn::backend_consumed`]; then, if [`ProxyConn::backend_should_close`], close
//!    that socket (FIN) and forget it;
//! 3. if [`ProxyConn::backend_wanted`] returns `Some(pool)`: close and forget any backend
//!    socket still held, pick a backend of `pool` and connect to it, then report
//!    [`ProxyConn::backend_connected`], [`ProxyConn::backend_unavailable`] (no healthy backend)
//!    or [`ProxyConn::backend_failed`];
//! 4. drain [`ProxyConn::take_events`];
//! 5. if [`ProxyConn::client_should_close`] and `client_output()` is empty, close the client
//!    socket; once [`ProxyConn::is_done`], drop the `ProxyConn` and any backend socket;
//! 6. (re)arm one timer at [`ProxyConn::poll_timeout`] and call [`ProxyConn::handle_timeout`]
//!    when it fires.
//!
//! A client connection reset goes to [`ProxyConn::client_failed`], a backend one to
//! [`ProxyConn::backend_failed`]; a FIN to [`ProxyConn::client_eof`] or
//! [`ProxyConn::backend_eof`]. A closing socket should drain what it still receives (a
//! "lingering close"): `client_recv` takes and drops everything once closing.
//!
//! Received bytes go to [`ProxyConn::client_recv`] and [`ProxyConn::backend_recv`]; what they
//! do not consume stays in the socket (backpressure) and is offered again after any later call.
//! Backend events always refer to the one backend socket the glue holds.
//!
//! # Design
//!
//! - One request at a time. Pipelined requests (RFC 9112 §9.3.2) wait in the client input
//!   buffer until the exchange before them has ended; when the buffer is full, `client_recv`
//!   consumes nothing more.
//! - Every buffer has a fixed cap: client and backend input hold at most
//!   `max(limits.max_head, 16 KiB)`, backend and client output 64 KiB of relayed data (plus
//!   one head). Nothing grows with what a peer sends beyond these caps; buffers of an idle
//!   keep-alive connection are freed.
//! - Bodies are relayed as received, framing included: Content-Length bytes exactly, chunked
//!   bodies byte for byte while a [`ChunkedDecoder`] checks them, so that a request we could not
//!   frame is never forwarded (RFC 9112 §11.2). The one rewrite is a chunked response to an
//!   HTTP/1.0 client, which cannot read chunked (RFC 9112 §7): it is decoded and close-delimited.
//! - Heads are rewritten: the version becomes ours, HTTP/1.1 (RFC 9110 §6.2: a proxy "MUST send
//!   its own HTTP-version in forwarded messages"), hop-by-hop fields are removed (RFC 9110
//!   §7.6.1), and requests get `X-Forwarded-For` and `X-Forwarded-Proto`.
//! - Events are the metrics' input: one [`Event::Request`] for every request routed to a pool,
//!   [`Event::ClientError`] for every error response caused by the client's request (whether or
//!   not it was routed), [`Event::Timeout`] for every timer that fired, [`Event::TlsHandshake`]
//!   once per TLS connection.

use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ProtocolVersion, ServerConfig, ServerConnection};

use crate::http::{
    self, ChunkedDecoder, Framing, Header, Limits, Request, Response, ResponseTo, Status, Target,
    Version,
};

/// Cap on relayed bytes waiting in each output buffer (to the backend, to the client).
const OUT_CAP: usize = 64 * 1024;

/// Smallest cap of each input buffer; the cap is at least the head limit, so that a head up to
/// the limit always fits.
const MIN_IN_CAP: usize = 16 * 1024;

/// One routing rule: requests for `host` (any host if `None`) whose path starts with
/// `path_prefix` go to backend pool `pool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The host to match, without port, compared case-insensitively; `None` matches any.
    pub host: Option<String>,
    /// A path prefix matched segment by segment: `/api` matches `/api` and `/api/x`, not
    /// `/apix`; `/` and the empty prefix match every path. The raw path is compared, with no
    /// percent-decoding or dot-segment removal, as HAProxy's `path_beg` does.
    pub path_prefix: String,
    /// The index of the backend pool.
    pub pool: usize,
}

impl Route {
    /// Whether a request for `host` (a Host value, possibly with a port) and `path` (no query)
    /// matches this route.
    pub fn matches(&self, host: Option<&[u8]>, path: &str) -> bool {
        let host_ok = match &self.host {
            None => true,
            Some(want) => host.is_some_and(|host| {
                let host = host_without_port(host);
                let host = host.strip_suffix(b".").unwrap_or(host);
                let want = want.strip_suffix('.').unwrap_or(want);
                host.eq_ignore_ascii_case(want.as_bytes())
            }),
        };
        let prefix = self.path_prefix.as_str();
        host_ok
            && path.starts_with(prefix)
            && (prefix.is_empty()
                || prefix.ends_with('/')
                || matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
    }
}

/// `uri-host [":" port]` -> `uri-host`; an IP-literal keeps its brackets.
fn host_without_port(host: &[u8]) -> &[u8] {
    if host.starts_with(b"[") {
        match host.iter().position(|&b| b == b']') {
            Some(close) => &host[..=close],
            None => host,
        }
    } else {
        match host.iter().position(|&b| b == b':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    }
}

/// How long the proxy waits for each thing; the defaults are HAProxy-like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the connection's start (TLS handshake included), or from the first byte of a later
    /// request, to its whole head: then 408 (RFC 9110 §15.5.9).
    pub client_header: Duration,
    /// Between requests on a keep-alive connection: then close silently.
    pub client_idle: Duration,
    /// From asking for a backend to its TCP handshake completing: then 504.
    pub backend_connect: Duration,
    /// From the request fully handed to the backend to the final response head: then 504.
    pub backend_response: Duration,
    /// Without progress while a body is relayed (either way), or while a closing connection's
    /// last bytes wait for the client to read them.
    pub body_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            client_header: Duration::from_secs(10),
            client_idle: Duration::from_secs(60),
            backend_connect: Duration::from_secs(3),
            backend_response: Duration::from_secs(30),
            body_idle: Duration::from_secs(30),
        }
    }
}

/// One L7 service (a listener): its routes and limits.
#[derive(Debug, Clone)]
pub struct ServiceCfg {
    /// The service's name, for logs and metrics.
    pub name: String,
    /// Whether clients reach it over HTTPS: sets `X-Forwarded-Proto: https` even when TLS is
    /// terminated in front of us. A `ProxyConn` given a TLS config always says https.
    pub https: bool,
    /// Routes, tried in order; the first match wins.
    pub routes: Vec<Route>,
    /// Limits on request and response heads and chunked bodies.
    pub limits: Limits,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// The largest request body accepted, in bytes; larger ones are answered 413
    /// (RFC 9110 §15.5.14).
    pub max_body: u64,
}

impl ServiceCfg {
    /// The pool of the first route matching `host` and `path`.
    pub fn route(&self, host: Option<&[u8]>, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .find(|route| route.matches(host, path))
            .map(|route| route.pool)
    }
}

/// What happened on a connection, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request routed to a pool has ended, answered or not.
    Request {
        /// The pool it was routed to.
        pool: usize,
        /// The backend the glue connected it to, if it got that far.
        backend: Option<usize>,
        /// The final status sent to the client, ours (502, 503, 504, ...) or the backend's;
        /// 499 (nginx's "client closed request") if the client left before any response.
        status: u16,
        /// From the request head fully received to the final response head queued to the
        /// client (or the request's end, if none was).
        latency: Duration,
        /// Request bytes received from the client: head and body, after TLS.
        bytes_in: u64,
        /// Response bytes queued to the client: heads (1xx included) and body, before TLS.
        bytes_out: u64,
    },
    /// The TLS handshake succeeded or failed (reported once per connection).
    TlsHandshake {
        /// Whether it succeeded.
        ok: bool,
        /// The negotiated version, when known.
        version: Option<ProtocolVersion>,
    },
    /// We answered an error status because of the client's request: a malformed head (400,
    /// 413, 414, 417, 431, 501, 505), no route (404), a body too large (413) or malformed
    /// (400), a slow head or body (408), CONNECT (501).
    ClientError {
        /// The status sent.
        status: u16,
    },
    /// A timer fired: `client_header`, `client_idle`, `backend_connect`, `backend_response`,
    /// `body_idle` or `client_linger`.
    Timeout {
        /// Which one.
        what: &'static str,
    },
}

/// A byte queue: a `Vec` read from the front through an offset, compacted when half-read.
#[derive(Debug, Default)]
struct Buf {
    data: Vec<u8>,
    start: usize,
}

impl Buf {
    fn bytes(&self) -> &[u8] {
        self.data.get(self.start..).unwrap_or_default()
    }

    fn len(&self) -> usize {
        self.data.len().saturating_sub(self.start)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.data.len());
        if self.start == self.data.len() {
            self.clear();
        }
    }

    /// The vector to append to.
    fn vec(&mut self) -> &mut Vec<u8> {
        if self.start > 0 && self.start >= self.data.len() / 2 {
            self.data.drain(..self.start);
            self.start = 0;
        }
        &mut self.data
    }

    fn extend(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.vec().extend_from_slice(bytes);
        }
    }

    fn clear(&mut self) {
        self.data.clear();
        self.start = 0;
    }

    /// Give the memory back if empty, for connections that sit idle.
    fn release(&mut self) {
        if self.is_empty() {
            self.data = Vec::new();
            self.start = 0;
        }
    }
}

/// The backend connection slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    /// No backend socket we care about.
    None,
    /// A backend of `pool` is needed; `backend_wanted` has not said so yet.
    Wanted { pool: usize, since: Instant },
    /// The glue is connecting to a backend of `pool`.
    Connecting { pool: usize, since: Instant },
    /// Connected to backend `id` of `pool`; `reused` if it served an earlier request.
    Connected {
        pool: usize,
        id: usize,
        reused: bool,
    },
}

/// How much of a body is left to relay.
#[derive(Debug)]
enum Body {
    /// This many bytes.
    Length(u64),
    /// A chunked body, and the data bytes it has carried so far.
    Chunked { decoder: ChunkedDecoder, data: u64 },
    /// All of it.
    Done,
}

/// Where the response is.
#[derive(Debug)]
enum Resp {
    /// Waiting for a (final) response head.
    Head,
    /// This many body bytes left.
    Length(u64),
    /// Chunked, relayed as is.
    Chunked(ChunkedDecoder),
    /// Chunked, decoded for an HTTP/1.0 client and delimited by closing.
    Dechunk(ChunkedDecoder),
    /// Until the backend closes.
    UntilClose,
}

/// One request and its response.
#[derive(Debug)]
struct Exchange {
    pool: usize,
    backend: Option<usize>,
    to: ResponseTo,
    http10: bool,
    /// The client wants the connection kept (RFC 9112 §9.3).
    keep_alive: bool,
    head_done: Instant,
    req_body: Body,
    /// When the whole request was handed to the backend: the response timer starts.
    sent_at: Option<Instant>,
    resp: Resp,
    /// The backend sent a 1xx: a retry would no longer be safe to do blindly.
    interim: bool,
    /// A final response head went to the client: too late for an error response.
    final_sent: bool,
    resp_keep_alive: bool,
    close_client: bool,
    status: u16,
    latency: Duration,
    bytes_in: u64,
    bytes_out: u64,
    /// The forwarded head, kept while a failure of a reused backend connection may be retried.
    retry: Option<Vec<u8>>,
}

/// The timers; at most one runs at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    ClientHeader,
    ClientIdle,
    BackendConnect,
    BackendResponse,
    BodyIdle,
    ClientLinger,
}

impl Timer {
    fn name(self) -> &'static str {
        match self {
            Timer::ClientHeader => "client_header",
            Timer::ClientIdle => "client_idle",
            Timer::BackendConnect => "backend_connect",
            Timer::BackendResponse => "backend_response",
            Timer::BodyIdle => "body_idle",
            Timer::ClientLinger => "client_linger",
        }
    }
}

/// One client connection of the reverse proxy. See the module documentation for the glue's
/// part.
#[derive(Debug)]
pub struct ProxyConn {
    svc: Arc<ServiceCfg>,
    client: SocketAddrV4,
    https: bool,
    tls: Option<Box<ServerConnection>>,
    handshake_reported: bool,
    close_notify_pending: bool,
    in_cap: usize,
    /// Plaintext from the client not yet processed.
    cin: Buf,
    /// Plaintext for the client; with TLS, on its way into rustls.
    cpo: Buf,
    /// TLS records for the client.
    cout: Buf,
    /// Bytes from the backend not yet processed.
    bin: Buf,
    /// Bytes for the backend.
    bout: Buf,
    upstream: Upstream,
    backend_close: bool,
    backend_eof: bool,
    ex: Option<Exchange>,
    /// Exchanges finished so far.
    finished: u64,
    closing: bool,
    client_eof: bool,
    done: bool,
    /// The header timer's start, while waiting for a head that has begun (or the first one).
    head_since: Option<Instant>,
    /// The idle timer's start, while waiting for a request after a response.
    idle_since: Option<Instant>,
    last_progress: Instant,
    events: Vec<Event>,
}

impl ProxyConn {
    /// A connection from `client`, accepted at `now`; TLS is terminated if `tls` is given.
    pub fn new(
        svc: Arc<ServiceCfg>,
        tls: Option<Arc<ServerConfig>>,
        client: SocketAddrV4,
        now: Instant,
    ) -> ProxyConn {
        let in_cap = svc.limits.max_head.max(MIN_IN_CAP);
        let mut conn = ProxyConn {
            https: svc.https || tls.is_some(),
            svc,
            client,
            tls: None,
            handshake_reported: false,
            close_notify_pending: false,
            in_cap,
            cin: Buf::default(),
            cpo: Buf::default(),
            cout: Buf::default(),
            bin: Buf::default(),
            bout: Buf::default(),
            upstream: Upstream::None,
            backend_close: false,
            backend_eof: false,
            ex: None,
            finished: 0,
            closing: false,
            client_eof: false,
            done: false,
            head_since: Some(now),
            idle_since: None,
            last_progress: now,
            events: Vec::new(),
        };
        if let Some(config) = tls {
            match ServerConnection::new(config) {
                Ok(tls) => conn.tls = Some(Box::new(tls)),
                Err(_) => {
                    conn.handshake_reported = true;
                    conn.events.push(Event::TlsHandshake {
                        ok: false,
                        version: None,
                    });
                    conn.closing = true;
                    conn.done = true;
                }
            }
        }
        conn
    }

    // ---- client side -----------------------------------------------------------------------

    /// Bytes received from the client; returns how many were taken. Fewer than `data.len()`
    /// when the buffers are full: keep the rest and offer it again after a later call.
    pub fn client_recv(&mut self, data: &[u8], now: Instant) -> usize {
        if self.closing || self.client_eof {
            // Read and drop: unread bytes in a closed socket make the stack answer with a
            // reset, which can destroy the response still in flight (RFC 9112 §9.6).
            return data.len();
        }
        let mut input = data;
        loop {
            let before = input.len();
            if self.tls.is_some() {
                self.tls_ingest(&mut input, now);
            } else {
                let n = self.in_cap.saturating_sub(self.cin.len()).min(input.len());
                self.cin.extend(&input[..n]);
                input = &input[n..];
            }
            let consumed = before - input.len();
            if consumed > 0 {
                self.last_progress = now;
            }
            self.pump(now);
            if input.is_empty() || consumed == 0 || self.closing || self.client_eof {
                break;
            }
        }
        if self.closing || self.client_eof {
            return data.len();
        }
        data.len() - input.len()
    }

    /// The client half-closed or closed its side. Requests already received are still
    /// answered; then the connection closes.
    pub fn client_eof(&mut self, now: Instant) {
        if !self.client_eof {
            self.client_eof = true;
            if self
                .tls
                .as_ref()
                .is_some_and(|tls| tls.is_handshaking() && !self.handshake_reported)
            {
                self.handshake_failed();
                self.abort(now);
            }
            self.pump(now);
        }
    }

    /// The client connection was reset or failed: abandon everything. [`ProxyConn::is_done`]
    /// is true afterwards.
    pub fn client_failed(&mut self, now: Instant) {
        if self
            .tls
            .as_ref()
            .is_some_and(|tls| tls.is_handshaking() && !self.handshake_reported)
        {
            self.handshake_failed();
        }
        self.abort(now);
        self.done = true;
    }

    /// Bytes to write to the client socket.
    pub fn client_output(&self) -> &[u8] {
        match self.tls {
            Some(_) => self.cout.bytes(),
            None => self.cpo.bytes(),
        }
    }

    /// `n` bytes of [`ProxyConn::client_output`] were written.
    pub fn client_consumed(&mut self, n: usize, now: Instant) {
        if n == 0 {
            return;
        }
        match self.tls {
            Some(_) => self.cout.consume(n),
            None => self.cpo.consume(n),
        }
        self.last_progress = now;
        self.pump(now);
    }

    /// Close the client socket once [`ProxyConn::client_output`] is written.
    pub fn client_should_close(&self) -> bool {
        self.closing
    }

    /// Nothing is left to do: drop this and close every socket it used.
    pub fn is_done(&self) -> bool {
        self.done
            || (self.closing
                && self.client_output().is_empty()
                && self.cpo.is_empty()
                && !self.close_notify_pending
                && !self.tls.as_ref().is_some_and(|tls| tls.wants_write()))
    }

    // ---- backend side ----------------------------------------------------------------------

    /// `Some(pool)`, once per connection wanted: close and forget any backend socket still
    /// held, and connect to a backend of `pool`.
    pub fn backend_wanted(&mut self) -> Option<usize> {
        match self.upstream {
            Upstream::Wanted { pool, since } => {
                self.upstream = Upstream::Connecting { pool, since };
                self.backend_close = false;
                Some(pool)
            }
            _ => None,
        }
    }

    /// The connection asked for by [`ProxyConn::backend_wanted`] is established, to the
    /// backend the glue calls `backend`.
    pub fn backend_connected(&mut self, backend: usize, now: Instant) {
        match (self.upstream, self.ex.as_mut()) {
            (Upstream::Connecting { pool, .. }, Some(ex)) => {
                self.upstream = Upstream::Connected {
                    pool,
                    id: backend,
                    reused: false,
                };
                ex.backend = Some(backend);
                self.backend_eof = false;
                self.bin.clear();
                self.last_progress = now;
            }
            // A connection while one is in use: the glue is out of step with us. Give up the
            // one in use as if it had failed, so that nothing more is relayed to a connection
            // the glue is told to close (the rest of a body would start the next one).
            (Upstream::Connected { .. }, _) => return self.backend_failed(now),
            // Not asked for (any more): the request timed out or failed meanwhile.
            _ => self.backend_close = true,
        }
        self.pump(now);
    }

    /// The pool has no healthy backend: the request is answered 503.
    pub fn backend_unavailable(&mut self, now: Instant) {
        if matches!(
            self.upstream,
            Upstream::Wanted { .. } | Upstream::Connecting { .. }
        ) {
            self.upstream = Upstream::None;
            self.fail_exchange(503, now);
            self.pump(now);
        }
    }

    /// The backend connection failed: refused, reset or unreachable. Before any response byte
    /// the client gets a 502; after part of a response, its connection is closed.
    pub fn backend_failed(&mut self, now: Instant) {
        match self.upstream {
            Upstream::None => {}
            Upstream::Wanted { .. } | Upstream::Connecting { .. } => {
                self.upstream = Upstream::None;
                self.fail_exchange(502, now);
            }
            Upstream::Connected { .. } => {
                if self.ex.is_some() {
                    self.backend_lost(now);
                } else {
                    self.drop_backend();
                }
            }
        }
        self.backend_close = true;
        self.pump(now);
    }

    /// Bytes received from the backend; returns how many were taken (see
    /// [`ProxyConn::client_recv`]).
    pub fn backend_recv(&mut self, data: &[u8], now: Instant) -> usize {
        if !matches!(self.upstream, Upstream::Connected { .. }) || self.backend_eof {
            // Not a connection we use: whatever it says is dropped with it.
            return data.len();
        }
        if self.ex.is_none() {
            // An idle backend connection must be silent; one that is not is out of step.
            self.drop_backend();
            return data.len();
        }
        let finished = self.finished;
        let mut input = data;
        while !input.is_empty() {
            let n = self.in_cap.saturating_sub(self.bin.len()).min(input.len());
            if n == 0 {
                break;
            }
            self.bin.extend(&input[..n]);
            input = &input[n..];
            self.last_progress = now;
            self.pump(now);
            if !matches!(self.upstream, Upstream::Connected { .. }) {
                return data.len();
            }
            if self.finished != finished && !input.is_empty() {
                // Bytes after the end of the response, in the same read: the backend is out
                // of step (we never pipeline), so none of it may answer the next request.
                self.replace_backend(now);
                return data.len();
            }
        }
        data.len() - input.len()
    }

    /// The backend closed its side.
    pub fn backend_eof(&mut self, now: Instant) {
        match self.upstream {
            Upstream::Connected { .. } if self.ex.is_some() => {
                self.backend_eof = true;
                self.pump(now);
            }
            Upstream::Connected { .. } => self.drop_backend(),
            Upstream::Connecting { .. } => self.backend_failed(now),
            Upstream::None | Upstream::Wanted { .. } => {}
        }
    }

    /// Bytes to write to the backend socket (empty unless connected).
    pub fn backend_output(&self) -> &[u8] {
        match self.upstream {
            Upstream::Connected { .. } => self.bout.bytes(),
            _ => &[],
        }
    }

    /// `n` bytes of [`ProxyConn::backend_output`] were written.
    pub fn backend_consumed(&mut self, n: usize, now: Instant) {
        if n == 0 || !matches!(self.upstream, Upstream::Connected { .. }) {
            return;
        }
        self.bout.consume(n);
        self.last_progress = now;
        self.pump(now);
    }

    /// Close (FIN) the backend socket held, and forget it. Its output is empty by then.
    pub fn backend_should_close(&self) -> bool {
        self.backend_close
    }

    // ---- time and events -------------------------------------------------------------------

    /// When [`ProxyConn::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer().map(|(deadline, _)| deadline)
    }

    /// Act on a timer whose deadline has passed; does nothing before it.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some((deadline, timer)) = self.timer() else {
            return;
        };
        if now < deadline {
            return;
        }
        self.events.push(Event::Timeout { what: timer.name() });
        match timer {
            Timer::ClientHeader => {
                if self.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) {
                    self.handshake_failed();
                    self.abort(now);
                } else if self.cin.is_empty() {
                    // Nothing sent at all: a pre-connecting browser or a probe; a 408 would
                    // only show up as an error on the next request it sends.
                    self.close_client(now, true);
                } else {
                    self.reject(408, false, false, false, now);
                }
            }
            Timer::ClientIdle => self.close_client(now, true),
            Timer::BackendConnect | Timer::BackendResponse => self.fail_exchange(504, now),
            Timer::BodyIdle => {
                let client_slow = self
                    .ex
                    .as_ref()
                    .is_some_and(|ex| !matches!(ex.req_body, Body::Done))
                    && self.bout.len() < OUT_CAP;
                self.fail_exchange(if client_slow { 408 } else { 504 }, now);
            }
            Timer::ClientLinger => self.done = true,
        }
        self.pump(now);
    }

    /// The events since the last call; drain them after every call.
    pub fn take_events(&mut self) -> impl Iterator<Item = Event> + '_ {
        self.events.drain(..)
    }

    fn timer(&self) -> Option<(Instant, Timer)> {
        let t = &self.svc.timeouts;
        if self.is_done() {
            return None;
        }
        let (base, duration, timer) = if self.closing {
            (self.last_progress, t.body_idle, Timer::ClientLinger)
        } else if let Some(ex) = &self.ex {
            match self.upstream {
                Upstream::Wanted { since, .. } | Upstream::Connecting { since, .. } => {
                    (since, t.backend_connect, Timer::BackendConnect)
                }
                Upstream::Connected { .. } => match (&ex.resp, ex.sent_at) {
                    (Resp::Head, Some(sent)) => (sent, t.backend_response, Timer::BackendResponse),
                    _ => (self.last_progress, t.body_idle, Timer::BodyIdle),
                },
                Upstream::None => (self.last_progress, t.body_idle, Timer::BodyIdle),
            }
        } else if let Some(since) = self.head_since {
            (since, t.client_header, Timer::ClientHeader)
        } else {
            (
                self.idle_since.unwrap_or(self.last_progress),
                t.client_idle,
                Timer::ClientIdle,
            )
        };
        // A deadline past what Instant can hold is no deadline.
        base.checked_add(duration).map(|deadline| (deadline, timer))
    }

    // ---- the state machine -----------------------------------------------------------------

    /// Move bytes and advance states until nothing changes.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progress = self.tls_read_plaintext();
            progress |= self.advance(now);
            progress |= self.tls_flush();
            if !progress {
                break;
            }
        }
    }

    fn advance(&mut self, now: Instant) -> bool {
        if self.closing || self.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) {
            return false;
        }
        let Some(ex) = self.ex.as_ref() else {
            return self.start_request(now);
        };
        // Checked first, right after tls_read_plaintext: an empty `cin` then means nothing
        // is left inside rustls either.
        if self.client_eof && self.cin.is_empty() && !matches!(ex.req_body, Body::Done) {
            // The client left in the middle of its request body.
            self.abort(now);
            return true;
        }
        let mut progress = self.forward_request_body(now);
        progress |= self.forward_response(now);
        if let Some(ex) = self.ex.as_mut() {
            let request_done = matches!(ex.req_body, Body::Done);
            if request_done
                && ex.sent_at.is_none()
                && self.bout.is_empty()
                && matches!(self.upstream, Upstream::Connected { .. })
            {
                ex.sent_at = Some(now);
            }
        }
        progress
    }

    /// Parse the next request head in `cin` and set up its exchange.
    fn start_request(&mut self, now: Instant) -> bool {
        if self.cin.is_empty() {
            if self.client_eof {
                self.close_client(now, true);
                return true;
            }
            return false;
        }
        if self.head_since.is_none() {
            self.head_since = Some(now);
            self.idle_since = None;
        }
        let limits = self.svc.limits;
        let req = match http::parse_request(self.cin.bytes(), &limits) {
            Ok(Status::Complete(len, req)) => (len, req),
            Ok(Status::Partial) => {
                if self.client_eof {
                    // A head cut short by the client: nobody is left to answer.
                    self.close_client(now, true);
                    return true;
                }
                return false;
            }
            Err(error) => {
                self.reject(error.status(), false, false, false, now);
                return true;
            }
        };
        let (len, req) = req;
        let http10 = req.version == Version::Http10;
        let to = ResponseTo::of(&req);
        let head_only = to == ResponseTo::Head;
        let no_body = req.framing == Framing::Length(0);
        let keep = req.keep_alive && no_body && !self.client_eof;

        // A reverse proxy is the origin server to its clients: CONNECT is not implemented
        // (RFC 9110 §9.3.6, §15.6.2).
        if to == ResponseTo::Connect {
            self.reject(501, false, http10, false, now);
            return true;
        }
        let Some(pool) = self.svc.route(req.host, route_path(&req.target)) else {
            self.cin.consume(len);
            self.reject(404, keep, http10, head_only, now);
            return true;
        };
        let req_body = match req.framing {
            Framing::Length(n) if n > self.svc.max_body => {
                self.reject(413, false, http10, head_only, now);
                return true;
            }
            Framing::Length(0) => Body::Done,
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked {
                decoder: ChunkedDecoder::new(&limits),
                data: 0,
            },
            // Only responses are delimited by closing or tunnel; a request we cannot frame is
            // never forwarded.
            Framing::CloseDelimited | Framing::Tunnel => {
                self.reject(400, false, http10, false, now);
                return true;
            }
        };

        let reuse = matches!(
            self.upstream,
            Upstream::Connected { pool: p, .. } if p == pool && !self.backend_eof
        );
        let backend = match self.upstream {
            Upstream::Connected { id, .. } if reuse => {
                self.upstream = Upstream::Connected {
                    pool,
                    id,
                    reused: true,
                };
                Some(id)
            }
            _ => {
                // drop_backend(), spelled out on the fields: `req` borrows `cin`.
                if matches!(
                    self.upstream,
                    Upstream::Connecting { .. } | Upstream::Connected { .. }
                ) {
                    self.backend_close = true;
                }
                self.bin.clear();
                self.backend_eof = false;
                self.upstream = Upstream::Wanted { pool, since: now };
                None
            }
        };
        self.bout.clear();
        let https = self.https;
        write_request_head(self.bout.vec(), &req, *self.client.ip(), https);
        // RFC 9110 §9.2.2: a proxy "MUST NOT automatically retry non-idempotent requests";
        // we retry only bodiless idempotent ones, and only when a reused connection fails.
        let retry =
            (reuse && no_body && is_idempotent(req.method)).then(|| self.bout.bytes().to_vec());
        let keep_alive = req.keep_alive;
        self.cin.consume(len);
        self.ex = Some(Exchange {
            pool,
            backend,
            to,
            http10,
            keep_alive,
            head_done: now,
            req_body,
            sent_at: None,
            resp: Resp::Head,
            interim: false,
            final_sent: false,
            resp_keep_alive: false,
            close_client: false,
            status: 0,
            latency: Duration::ZERO,
            bytes_in: len as u64,
            bytes_out: 0,
            retry,
        });
        self.head_since = None;
        self.idle_since = None;
        self.last_progress = now;
        true
    }

    /// Relay request body bytes from `cin` to `bout`, checking chunked framing on the way.
    fn forward_request_body(&mut self, now: Instant) -> bool {
        let Some(ex) = self.ex.as_mut() else {
            return false;
        };
        let avail = self.cin.len().min(OUT_CAP.saturating_sub(self.bout.len()));
        if avail == 0 {
            return false;
        }
        let input = &self.cin.bytes()[..avail];
        match &mut ex.req_body {
            Body::Done => false,
            Body::Length(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(avail);
                self.bout.extend(&input[..n]);
                self.cin.consume(n);
                *left -= n as u64;
                ex.bytes_in += n as u64;
                if *left == 0 {
                    ex.req_body = Body::Done;
                }
                true
            }
            Body::Chunked { decoder, data } => {
                let mut decoded = 0u64;
                match decoder.decode(input, |d| decoded += d.len() as u64) {
                    Ok((n, done)) => {
                        *data = data.saturating_add(decoded);
                        if *data > self.svc.max_body {
                            self.fail_exchange(413, now);
                            return true;
                        }
                        self.bout.extend(&input[..n]);
                        self.cin.consume(n);
                        ex.bytes_in += n as u64;
                        if done {
                            ex.req_body = Body::Done;
                        }
                        n > 0 || done
                    }
                    // The bytes of the failing call are not forwarded: the backend sees a
                    // truncated body, then the connection closes.
                    Err(error) => {
                        self.fail_exchange(error.status(), now);
                        true
                    }
                }
            }
        }
    }

    /// Parse the response head, then relay its body from `bin` to `cpo`.
    fn forward_response(&mut self, now: Instant) -> bool {
        if !matches!(self.upstream, Upstream::Connected { .. }) {
            return false;
        }
        let Some(ex) = self.ex.as_mut() else {
            return false;
        };
        let space = OUT_CAP.saturating_sub(self.cpo.len());
        if space == 0 {
            return false;
        }
        let limits = self.svc.limits;
        let input = &self.bin.bytes()[..self.bin.len().min(space)];
        let avail = input.len();
        // The backend closed and all it sent fits: nothing more will come.
        let eof = self.backend_eof && avail == self.bin.len();
        match &mut ex.resp {
            Resp::Head => {
                let (len, resp) = match http::parse_response(self.bin.bytes(), &limits, ex.to) {
                    Ok(Status::Complete(len, resp)) => (len, resp),
                    Ok(Status::Partial) if self.backend_eof => {
                        self.backend_lost(now);
                        return true;
                    }
                    Ok(Status::Partial) => return false,
                    Err(_) => {
                        self.fail_exchange(502, now);
                        return true;
                    }
                };
                // We strip Upgrade and refuse CONNECT, so a 101 or a tunnel was never asked
                // for (RFC 9110 §15.2.2).
                if resp.code == 101 || resp.framing == Framing::Tunnel {
                    self.fail_exchange(502, now);
                    return true;
                }
                if resp.code < 200 {
                    ex.interim = true;
                    // RFC 9110 §15.2: "A server MUST NOT send a 1xx response to an HTTP/1.0
                    // client."
                    if !ex.http10 {
                        let before = self.cpo.len();
                        write_response_head(self.cpo.vec(), &resp, None, false);
                        ex.bytes_out += (self.cpo.len() - before) as u64;
                    }
                    self.bin.consume(len);
                    return true;
                }
                let body = match resp.framing {
                    Framing::Length(0) => None,
                    Framing::Length(n) => Some(Resp::Length(n)),
                    Framing::Chunked if ex.http10 => {
                        Some(Resp::Dechunk(ChunkedDecoder::new(&limits)))
                    }
                    Framing::Chunked => Some(Resp::Chunked(ChunkedDecoder::new(&limits))),
                    Framing::CloseDelimited | Framing::Tunnel => Some(Resp::UntilClose),
                };
                let dechunk = matches!(body, Some(Resp::Dechunk(_)));
                // Connection: close from either side, a body delimited by closing, or a request
                // body still coming all end the client connection after this response.
                let close = !ex.keep_alive
                    || !resp.keep_alive
                    || dechunk
                    || !matches!(ex.req_body, Body::Done)
                    || self.client_eof;
                let connection = if close {
                    Some("close")
                } else if ex.http10 {
                    Some("keep-alive")
                } else {
                    None
                };
                let before = self.cpo.len();
                write_response_head(self.cpo.vec(), &resp, connection, dechunk);
                ex.bytes_out += (self.cpo.len() - before) as u64;
                ex.final_sent = true;
                ex.status = resp.code;
                ex.resp_keep_alive = resp.keep_alive;
                ex.close_client = close;
                ex.latency = now.saturating_duration_since(ex.head_done);
                self.bin.consume(len);
                match body {
                    Some(body) => ex.resp = body,
                    None => self.finish_exchange(now),
                }
                true
            }
            Resp::Length(left) => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                self.cpo.extend(&input[..n]);
                self.bin.consume(n);
                *left -= n as u64;
                ex.bytes_out += n as u64;
                let done = *left == 0;
                self.response_body_step(done, n, eof, avail, now)
            }
            Resp::Chunked(decoder) => match decoder.decode(input, |_| {}) {
                Ok((n, done)) => {
                    self.cpo.extend(&input[..n]);
                    self.bin.consume(n);
                    ex.bytes_out += n as u64;
                    self.response_body_step(done, n, eof, avail, now)
                }
                Err(_) => {
                    self.fail_exchange(502, now);
                    true
                }
            },
            Resp::Dechunk(decoder) => {
                let before = self.cpo.len();
                let cpo = &mut self.cpo;
                match decoder.decode(input, |d| cpo.extend(d)) {
                    Ok((n, done)) => {
                        self.bin.consume(n);
                        ex.bytes_out += (self.cpo.len() - before) as u64;
                        self.response_body_step(done, n, eof, avail, now)
                    }
                    Err(_) => {
                        self.fail_exchange(502, now);
                        true
                    }
                }
            }
            Resp::UntilClose => {
                let n = input.len();
                self.cpo.extend(input);
                self.bin.consume(n);
                ex.bytes_out += n as u64;
                if eof {
                    self.finish_exchange(now);
                    true
                } else {
                    n > 0
                }
            }
        }
    }

    /// The response is complete: report it, keep or drop the backend, and go on.
    /// What `n` more bytes of a response body (of `avail` in hand) mean: the exchange is
    /// finished when the body is `done`; a backend that closed before the end fails it, as
    /// the client must not take a truncated body for a whole one (RFC 9112 §8); otherwise
    /// it goes on, and progress is whether bytes moved.
    fn response_body_step(
        &mut self,
        done: bool,
        n: usize,
        eof: bool,
        avail: usize,
        now: Instant,
    ) -> bool {
        if done {
            self.finish_exchange(now);
            true
        } else if eof && n == avail {
            self.fail_exchange(502, now);
            true
        } else {
            n > 0
        }
    }

    fn finish_exchange(&mut self, now: Instant) {
        let Some(ex) = self.ex.take() else {
            return;
        };
        self.finished += 1;
        self.events.push(Event::Request {
            pool: ex.pool,
            backend: ex.backend,
            status: ex.status,
            latency: ex.latency,
            bytes_in: ex.bytes_in,
            bytes_out: ex.bytes_out,
        });
        // Reuse only a connection that is exactly between messages: our request all sent,
        // their response all read and nothing more from them.
        let reusable = ex.resp_keep_alive
            && matches!(ex.req_body, Body::Done)
            && self.bout.is_empty()
            && self.bin.is_empty()
            && !self.backend_eof
            && matches!(self.upstream, Upstream::Connected { .. });
        if !reusable {
            self.drop_backend();
        }
        if ex.close_client {
            self.close_client(now, true);
        } else {
            self.wait_next_request(now);
        }
    }

    /// The backend connection ended without a complete response head.
    fn backend_lost(&mut self, now: Instant) {
        let retry = matches!(self.upstream, Upstream::Connected { reused: true, .. })
            && self.bin.is_empty()
            && self.ex.as_ref().is_some_and(|ex| {
                ex.retry.is_some() && !ex.interim && matches!(ex.resp, Resp::Head)
            });
        if !retry {
            self.fail_exchange(502, now);
            return;
        }
        // A keep-alive connection the backend closed just as we reused it (RFC 9112 §9.3.1):
        // send the same request on a new one.
        self.drop_backend();
        let Some(ex) = self.ex.as_mut() else {
            return;
        };
        let head = ex.retry.take().unwrap_or_default();
        ex.backend = None;
        ex.sent_at = None;
        self.bout.extend(&head);
        self.upstream = Upstream::Wanted {
            pool: ex.pool,
            since: now,
        };
    }

    /// Drop the backend connection; an exchange that started on it within the current call
    /// (so nothing of it was written yet) moves to a new connection.
    fn replace_backend(&mut self, now: Instant) {
        let Some(ex) = self.ex.as_mut() else {
            self.drop_backend();
            return;
        };
        ex.backend = None;
        ex.sent_at = None;
        let pool = ex.pool;
        self.backend_close = true;
        self.bin.clear();
        self.backend_eof = false;
        self.upstream = Upstream::Wanted { pool, since: now };
    }

    /// End the exchange with an error `status`, or by closing if a response has begun.
    fn fail_exchange(&mut self, status: u16, now: Instant) {
        let Some(ex) = self.ex.take() else {
            return;
        };
        self.drop_backend();
        if ex.final_sent {
            self.events.push(Event::Request {
                pool: ex.pool,
                backend: ex.backend,
                status: ex.status,
                latency: ex.latency,
                bytes_in: ex.bytes_in,
                bytes_out: ex.bytes_out,
            });
            // No close_notify: a truncated response must not look like a complete one.
            self.close_client(now, false);
            return;
        }
        // Keep the client only after a backend-side error and a request fully read.
        let keep =
            status >= 500 && ex.keep_alive && matches!(ex.req_body, Body::Done) && !self.client_eof;
        let n = write_error(
            self.cpo.vec(),
            status,
            keep,
            ex.http10,
            ex.to == ResponseTo::Head,
        );
        self.events.push(Event::Request {
            pool: ex.pool,
            backend: ex.backend,
            status,
            latency: now.saturating_duration_since(ex.head_done),
            bytes_in: ex.bytes_in,
            bytes_out: ex.bytes_out + n,
        });
        if status < 500 {
            self.events.push(Event::ClientError { status });
        }
        if keep {
            self.wait_next_request(now);
        } else {
            self.close_client(now, true);
        }
    }

    /// Answer a request we do not forward, with no exchange in progress.
    fn reject(&mut self, status: u16, keep: bool, http10: bool, head_only: bool, now: Instant) {
        write_error(self.cpo.vec(), status, keep, http10, head_only);
        self.events.push(Event::ClientError { status });
        if keep {
            self.wait_next_request(now);
        } else {
            self.close_client(now, true);
        }
    }

    /// Stop everything at once: the client left, broke TLS, or a timer gave up.
    fn abort(&mut self, now: Instant) {
        if let Some(ex) = self.ex.take() {
            let (status, latency) = if ex.final_sent {
                (ex.status, ex.latency)
            } else {
                (499, now.saturating_duration_since(ex.head_done))
            };
            self.events.push(Event::Request {
                pool: ex.pool,
                backend: ex.backend,
                status,
                latency,
                bytes_in: ex.bytes_in,
                bytes_out: ex.bytes_out,
            });
        }
        self.close_client(now, false);
    }

    fn wait_next_request(&mut self, now: Instant) {
        self.head_since = None;
        self.idle_since = Some(now);
        self.last_progress = now;
        for buf in [&mut self.cin, &mut self.cpo, &mut self.bin, &mut self.bout] {
            buf.release();
        }
    }

    /// Close the client connection once its output is written; `graceful` sends a TLS
    /// close_notify after the last response (RFC 8446 §6.1).
    fn close_client(&mut self, now: Instant, graceful: bool) {
        if self.closing {
            return;
        }
        if self.ex.is_some() {
            self.abort(now);
            return;
        }
        self.closing = true;
        self.last_progress = now;
        self.cin.clear();
        self.drop_backend();
        self.close_notify_pending =
            graceful && self.tls.as_ref().is_some_and(|tls| !tls.is_handshaking());
    }

    /// Forget the backend connection; the glue closes it if it has one.
    fn drop_backend(&mut self) {
        if matches!(
            self.upstream,
            Upstream::Connecting { .. } | Upstream::Connected { .. }
        ) {
            self.backend_close = true;
        }
        self.upstream = Upstream::None;
        self.bout.clear();
        self.bin.clear();
        self.backend_eof = false;
    }

    // ---- TLS -------------------------------------------------------------------------------

    /// Feed TLS records to rustls; `input` advances past what it took.
    fn tls_ingest(&mut self, input: &mut &[u8], now: Instant) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        // Never with an empty slice: rustls would take that for the peer's EOF.
        if input.is_empty() || tls.read_tls(input).is_err() {
            // Its buffers are full: backpressure until we read the plaintext out.
            return;
        }
        match tls.process_new_packets() {
            Ok(_) => {
                if !self.handshake_reported && !tls.is_handshaking() {
                    self.handshake_reported = true;
                    self.events.push(Event::TlsHandshake {
                        ok: true,
                        version: tls.protocol_version(),
                    });
                }
            }
            Err(_) => {
                // rustls has queued the alert it owes the peer (RFC 8446 §6.2); tls_flush
                // sends it, then the connection closes.
                self.handshake_failed();
                self.cpo.clear();
                self.abort(now);
            }
        }
    }

    fn handshake_failed(&mut self) {
        if !self.handshake_reported {
            self.handshake_reported = true;
            let version = self.tls.as_ref().and_then(|tls| tls.protocol_version());
            self.events.push(Event::TlsHandshake { ok: false, version });
        }
    }

    /// Move decrypted bytes from rustls into `cin`, as far as it has room.
    fn tls_read_plaintext(&mut self) -> bool {
        // Drained even after the client's FIN: what rustls holds arrived before it.
        if self.closing {
            return false;
        }
        let Some(tls) = self.tls.as_mut() else {
            return false;
        };
        let mut progress = false;
        while self.cin.len() < self.in_cap {
            let mut reader = tls.reader();
            match reader.fill_buf() {
                Ok([]) => {
                    // close_notify: the client's end of the stream (RFC 8446 §6.1).
                    let news = !self.client_eof;
                    self.client_eof = true;
                    return progress || news;
                }
                Ok(chunk) => {
                    let n = chunk.len().min(self.in_cap - self.cin.len());
                    self.cin.extend(&chunk[..n]);
                    reader.consume(n);
                    progress = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    let news = !self.client_eof;
                    self.client_eof = true;
                    return progress || news;
                }
            }
        }
        progress
    }

    /// Encrypt `cpo` into `cout`, as far as rustls and `cout` have room.
    fn tls_flush(&mut self) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return false;
        };
        let mut progress = false;
        if !self.cpo.is_empty()
            && !tls.is_handshaking()
            && let Ok(n) = tls.writer().write(self.cpo.bytes())
            && n > 0
        {
            self.cpo.consume(n);
            progress = true;
        }
        if self.close_notify_pending && self.cpo.is_empty() {
            tls.send_close_notify();
            self.close_notify_pending = false;
            progress = true;
        }
        while tls.wants_write() && self.cout.len() < OUT_CAP {
            match tls.write_tls(self.cout.vec()) {
                Ok(n) if n > 0 => progress = true,
                _ => break,
            }
        }
        progress
    }
}

/// The path a request is routed on: no query; `/` for an empty absolute-form path and for
/// the server-wide `OPTIONS *`.
fn route_path<'a>(target: &Target<'a>) -> &'a str {
    let path = match *target {
        Target::Origin(path) | Target::Absolute { path, .. } => path,
        Target::Asterisk | Target::Authority(_) => "/",
    };
    match path.split('?').next() {
        Some(path) if !path.is_empty() => path,
        _ => "/",
    }
}

/// Safe methods plus PUT and DELETE (RFC 9110 §9.2.2).
fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Whether a field is hop-by-hop: RFC 9110 §7.6.1 has a proxy remove Connection, the fields
/// it names, and Proxy-Connection, Keep-Alive, TE and Upgrade; we drop Trailer too.
///
/// The framing fields and Host are never removed for being named in Connection: a client
/// sending `Connection: Content-Length` would otherwise have us forward a body the backend
/// cannot delimit, the start of a smuggled request (RFC 9112 §11.2).
fn is_hop_by_hop(name: &str, headers: &[Header<'_>]) -> bool {
    const ALWAYS: [&str; 6] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ];
    const NEVER: [&str; 3] = ["content-length", "transfer-encoding", "host"];
    if ALWAYS.iter().any(|h| name.eq_ignore_ascii_case(h)) {
        return true;
    }
    if NEVER.iter().any(|h| name.eq_ignore_ascii_case(h)) {
        return false;
    }
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|option| trim(option).eq_ignore_ascii_case(name.as_bytes()))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t');
    let end = s.iter().rposition(|&b| b != b' ' && b != b'\t');
    match (start, end) {
        (Some(start), Some(end)) => &s[start..=end],
        _ => &[],
    }
}

fn write_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The head we send the backend for `req`.
///
/// The request line keeps the method and target, in origin-form: an absolute-form target
/// becomes its path, and its authority replaces Host (RFC 9112 §3.2.2). Then the fields minus
/// hop-by-hop ones, `X-Forwarded-For` with the client appended to any it sent, and our own
/// `X-Forwarded-Proto` (a client's is dropped: it cannot vouch for our listener).
fn write_request_head(out: &mut Vec<u8>, req: &Request<'_>, client: Ipv4Addr, https: bool) {
    let http10 = req.version == Version::Http10;
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    let authority = match req.target {
        Target::Origin(path) => {
            out.extend_from_slice(path.as_bytes());
            None
        }
        Target::Absolute {
            authority, path, ..
        } => {
            if !path.starts_with('/') {
                out.push(b'/');
            }
            out.extend_from_slice(path.as_bytes());
            Some(authority)
        }
        Target::Asterisk => {
            out.push(b'*');
            None
        }
        Target::Authority(authority) => {
            out.extend_from_slice(authority.as_bytes());
            None
        }
    };
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let headers = req.headers();
    for h in headers {
        let name = h.name;
        if is_hop_by_hop(name, headers)
            || name.eq_ignore_ascii_case("x-forwarded-for")
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || (authority.is_some() && name.eq_ignore_ascii_case("host"))
            // RFC 9110 §10.1.1: an HTTP/1.0 client's Expect is ignored, and would make the
            // backend send it a 1xx.
            || (http10 && name.eq_ignore_ascii_case("expect"))
        {
            continue;
        }
        write_field(out, name, h.value);
    }
    if let Some(authority) = authority {
        write_field(out, "Host", authority.as_bytes());
    } else if req.host.is_none() {
        // An HTTP/1.0 request without Host; RFC 9112 §3.2: an HTTP/1.1 request "MUST" have
        // one, empty when there is no authority.
        write_field(out, "Host", b"");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    for h in headers {
        if h.name.eq_ignore_ascii_case("x-forwarded-for")
            && !h.value.is_empty()
            && !is_hop_by_hop(h.name, headers)
        {
            out.extend_from_slice(h.value);
            out.extend_from_slice(b", ");
        }
    }
    let _ = write!(out, "{client}\r\n");
    let proto: &[u8] = if https { b"https" } else { b"http" };
    write_field(out, "X-Forwarded-Proto", proto);
    out.extend_from_slice(b"\r\n");
}

/// The head we send the client for `resp`: our version, the status and reason, the fields
/// minus hop-by-hop ones (and Transfer-Encoding when we decode the body), then `connection`.
fn write_response_head(
    out: &mut Vec<u8>,
    resp: &Response<'_>,
    connection: Option<&str>,
    strip_transfer_encoding: bool,
) {
    let _ = write!(out, "HTTP/1.1 {} ", resp.code);
    out.extend_from_slice(resp.reason);
    out.extend_from_slice(b"\r\n");
    let headers = resp.headers();
    for h in headers {
        if is_hop_by_hop(h.name, headers)
            || (strip_transfer_encoding && h.name.eq_ignore_ascii_case("transfer-encoding"))
        {
            continue;
        }
        write_field(out, h.name, h.value);
    }
    if let Some(connection) = connection {
        write_field(out, "Connection", connection.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// An error response of our own, `503 Service Unavailable\n` and the like; returns its size.
fn write_error(
    out: &mut Vec<u8>,
    status: u16,
    keep_alive: bool,
    http10: bool,
    head_only: bool,
) -> u64 {
    let reason = reason_phrase(status);
    let body = format!("{status} {reason}\n");
    let before = out.len();
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // RFC 9110 §9.3.2: the response to HEAD has the GET response's fields, no content.
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    (out.len() - before) as u64
}

/// RFC 9110 §15's reason phrases for the statuses we generate.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// A fuzz target's body: run a script of operations on a plain-HTTP `ProxyConn` with small
/// limits. Panics on a violated invariant, never on input.
///
/// Each operation is one byte (its low nibble selects it) followed by its arguments: client or
/// backend bytes (a length byte, then that many bytes), canned fragments of valid messages,
/// EOFs, backend outcomes, the glue writing some output, and time passing.
pub fn fuzz_proxy(data: &[u8]) {
    const FRAGMENTS: [&[u8]; 8] = [
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /b HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HEAD /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    ];
    let svc = Arc::new(ServiceCfg {
        name: "fuzz".into(),
        https: false,
        routes: vec![
            Route {
                host: Some("a".into()),
                path_prefix: "/a".into(),
                pool: 0,
            },
            Route {
                host: None,
                path_prefix: "/".into(),
                pool: 1,
            },
        ],
        limits: Limits {
            max_head: 256,
            max_headers: 8,
            max_line: 128,
            max_chunk_line: 16,
            max_trailers: 64,
        },
        timeouts: Timeouts::default(),
        max_body: 1000,
    });
    // Output can exceed the relay cap by a head or an error response.
    let max_output = OUT_CAP + 2 * MIN_IN_CAP;
    let mut now = Instant::now();
    let client = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 40000);
    let mut conn = ProxyConn::new(svc, None, client, now);
    // What one backend connection was sent, as far as the script let it be written.
    let mut to_backend = Vec::new();
    let mut rest = data;
    let next = |rest: &mut &[u8]| -> u8 {
        let (&b, tail) = rest.split_first().unwrap_or((&0, &[]));
        *rest = tail;
        b
    };
    while !rest.is_empty() && !conn.is_done() {
        let op = next(&mut rest);
        match op & 0x0f {
            0 | 1 => {
                let len = usize::from(next(&mut rest)).min(rest.len());
                let (bytes, tail) = rest.split_at(len);
                rest = tail;
                let taken = if op & 0x0f == 0 {
                    conn.client_recv(bytes, now)
                } else {
                    conn.backend_recv(bytes, now)
                };
                assert!(taken <= bytes.len());
            }
            2 | 3 => {
                let fragment = FRAGMENTS[usize::from(op >> 4) % FRAGMENTS.len()];
                let taken = if op & 0x0f == 2 {
                    conn.client_recv(fragment, now)
                } else {
                    conn.backend_recv(fragment, now)
                };
                assert!(taken <= fragment.len());
            }
            4 => conn.client_eof(now),
            5 => conn.backend_eof(now),
            6 => {
                // As the glue does: a wanted backend is a new connection, whatever the last
                // one carried ends there (cut short, if the proxy dropped it mid-request).
                if conn.backend_wanted().is_some() {
                    check_backend_stream(&std::mem::take(&mut to_backend));
                }
            }
            7 => conn.backend_connected(usize::from(next(&mut rest)), now),
            8 => conn.backend_failed(now),
            9 => conn.backend_unavailable(now),
            10 => {
                let n = (usize::from(next(&mut rest)) * 64).min(conn.client_output().len());
                conn.client_consumed(n, now);
            }
            11 => {
                let n = (usize::from(next(&mut rest)) * 64).min(conn.backend_output().len());
                to_backend.extend_from_slice(&conn.backend_output()[..n]);
                conn.backend_consumed(n, now);
            }
            12 => {
                now += Duration::from_millis(u64::from(next(&mut rest)) * 250);
                conn.handle_timeout(now);
            }
            13 => {
                if let Some(deadline) = conn.poll_timeout() {
                    now = now.max(deadline);
                    conn.handle_timeout(now);
                    // A timer that fired must not stay due: that would spin the glue.
                    assert!(conn.poll_timeout().is_none_or(|d| d > now) || conn.is_done());
                }
            }
            14 => conn.client_failed(now),
            _ => {
                // A well-behaved glue step: flush both ways, connect a wanted backend.
                let n = conn.client_output().len();
                conn.client_consumed(n, now);
                let n = conn.backend_output().len();
                to_backend.extend_from_slice(&conn.backend_output()[..n]);
                conn.backend_consumed(n, now);
                if conn.backend_should_close() {
                    check_backend_stream(&std::mem::take(&mut to_backend));
                }
                if conn.backend_wanted().is_some() {
                    check_backend_stream(&std::mem::take(&mut to_backend));
                    conn.backend_connected(usize::from(op >> 4), now);
                }
            }
        }
        assert!(conn.client_output().len() <= max_output);
        assert!(conn.backend_output().len() <= max_output);
        for event in conn.take_events() {
            if let Event::Request { status, .. } = event {
                assert!((100..=599).contains(&status), "{event:?}");
            }
        }
    }
    check_backend_stream(&to_backend);
}

/// The fuzz invariant against smuggling: what a backend connection carried is a sequence of
/// well-formed requests, each delimited by its own framing; only the last may be cut short.
fn check_backend_stream(mut stream: &[u8]) {
    let limits = Limits::default();
    while !stream.is_empty() {
        let (len, framing) = match http::parse_request(stream, &limits) {
            Ok(Status::Complete(len, req)) => (len, req.framing),
            Ok(Status::Partial) => return,
            Err(e) => panic!("forwarded a malformed head ({e}): {stream:?}"),
        };
        stream = &stream[len..];
        match framing {
            Framing::Length(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX).min(stream.len());
                stream = &stream[n..];
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::new(&limits);
                match decoder.decode(stream, |_| {}) {
                    Ok((n, _)) => stream = &stream[n..],
                    Err(e) => panic!("forwarded a malformed chunked body ({e}): {stream:?}"),
                }
            }
            Framing::CloseDelimited | Framing::Tunnel => panic!("unframed request forwarded"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tempfile::TempDir;

    use super::*;

    /// A ProxyConn with a pretend glue around it.
    struct Harness {
        conn: ProxyConn,
        now: Instant,
        /// Everything written to the client and to the backend so far.
        to_client: Vec<u8>,
        to_backend: Vec<u8>,
        events: Vec<Event>,
        backend_closed: usize,
    }

    fn service() -> ServiceCfg {
        ServiceCfg {
            name: "web".into(),
            https: false,
            routes: vec![
                Route {
                    host: Some("a.example".into()),
                    path_prefix: "/api".into(),
                    pool: 1,
                },
                Route {
                    host: Some("A.example".into()),
                    path_prefix: "/".into(),
                    pool: 0,
                },
                Route {
                    host: None,
                    path_prefix: "/static/".into(),
                    pool: 2,
                },
            ],
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            max_body: 1 << 20,
        }
    }

    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 50000);

    impl Harness {
        fn new() -> Harness {
            Harness::with(service(), None)
        }

        fn with(svc: ServiceCfg, tls: Option<Arc<ServerConfig>>) -> Harness {
            let now = Instant::now();
            Harness {
                conn: ProxyConn::new(Arc::new(svc), tls, CLIENT, now),
                now,
                to_client: Vec::new(),
                to_backend: Vec::new(),
                events: Vec::new(),
                backend_closed: 0,
            }
        }

        /// The glue's step after every call.
        fn glue(&mut self) {
            let out = self.conn.client_output().to_vec();
            self.to_client.extend_from_slice(&out);
            self.conn.client_consumed(out.len(), self.now);
            let out = self.conn.backend_output().to_vec();
            self.to_backend.extend_from_slice(&out);
            self.conn.backend_consumed(out.len(), self.now);
            if self.conn.backend_should_close() {
                self.backend_closed += 1;
            }
            self.events.extend(self.conn.take_events());
        }

        fn client(&mut self, bytes: &[u8]) {
            let n = self.conn.client_recv(bytes, self.now);
            assert_eq!(n, bytes.len());
            self.glue();
        }

        fn backend(&mut self, bytes: &[u8]) {
            let n = self.conn.backend_recv(bytes, self.now);
            assert_eq!(n, bytes.len());
            self.glue();
        }

        /// Expect a request for a backend of `pool`, and connect it as backend `id`.
        fn connect(&mut self, pool: usize, id: usize) {
            assert_eq!(self.conn.backend_wanted(), Some(pool));
            assert_eq!(self.conn.backend_wanted(), None, "asked once");
            self.conn.backend_connected(id, self.now);
            self.glue();
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
            self.conn.handle_timeout(self.now);
            self.glue();
        }

        fn take_client(&mut self) -> String {
            String::from_utf8(std::mem::take(&mut self.to_client)).unwrap()
        }

        fn take_backend(&mut self) -> String {
            String::from_utf8(std::mem::take(&mut self.to_backend)).unwrap()
        }

        /// The statuses of the Request events so far.
        fn statuses(&self) -> Vec<u16> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    Event::Request { status, .. } => Some(*status),
                    _ => None,
                })
                .collect()
        }

        fn client_errors(&self) -> Vec<u16> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    Event::ClientError { status } => Some(*status),
                    _ => None,
                })
                .collect()
        }

        fn timeouts(&self) -> Vec<&'static str> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    Event::Timeout { what } => Some(*what),
                    _ => None,
                })
                .collect()
        }
    }

    /// The status code of the first response in `text`.
    fn status_of(text: &str) -> u16 {
        text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    #[test]
    fn routes_match_host_and_path_segments() {
        let svc = service();
        let route = |host: &str, path| svc.route(Some(host.as_bytes()), path);
        assert_eq!(route("a.example", "/api"), Some(1));
        assert_eq!(route("A.EXAMPLE:8080", "/api/x"), Some(1));
        assert_eq!(route("a.example.", "/api/"), Some(1));
        assert_eq!(route("a.example", "/apix"), Some(0));
        assert_eq!(route("a.example", "/"), Some(0));
        assert_eq!(route("b.example", "/static/x.css"), Some(2));
        assert_eq!(route("b.example", "/static"), None, "prefix ends in /");
        assert_eq!(route("b.example", "/api"), None);
        assert_eq!(svc.route(None, "/static/a"), Some(2));
        assert_eq!(svc.route(None, "/"), None);
        let v6 = Route {
            host: Some("[::1]".into()),
            path_prefix: String::new(),
            pool: 9,
        };
        assert!(v6.matches(Some(b"[::1]:80"), "/x"));
        assert!(!v6.matches(Some(b"::1"), "/x"));
        assert_eq!(route_path(&Target::Origin("/a/b?c=/d")), "/a/b");
        assert_eq!(route_path(&Target::Origin("/?x")), "/");
        assert_eq!(route_path(&Target::Asterisk), "/");
    }

    #[test]
    fn get_is_routed_and_rewritten() {
        let mut h = Harness::new();
        let request: &[u8] = b"GET /api/users?id=1 HTTP/1.1\r\n\
              Host: A.Example:8080\r\n\
              User-Agent: t/1\r\n\
              Connection: keep-alive, X-Secret\r\n\
              X-Secret: s\r\n\
              Keep-Alive: timeout=5\r\n\
              Proxy-Connection: keep-alive\r\n\
              TE: trailers\r\n\
              Upgrade: websocket\r\n\
              Trailer: X-Sum\r\n\
              X-Forwarded-For: 203.0.113.9\r\n\
              X-Forwarded-Proto: https\r\n\
              Accept: */*\r\n\r\n";
        h.client(request);
        assert_eq!(h.conn.backend_output(), b"", "nothing before connecting");
        h.connect(1, 17);
        assert_eq!(
            h.take_backend(),
            "GET /api/users?id=1 HTTP/1.1\r\n\
             Host: A.Example:8080\r\n\
             User-Agent: t/1\r\n\
             Accept: */*\r\n\
             X-Forwarded-For: 203.0.113.9, 198.51.100.7\r\n\
             X-Forwarded-Proto: http\r\n\r\n"
        );
        h.backend(
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: X-Internal, keep-alive\r\n\
              X-Internal: 1\r\nKeep-Alive: timeout=3\r\nServer: b\r\n\r\nhi",
        );
        let response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: b\r\n\r\nhi";
        assert_eq!(h.take_client(), response);
        assert_eq!(
            h.events,
            vec![Event::Request {
                pool: 1,
                backend: Some(17),
                status: 200,
                latency: Duration::ZERO,
                bytes_in: request.len() as u64,
                bytes_out: response.len() as u64,
            }]
        );
        assert!(!h.conn.client_should_close());
        assert!(!h.conn.backend_should_close());
    }

    #[test]
    fn connection_cannot_strip_framing() {
        let mut h = Harness::new();
        h.client(
            b"POST /api HTTP/1.1\r\nHost: a.example\r\nConnection: Content-Length, Host\r\n\
              Content-Length: 3\r\n\r\nabc",
        );
        h.connect(1, 0);
        assert_eq!(
            h.take_backend(),
            "POST /api HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\
             X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-Proto: http\r\n\r\nabc"
        );
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let mut h = Harness::new();
        h.client(b"GET http://a.example/api?q HTTP/1.1\r\nHost: other\r\n\r\n");
        h.connect(1, 0);
        assert_eq!(
            h.take_backend(),
            "GET /api?q HTTP/1.1\r\nHost: a.example\r\n\
             X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn post_bodies_are_relayed_byte_exact() {
        // Content-Length, split across reads.
        let mut h = Harness::new();
        h.client(b"POST /static/up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123");
        h.connect(2, 0);
        h.client(b"456");
        h.client(b"789GET /static/next HTTP/1.1\r\nHost: x\r\n\r\n");
        let sent = h.take_backend();
        assert!(sent.ends_with("\r\n\r\n0123456789"), "{sent:?}");
        h.backend(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status_of(&h.take_client()), 201);
        // The pipelined request goes next, on the same backend connection.
        assert_eq!(h.conn.backend_wanted(), None);
        assert!(
            h.take_backend()
                .starts_with("GET /static/next HTTP/1.1\r\n")
        );

        // Chunked, with extensions and trailers, byte by byte.
        let mut h = Harness::new();
        let body: &[u8] = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 9\r\n\r\n";
        h.client(b"PUT /api/x HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n");
        h.connect(1, 0);
        for b in body {
            h.client(std::slice::from_ref(b));
        }
        let sent = h.take_backend();
        assert!(sent.contains("Transfer-Encoding: chunked\r\n"));
        assert!(sent.ends_with(&format!("\r\n\r\n{}", std::str::from_utf8(body).unwrap())));
        h.backend(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(h.take_client(), "HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(h.statuses(), vec![204]);
    }

    #[test]
    fn response_framings() {
        // Chunked, relayed as is.
        let mut h = Harness::new();
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.connect(0, 0);
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                       4\r\nwiki\r\n0\r\nT: 1\r\n\r\n";
        h.backend(chunked.as_bytes());
        assert_eq!(h.take_client(), chunked);
        assert!(!h.conn.client_should_close());
        assert!(!h.conn.backend_should_close());

        // Close-delimited: the client connection closes after it.
        let mut h = Harness::new();
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.connect(0, 0);
        h.backend(b"HTTP/1.1 200 OK\r\n\r\nsome ");
        h.backend(b"bytes");
        assert!(!h.conn.client_should_close());
        h.conn.backend_eof(h.now);
        h.glue();
        assert_eq!(
            h.take_client(),
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome bytes"
        );
        assert!(h.conn.client_should_close() && h.conn.backend_should_close());
        assert!(h.conn.is_done());
        assert_eq!(h.statuses(), vec![200]);

        // Chunked to an HTTP/1.0 client: decoded and close-delimited.
        let mut h = Harness::new();
        h.client(b"GET / HTTP/1.0\r\nHost: a.example\r\nConnection: keep-alive\r\n\r\n");
        h.connect(0, 0);
        assert!(h.take_backend().starts_with("GET / HTTP/1.1\r\n"));
        h.backend(chunked.as_bytes());
        assert_eq!(
            h.take_client(),
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nwiki"
        );
        assert!(h.conn.is_done());
    }

    #[test]
    fn truncated_responses_close_the_client() {
        let mut h = Harness::new();
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.connect(0, 0);
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        h.conn.backend_eof(h.now);
        h.glue();
        assert!(h.take_client().ends_with("\r\n\r\nabc"));
        assert!(h.conn.is_done());
        assert_eq!(h.statuses(), vec![200]);
    }

    #[test]
    fn keep_alive_reuses_the_backend() {
        let mut h = Harness::new();
        h.client(b"GET /api/1 HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.connect(1, 5);
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
        h.client(b"GET /api/2 HTTP/1.1\r\nHost: a.example\r\n\r\n");
        assert_eq!(h.conn.backend_wanted(), None, "reused");
        assert!(h.take_backend().contains("GET /api/2 "));
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb");
        assert_eq!(
            h.take_client(),
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na\
             HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"
        );
        assert_eq!(h.backend_closed, 0);
        let backends: Vec<_> = h
            .events
            .iter()
            .map(|e| match e {
                Event::Request { backend, .. } => *backend,
                _ => None,
            })
            .collect();
        assert_eq!(backends, vec![Some(5), Some(5)]);

        // A route to another pool closes this backend and asks for a new one.
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        assert!(h.conn.backend_should_close());
        h.connect(0, 8);
        assert!(!h.conn.backend_should_close());
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        // Connection: close from the backend closes both.
        assert!(h.take_client().contains("Connection: close\r\n"));
        assert!(h.conn.backend_should_close() && h.conn.is_done());
    }

    #[test]
    fn http10_keep_alive_and_close() {
        let mut h = Harness::new();
        h.client(b"GET / HTTP/1.0\r\nHost: a.example\r\nConnection: keep-alive\r\n\r\n");
        h.connect(0, 0);
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            h.take_client(),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        );
        assert!(!h.conn.client_should_close());
        h.take_backend();
        // Without keep-alive, and without Host (pool 2 routes any host).
        h.client(b"GET /static/a HTTP/1.0\r\n\r\n");
        h.connect(2, 1);
        assert_eq!(
            h.take_backend(),
            "GET /static/a HTTP/1.1\r\nHost: \r\n\
             X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(h.take_client().contains("Connection: close\r\n"));
        assert!(h.conn.is_done());
    }

    #[test]
    fn head_response_has_no_body() {
        let mut h = Harness::new();
        h.client(b"HEAD / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.connect(0, 0);
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
        assert_eq!(
            h.take_client(),
            "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
        );
        assert_eq!(h.statuses(), vec![200]);
        // The exchange is over and the backend kept: the next request reuses it.
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        assert_eq!(h.conn.backend_wanted(), None);
    }

    #[test]
    fn interim_responses_are_relayed() {
        let mut h = Harness::new();
        h.client(
            b"POST /api HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\n\
              Content-Length: 2\r\n\r\n",
        );
        h.connect(1, 0);
        assert!(h.take_backend().contains("Expect: 100-continue\r\n"));
        h.backend(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(h.take_client(), "HTTP/1.1 100 Continue\r\n\r\n");
        h.client(b"ok");
        assert_eq!(h.take_backend(), "ok");
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status_of(&h.take_client()), 200);
        assert_eq!(h.statuses(), vec![200]);
    }

    #[test]
    fn backend_errors() {
        // 503: no healthy backend; the client connection stays.
        let mut h = Harness::new();
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        assert_eq!(h.conn.backend_wanted(), Some(0));
        h.conn.backend_unavailable(h.now);
        h.glue();
        assert_eq!(
            h.take_client(),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
             Content-Length: 24\r\n\r\n503 Service Unavailable\n"
        );
        assert!(!h.conn.client_should_close());
        assert_eq!(h.statuses(), vec![503]);
        assert!(h.client_errors().is_empty());

        // 502: connection refused.
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        assert_eq!(h.conn.backend_wanted(), Some(0));
        h.conn.backend_failed(h.now);
        h.glue();
        assert_eq!(status_of(&h.take_client()), 502);

        // 502: malformed response.
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.connect(0, 0);
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(status_of(&h.take_client()), 502);
        assert!(h.conn.backend_should_close());

        // 502: reset before the response, on a fresh connection (no retry).
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.connect(0, 0);
        h.backend(b"HTTP/1.1 200");
        h.conn.backend_failed(h.now);
        h.glue();
        assert_eq!(status_of(&h.take_client()), 502);

        // 504: connect timeout.
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        assert_eq!(h.conn.backend_wanted(), Some(0));
        h.advance(Duration::from_millis(2999));
        assert_eq!(h.take_client(), "");
        h.advance(Duration::from_millis(1));
        assert_eq!(status_of(&h.take_client()), 504);
        assert!(h.conn.backend_should_close());
        // The connection completing afterwards is not wanted.
        h.conn.backend_connected(3, h.now);
        assert!(h.conn.backend_should_close());

        // 504: response timeout.
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.connect(0, 0);
        assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(30)));
        h.advance(Duration::from_secs(30));
        assert_eq!(status_of(&h.take_client()), 504);
        assert_eq!(h.statuses(), vec![503, 502, 502, 502, 504, 504]);
        assert_eq!(h.timeouts(), vec!["backend_connect", "backend_response"]);
        assert!(!h.conn.client_should_close(), "5xx keep the client");

        // After part of a response: the client connection closes.
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.connect(0, 0);
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab");
        h.conn.backend_failed(h.now);
        h.glue();
        assert_eq!(
            h.take_client(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"
        );
        assert!(h.conn.client_should_close() && h.conn.is_done());
        assert_eq!(h.statuses().last(), Some(&200));
    }

    #[test]
    fn reused_connection_closed_by_the_backend_is_retried() {
        let mut h = Harness::new();
        h.client(b"GET /api HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.connect(1, 0);
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        h.take_backend();
        h.client(b"GET /api/2 HTTP/1.1\r\nHost: a.example\r\n\r\n");
        let first = h.take_backend();
        h.conn.backend_eof(h.now);
        h.glue();
        assert!(h.conn.backend_should_close());
        h.connect(1, 1);
        assert_eq!(h.take_backend(), first, "the same request again");
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.statuses(), vec![200, 200]);
        h.take_client();

        // Not a POST.
        h.client(b"POST /api HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1\r\n\r\nx");
        assert_eq!(h.conn.backend_wanted(), None, "reused");
        h.conn.backend_eof(h.now);
        h.glue();
        assert_eq!(status_of(&h.take_client()), 502);
        assert_eq!(h.conn.backend_wanted(), None);
    }

    #[test]
    fn client_errors() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n", 404),
            (b"GET /\x01 HTTP/1.1\r\nHost: a.example\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: a.example\r\n\r\n", 505),
            (
                b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
                501,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1048577\r\n\r\n",
                413,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\n\
                  Content-Length: 99999999999\r\n\r\n",
                413,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a.example\r\nExpect: magic\r\n\r\n",
                417,
            ),
        ];
        for (request, status) in cases {
            let mut h = Harness::new();
            h.client(request);
            let text = h.take_client();
            assert_eq!(status_of(&text), *status, "{text}");
            assert!(text.contains("Content-Type: text/plain\r\n"));
            assert!(text.ends_with(&format!("\r\n\r\n{status} {}\n", reason_phrase(*status))));
            assert_eq!(h.client_errors(), vec![*status]);
            assert_eq!(h.conn.backend_wanted(), None);
            assert_eq!(h.conn.is_done(), *status != 404, "{status}");
        }

        // 414 and 431 from the limits.
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', 9000));
        let mut h = Harness::new();
        h.client(&long);
        assert_eq!(status_of(&h.take_client()), 414);
        let mut big = b"GET / HTTP/1.1\r\nHost: a.example\r\n".to_vec();
        for i in 0..200 {
            big.extend_from_slice(format!("X-{i}: {}\r\n", "v".repeat(80)).as_bytes());
        }
        let mut h = Harness::new();
        let n = h.conn.client_recv(&big, h.now);
        assert_eq!(n, big.len(), "the rest is read and dropped");
        h.glue();
        assert_eq!(status_of(&h.take_client()), 431);
        assert!(h.conn.is_done());

        // 404 for a HEAD keeps the connection and has no body.
        let mut h = Harness::new();
        h.client(b"HEAD / HTTP/1.1\r\nHost: b\r\n\r\n");
        assert_eq!(
            h.take_client(),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\n"
        );
    }

    #[test]
    fn smuggling_attempts_get_400_and_reach_no_backend() {
        let cases: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4\r\n\
              Content-Length: 5\r\n\r\nabcde",
            b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n\
              5x\r\nhello\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n\
              0x5\r\nhello\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello!!\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.example\r\nX-A: b\r\n c\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a.example\n\n",
        ];
        for request in cases {
            let mut h = Harness::new();
            h.client(request);
            let text = h.take_client();
            assert_eq!(
                status_of(&text),
                400,
                "{:?}",
                String::from_utf8_lossy(request)
            );
            assert!(text.contains("Connection: close\r\n"));
            assert_eq!(h.conn.backend_wanted(), None);
            assert_eq!(h.take_backend(), "");
            assert!(h.conn.is_done());
            assert_eq!(h.client_errors(), vec![400]);
        }

        // A bad chunk after part of the body went to a connected backend: 400, and the
        // backend connection is closed with the request incomplete.
        let mut h = Harness::new();
        h.client(b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n");
        h.connect(0, 0);
        h.client(b"3\r\nabc\r\n");
        assert!(h.take_backend().ends_with("\r\n\r\n3\r\nabc\r\n"));
        h.client(b"zz\r\n");
        assert_eq!(h.take_backend(), "");
        assert_eq!(status_of(&h.take_client()), 400);
        assert!(h.conn.backend_should_close() && h.conn.is_done());
        assert_eq!(h.statuses(), vec![400]);
    }

    #[test]
    fn chunked_body_over_the_cap_is_413() {
        let mut svc = service();
        svc.max_body = 4;
        let mut h = Harness::with(svc, None);
        h.client(b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n");
        h.connect(0, 0);
        h.client(b"3\r\nabc\r\n");
        h.client(b"3\r\ndef\r\n");
        assert_eq!(status_of(&h.take_client()), 413);
        assert!(!h.take_backend().contains("def"));
        assert!(h.conn.is_done());
    }

    #[test]
    fn client_timeouts() {
        // 408 for a slow head.
        let mut h = Harness::new();
        h.client(b"GET / HT");
        assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(10)));
        h.advance(Duration::from_secs(10));
        let text = h.take_client();
        assert_eq!(status_of(&text), 408);
        assert!(text.contains("Connection: close\r\n"));
        assert!(h.conn.is_done());
        assert_eq!(h.timeouts(), vec!["client_header"]);
        assert_eq!(h.client_errors(), vec![408]);

        // Nothing sent at all: closed silently.
        let mut h = Harness::new();
        h.advance(Duration::from_secs(10));
        assert_eq!(h.take_client(), "");
        assert!(h.conn.is_done());

        // Idle keep-alive: closed silently after 60 s.
        let mut h = Harness::new();
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.connect(0, 0);
        h.advance(Duration::from_secs(1));
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        h.take_client();
        assert_eq!(h.conn.poll_timeout(), Some(h.now + Duration::from_secs(60)));
        h.advance(Duration::from_secs(60));
        assert_eq!(h.take_client(), "");
        assert!(h.conn.is_done() && h.conn.backend_should_close());
        assert_eq!(h.timeouts(), vec!["client_idle"]);
        match h.events[0] {
            Event::Request { latency, .. } => assert_eq!(latency, Duration::from_secs(1)),
            ref e => panic!("{e:?}"),
        }

        // A stalled request body: 408.
        let mut h = Harness::new();
        h.client(b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 9\r\n\r\nab");
        h.connect(0, 0);
        h.advance(Duration::from_secs(30));
        assert_eq!(status_of(&h.take_client()), 408);
        assert_eq!(h.timeouts(), vec!["body_idle"]);
    }

    #[test]
    fn client_eof() {
        // A request then FIN: answered, then closed.
        let mut h = Harness::new();
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.conn.client_eof(h.now);
        h.connect(0, 0);
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(h.take_client().contains("Connection: close\r\n"));
        assert!(h.conn.is_done());

        // FIN in the middle of a body: abandoned.
        let mut h = Harness::new();
        h.client(b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 9\r\n\r\nab");
        h.connect(0, 0);
        h.conn.client_eof(h.now);
        h.glue();
        assert!(h.conn.is_done() && h.conn.backend_should_close());
        assert_eq!(h.statuses(), vec![499]);
    }

    #[test]
    fn backpressure() {
        let mut h = Harness::new();
        h.client(b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1000000\r\n\r\n");
        assert_eq!(h.conn.backend_wanted(), Some(0));
        // No backend yet: bout and cin fill up, then nothing more is taken.
        let chunk = vec![b'x'; 4096];
        let mut taken = 0;
        loop {
            let n = h.conn.client_recv(&chunk, h.now);
            taken += n;
            if n == 0 {
                break;
            }
            assert!(taken < 200_000, "unbounded");
        }
        // bout holds the forwarded head and body up to its cap, cin a full buffer more.
        assert!(taken > OUT_CAP && taken <= OUT_CAP + MIN_IN_CAP, "{taken}");
        assert_eq!(h.conn.client_recv(&chunk, h.now), 0);
        // Connected and drained: the client may send more.
        h.conn.backend_connected(0, h.now);
        h.glue();
        assert!(h.conn.client_recv(&chunk, h.now) > 0);

        // The other way: a client that does not read stops the backend's bytes.
        let mut h = Harness::new();
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.connect(0, 0);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
        assert_eq!(h.conn.backend_recv(head, h.now), head.len());
        let mut taken = 0;
        loop {
            let n = h.conn.backend_recv(&chunk, h.now);
            taken += n;
            if n == 0 {
                break;
            }
            assert!(taken < 200_000, "unbounded");
        }
        assert!(h.conn.client_output().len() <= OUT_CAP);
        let out = h.conn.client_output().len();
        h.conn.client_consumed(out, h.now);
        assert!(h.conn.backend_recv(&chunk, h.now) > 0);
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let mut h = Harness::new();
        h.client(
            b"GET /api/1 HTTP/1.1\r\nHost: a.example\r\n\r\n\
              GET /nope HTTP/1.1\r\nHost: b.example\r\n\r\n\
              GET /api/3 HTTP/1.1\r\nHost: a.example\r\n\r\n",
        );
        h.connect(1, 0);
        let first = h.take_backend();
        assert!(first.starts_with("GET /api/1 ") && !first.contains("/api/3"));
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1");
        assert!(h.take_backend().starts_with("GET /api/3 "));
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3");
        let text = h.take_client();
        let statuses: Vec<u16> = text
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| status_of(&text[i..]))
            .collect();
        assert_eq!(statuses, vec![200, 404, 200]);
        assert!(text.ends_with("\r\n\r\n3"));
    }

    /// Found by the `http_proxy` fuzz target: a connection reported while one was in use
    /// made the proxy ask the glue to close the backend connection and yet go on relaying
    /// the request's body into it, so its tail (`0\r\n\r\n`) began the next connection.
    #[test]
    fn a_connection_reported_while_one_is_in_use_fails_the_exchange() {
        let mut h = Harness::new();
        h.client(
            b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nabcde",
        );
        h.connect(0, 0);
        assert!(h.take_backend().ends_with("\r\n\r\n8\r\nabcde"));
        h.conn.backend_connected(1, h.now);
        h.glue();
        assert!(h.conn.backend_should_close());
        assert_eq!(status_of(&h.take_client()), 502);
        // The rest of the body goes nowhere, and no new connection is asked for.
        let _ = h.conn.client_recv(b"fgh\r\n0\r\n\r\n", h.now);
        h.glue();
        assert_eq!(h.take_backend(), "");
        assert_eq!(h.conn.backend_wanted(), None);
    }

    #[test]
    fn unsolicited_backend_bytes_drop_the_backend() {
        let mut h = Harness::new();
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.connect(0, 0);
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n");
        assert!(h.conn.backend_should_close(), "extra bytes: not reusable");
        h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
        h.connect(0, 1);
    }

    #[test]
    fn bytes_after_a_response_in_the_same_read_replace_the_backend() {
        let mut h = Harness::new();
        h.client(
            b"GET /api/1 HTTP/1.1\r\nHost: a.example\r\n\r\n\
              GET /api/2 HTTP/1.1\r\nHost: a.example\r\n\r\n",
        );
        h.connect(1, 0);
        assert!(h.take_backend().starts_with("GET /api/1 "));
        // A response larger than the input buffer, then a second one nobody asked for, all
        // in one read.
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {MIN_IN_CAP}\r\n\r\n");
        let mut read = head.into_bytes();
        read.resize(read.len() + MIN_IN_CAP, b'x');
        read.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil");
        h.backend(&read);
        assert!(h.conn.backend_should_close());
        assert_eq!(h.take_backend(), "", "not on the old connection");
        h.connect(1, 1);
        assert!(h.take_backend().starts_with("GET /api/2 "));
        h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood");
        let text = h.take_client();
        assert!(text.ends_with("good") && !text.contains("evil"));
        assert_eq!(h.statuses(), vec![200, 200]);
    }

    #[test]
    fn unasked_switching_protocols_is_502() {
        for request in [&b"GET"[..], b"HEAD"] {
            let mut h = Harness::new();
            let mut head = request.to_vec();
            head.extend_from_slice(b" / HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\n\r\n");
            h.client(&head);
            h.connect(0, 0);
            assert!(!h.take_backend().contains("websocket"));
            h.backend(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
            assert_eq!(status_of(&h.take_client()), 502);
        }
    }

    // ---- HTTPS -----------------------------------------------------------------------------

    mod https {
        use std::io::{Read, Write};

        use rustls::ClientConnection;

        use super::*;
        use crate::tls::testcert::generate;
        use crate::tls::{CertStore, insecure_client_config, server_config};

        fn tls_harness(dir: &TempDir) -> Harness {
            let spec = generate(dir.path(), "lb", "lb.example", &["lb.example"]);
            let store = Arc::new(CertStore::load(&[spec]).unwrap());
            let mut svc = service();
            svc.routes.push(Route {
                host: Some("lb.example".into()),
                path_prefix: "/".into(),
                pool: 3,
            });
            Harness::with(svc, Some(server_config(store)))
        }

        /// Move records between the rustls client and the proxy until both are quiet.
        fn shuttle(client: &mut ClientConnection, h: &mut Harness) {
            for _ in 0..32 {
                let mut records = Vec::new();
                while client.wants_write() {
                    client.write_tls(&mut records).unwrap();
                }
                if !records.is_empty() {
                    h.client(&records);
                }
                let out = std::mem::take(&mut h.to_client);
                if records.is_empty() && out.is_empty() {
                    return;
                }
                let mut rd = &out[..];
                while !rd.is_empty() {
                    client.read_tls(&mut rd).unwrap();
                    client.process_new_packets().unwrap();
                }
            }
            panic!("no quiet");
        }

        #[test]
        fn request_over_tls() {
            let dir = TempDir::new().unwrap();
            let mut h = tls_harness(&dir);
            let mut client =
                ClientConnection::new(insecure_client_config(), "lb.example".try_into().unwrap())
                    .unwrap();
            shuttle(&mut client, &mut h);
            assert!(!client.is_handshaking());
            assert_eq!(
                h.events,
                vec![Event::TlsHandshake {
                    ok: true,
                    version: Some(ProtocolVersion::TLSv1_3)
                }]
            );
            client
                .writer()
                .write_all(b"GET /x HTTP/1.1\r\nHost: lb.example\r\n\r\n")
                .unwrap();
            shuttle(&mut client, &mut h);
            h.connect(3, 0);
            assert_eq!(
                h.take_backend(),
                "GET /x HTTP/1.1\r\nHost: lb.example\r\n\
                 X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-Proto: https\r\n\r\n"
            );
            h.backend(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
            shuttle(&mut client, &mut h);
            let mut response = vec![0; 43];
            client.reader().read_exact(&mut response).unwrap();
            assert_eq!(
                response,
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            );
            assert_eq!(h.statuses(), vec![200]);

            // Connection: close: the proxy answers, then sends close_notify.
            client
                .writer()
                .write_all(b"GET /y HTTP/1.1\r\nHost: lb.example\r\nConnection: close\r\n\r\n")
                .unwrap();
            shuttle(&mut client, &mut h);
            h.backend(b"HTTP/1.1 204 No Content\r\n\r\n");
            shuttle(&mut client, &mut h);
            let mut all = Vec::new();
            client.reader().read_to_end(&mut all).unwrap();
            assert_eq!(all, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            assert!(h.conn.is_done());
        }

        #[test]
        fn tls_garbage_fails_the_handshake() {
            let dir = TempDir::new().unwrap();
            let mut h = tls_harness(&dir);
            h.client(b"GET / HTTP/1.1\r\nHost: lb.example\r\n\r\n");
            assert_eq!(
                h.events,
                vec![Event::TlsHandshake {
                    ok: false,
                    version: None
                }]
            );
            assert!(h.conn.client_should_close() && h.conn.is_done());
            assert_eq!(h.conn.backend_wanted(), None);
        }

        #[test]
        fn tls11_client_hello_is_refused() {
            let dir = TempDir::new().unwrap();
            let mut h = tls_harness(&dir);
            // A TLS 1.1 ClientHello (RFC 4346 §7.4.1.2): legacy_version 3.2, no
            // supported_versions extension, one TLS 1.1 cipher suite.
            let mut hello = vec![0x03, 0x02];
            hello.extend_from_slice(&[0x11; 32]); // random
            hello.push(0); // session_id
            hello.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
            hello.extend_from_slice(&[0x01, 0x00]); // null compression
            let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
            handshake.extend_from_slice(&hello);
            let mut record = vec![0x16, 0x03, 0x02, 0x00, handshake.len() as u8];
            record.extend_from_slice(&handshake);
            h.client(&record);
            assert_eq!(
                h.events,
                vec![Event::TlsHandshake {
                    ok: false,
                    version: None
                }]
            );
            // A fatal alert (RFC 8446 §6.2): rustls says handshake_failure (40) where RFC 8446
            // §D.2 suggests protocol_version (70); either ends the handshake.
            let alert = h.take_client().into_bytes();
            assert_eq!(alert.first(), Some(&0x15), "{alert:02x?}");
            assert_eq!(alert.get(5), Some(&2), "fatal: {alert:02x?}");
            assert!(matches!(alert.get(6), Some(40 | 70)), "{alert:02x?}");
            assert!(h.conn.is_done());
        }
    }

    // ---- fuzz ------------------------------------------------------------------------------

    #[test]
    fn fuzz_proxy_on_scripts() {
        fuzz_proxy(&[]);
        // Request, connect, response, flush, idle timeout.
        fuzz_proxy(&[0x02, 0x06, 0x07, 0x01, 0x43, 0x0f, 0x0d, 0x0d]);
        // POST with a body, 100 Continue, response, pipelined HEAD from 1.0, eof.
        fuzz_proxy(&[
            0x12, 0x06, 0x07, 0x02, 0x63, 0x0f, 0x43, 0x32, 0x0f, 0x06, 0x05, 0x04,
        ]);
        // Chunked request and response, then everything failing.
        fuzz_proxy(&[0x22, 0x06, 0x07, 0x00, 0x53, 0x08, 0x09, 0x0e, 0x0c, 0xff]);
    }

    proptest! {
        #[test]
        fn fuzz_proxy_never_panics(data in prop::collection::vec(any::<u8>(), 0..400)) {
            fuzz_proxy(&data);
        }

        #[test]
        fn fuzz_proxy_on_op_sequences(
            ops in prop::collection::vec(
                (
                    prop_oneof![
                        6 => Just(2u8), // client fragment
                        6 => Just(3u8), // backend fragment
                        8 => Just(15u8), // glue step
                        2 => Just(0u8), // client bytes
                        2 => Just(1u8), // backend bytes
                        1 => 4u8..=14,
                    ],
                    0u8..16,
                    any::<u8>(),
                ),
                0..80,
            ),
        ) {
            // Well-formed steps, weighted towards exchanges that get somewhere.
            let mut data = Vec::new();
            for (op, high, arg) in ops {
                match op {
                    0 | 1 => data.extend_from_slice(&[op, 1, arg]),
                    2 | 3 | 15 => data.push(op | (high << 4)),
                    4..=6 | 8 | 9 | 14 => data.push(op),
                    _ => data.extend_from_slice(&[op, arg]),
                }
            }
            fuzz_proxy(&data);
        }
    }
}
