//! A fault proxy in front of the emulator: an HTTP/1.1 proxy on loopback that the SDK clients of a
//! controller under test use as their endpoint. Per request it can
//!
//! - fail it the way the real service fails: throttling (HTTP 400 with the protocol's error
//!   shape: EC2 `RequestLimitExceeded` in XML; DynamoDB `ThrottlingException`, EventBridge
//!   `ThrottlingException` and SQS `RequestThrottled` as `__type` in JSON) and 5xx, never reaching
//!   the emulator;
//! - time it out (hold the connection past the client's attempt timeout) or reset the connection,
//!   either before forwarding it (AWS never saw it) or after (AWS acted, the answer is lost);
//! - crash the caller: after the Nth answered call from arming, every later request is refused
//!   and `crashed()` resolves, so a harness drops the handler's future — the process died right
//!   after that AWS call, and nothing after it reached AWS.
//!
//! The service of a request is read from its `X-Amz-Target` header (DynamoDB, EventBridge, SQS) or
//! its `Action=` form field (EC2); which requests fail is drawn from a seeded generator at the
//! chosen rate per service.
//!
//! Two things the emulator gets wrong are set right here, as AWS does them, because faults make
//! them matter: retried `RunInstances` with the same `ClientToken` and `TransactWriteItems` with
//! the same `ClientRequestToken` (the SDK fills it once per operation) return the first answer
//! instead of acting twice; and DynamoDB requests are served one at a time, because moto checks a
//! transaction's conditions and writes without a lock (and rolls a failed transaction back by
//! restoring a copy of the whole table), so concurrent writers would lose updates in the emulator
//! that DynamoDB never loses. Both can be switched off.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A way a call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// HTTP 400 with the service's throttling error code; not forwarded.
    Throttle,
    /// HTTP 500 with the service's internal-error code; not forwarded.
    ServerError,
    /// No answer until the client gives up; not forwarded.
    Timeout,
    /// Forwarded (AWS acts), then no answer until the client gives up.
    TimeoutAfterForward,
    /// Connection reset; not forwarded.
    Reset,
    /// Forwarded (AWS acts), then the connection is reset instead of answering.
    ResetAfterForward,
}

impl FaultKind {
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Throttle,
        FaultKind::ServerError,
        FaultKind::Timeout,
        FaultKind::TimeoutAfterForward,
        FaultKind::Reset,
        FaultKind::ResetAfterForward,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Throttle => "throttle",
            FaultKind::ServerError => "5xx",
            FaultKind::Timeout => "timeout",
            FaultKind::TimeoutAfterForward => "timeout-after-forward",
            FaultKind::Reset => "reset",
            FaultKind::ResetAfterForward => "reset-after-forward",
        }
    }
}

/// What to inject. The default injects nothing.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Share of requests to fail per service (`ec2`, `dynamodb`, `events`, `sqs`); absent: 0.
    pub rates: BTreeMap<&'static str, f64>,
    /// When not empty, only these operations (e.g. `RunInstances`) may fail.
    pub only: Vec<String>,
    /// The kinds drawn from, uniformly.
    pub kinds: Vec<FaultKind>,
    /// How long a timeout holds the connection (longer than the client's attempt timeout).
    pub hold: Duration,
    /// Added latency per operation name.
    pub delays: BTreeMap<String, Duration>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            rates: BTreeMap::new(),
            only: Vec::new(),
            kinds: FaultKind::ALL.to_vec(),
            hold: Duration::from_secs(3),
            delays: BTreeMap::new(),
        }
    }
}

impl FaultConfig {
    /// `rate` of the calls to each of EC2, DynamoDB and EventBridge fail, every kind of fault.
    pub fn aws_calls(rate: f64) -> Self {
        let mut c = FaultConfig::default();
        for s in ["ec2", "dynamodb", "events"] {
            c.rates.insert(s, rate);
        }
        c
    }
}

/// What the proxy saw and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub requests: u64,
    pub faults: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
    pub by_service: BTreeMap<String, u64>,
    /// Retries answered from the idempotency-token cache instead of acting twice.
    pub replayed: u64,
    /// Requests refused because the caller had crashed.
    pub refused_after_crash: u64,
}

#[derive(Debug, Default)]
struct Crash {
    /// Crash after this many more answered calls.
    after: Option<u64>,
    answered: u64,
    crashed: bool,
}

struct Shared {
    upstream: SocketAddr,
    config: Mutex<FaultConfig>,
    rng: Mutex<SplitMix64>,
    stats: Mutex<FaultStats>,
    crash: Mutex<Crash>,
    crashes: watch::Sender<u64>,
    /// Answered calls since the last `reset_calls`, and their operations.
    calls: AtomicU64,
    call_log: Mutex<Vec<String>>,
    serialize_dynamodb: bool,
    honour_tokens: bool,
    dynamodb: tokio::sync::Mutex<()>,
    tokens: Mutex<HashMap<String, Vec<u8>>>,
    token_turn: tokio::sync::Mutex<()>,
}

/// The running proxy; stops when dropped.
pub struct FaultProxy {
    pub endpoint: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultProxy {
    /// A proxy to `upstream` (`http://127.0.0.1:PORT`), injecting nothing until `set_faults`.
    pub async fn start(upstream: &str, seed: u64) -> Result<Self> {
        Self::start_with(upstream, seed, true, true).await
    }

    /// `serialize_dynamodb` and `honour_tokens`: see the module documentation.
    pub async fn start_with(
        upstream: &str,
        seed: u64,
        serialize_dynamodb: bool,
        honour_tokens: bool,
    ) -> Result<Self> {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .context("upstream must be http://IP:PORT")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            upstream,
            config: Mutex::new(FaultConfig::default()),
            rng: Mutex::new(SplitMix64(seed)),
            stats: Mutex::new(FaultStats::default()),
            crash: Mutex::new(Crash::default()),
            crashes: watch::channel(0).0,
            calls: AtomicU64::new(0),
            call_log: Mutex::new(Vec::new()),
            serialize_dynamodb,
            honour_tokens,
            dynamodb: tokio::sync::Mutex::new(()),
            tokens: Mutex::new(HashMap::new()),
            token_turn: tokio::sync::Mutex::new(()),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(s, conn).await;
                });
            }
        });
        Ok(FaultProxy {
            endpoint,
            shared,
            task,
        })
    }

    pub fn set_faults(&self, config: FaultConfig) {
        *lock(&self.shared.config) = config;
    }

    pub fn clear_faults(&self) {
        self.set_faults(FaultConfig::default());
    }

    pub fn stats(&self) -> FaultStats {
        lock(&self.shared.stats).clone()
    }

    /// Answered calls since the last reset (to count the calls of a handler).
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// The operations of those calls (`dynamodb:TransactWriteItems`, ...), in order.
    pub fn call_log(&self) -> Vec<String> {
        lock(&self.shared.call_log).clone()
    }

    pub fn reset_calls(&self) {
        self.shared.calls.store(0, Ordering::SeqCst);
        lock(&self.shared.call_log).clear();
    }

    /// The caller crashes right after the `n`th call answered from now (`n` ≥ 1).
    pub fn arm_crash(&self, n: u64) {
        *lock(&self.shared.crash) = Crash {
            after: Some(n),
            answered: 0,
            crashed: false,
        };
    }

    /// Back to normal service (after a crash, or if it never came).
    pub fn disarm(&self) {
        *lock(&self.shared.crash) = Crash::default();
    }

    /// Resolves when an armed crash happens.
    pub fn crashed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.crashes.subscribe();
        async move {
            let _ = rx.changed().await;
        }
    }
}

/// The generator behind every random choice: small, seeded, the same on every platform.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// One HTTP/1.1 request as read from the client.
struct Request {
    head: Vec<String>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.iter().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// (service, operation): `X-Amz-Target` for the JSON protocols, `Action=` for EC2's query
    /// protocol, the credential scope of the signature otherwise.
    fn operation(&self) -> (String, String) {
        if let Some(target) = self.header("x-amz-target") {
            let (prefix, op) = target.split_once('.').unwrap_or((target, ""));
            let service = if prefix.starts_with("DynamoDB") {
                "dynamodb"
            } else if prefix.starts_with("AWSEvents") {
                "events"
            } else if prefix.starts_with("AmazonSQS") {
                "sqs"
            } else {
                prefix
            };
            return (service.to_string(), op.to_string());
        }
        let scope = self
            .header("authorization")
            .and_then(|a| a.split("Credential=").nth(1))
            .and_then(|c| c.split('/').nth(3))
            .unwrap_or("ec2")
            .to_string();
        let action = form_field(&self.body, "Action").unwrap_or_default();
        (scope, action)
    }

    /// The idempotency token of a request AWS answers idempotently.
    fn token(&self, service: &str, op: &str) -> Option<String> {
        match (service, op) {
            ("ec2", "RunInstances") => form_field(&self.body, "ClientToken"),
            ("dynamodb", "TransactWriteItems") => {
                serde_json::from_slice::<serde_json::Value>(&self.body)
                    .ok()?
                    .get("ClientRequestToken")?
                    .as_str()
                    .map(str::to_string)
            }
            _ => None,
        }
        .map(|t| format!("{service}/{op}/{t}"))
    }

    /// The request to send upstream: the same, asking the emulator to close after answering.
    fn forwarded(&self) -> Vec<u8> {
        let mut out = String::new();
        for (i, line) in self.head.iter().enumerate() {
            if i > 0 {
                let name = line.split(':').next().unwrap_or_default().trim();
                if name.eq_ignore_ascii_case("connection")
                    || name.eq_ignore_ascii_case("keep-alive")
                {
                    continue;
                }
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// A form-encoded key or value decoded (`%XX` escapes, `+` for a space).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_request(conn: &mut TcpStream) -> Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            bail!("request head too large");
        }
    };
    let head: Vec<String> = String::from_utf8_lossy(&buf[..head_end])
        .split("\r\n")
        .map(str::to_string)
        .collect();
    let mut body = buf[head_end + 4..].to_vec();
    let req = Request {
        head,
        body: Vec::new(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        bail!("chunked request bodies are not supported");
    }
    let len: usize = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while body.len() < len {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            bail!("request body cut short");
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok(Some(Request {
        head: req.head,
        body,
    }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends the request to the emulator and returns its whole answer, made safe to relay on a
/// connection that closes after it (`connection: close`, a length when it had none).
async fn forward(shared: &Shared, req: &Request) -> Result<Vec<u8>> {
    let mut up = TcpStream::connect(shared.upstream).await?;
    up.write_all(&req.forwarded()).await?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw).await?;
    let Some(head_end) = find(&raw, b"\r\n\r\n") else {
        bail!("the emulator closed without an answer");
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let body = &raw[head_end + 4..];
    let mut lines: Vec<&str> = head.split("\r\n").collect();
    let has_length = lines.iter().skip(1).any(|l| {
        let n = l.split(':').next().unwrap_or_default().trim();
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    });
    lines.retain(|l| {
        !l.split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .eq_ignore_ascii_case("connection")
    });
    let mut out = lines.join("\r\n");
    out.push_str("\r\nconnection: close\r\n");
    if !has_length {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    Ok(bytes)
}

fn status_ok(response: &[u8]) -> bool {
    response.starts_with(b"HTTP/1.1 2") || response.starts_with(b"HTTP/1.0 2")
}

/// The error answer of `service` for a fault, in its protocol's shape.
fn error_response(service: &str, kind: FaultKind, n: u64) -> Vec<u8> {
    let throttle = kind == FaultKind::Throttle;
    let status = if throttle {
        "400 Bad Request"
    } else {
        "500 Internal Server Error"
    };
    let request_id = format!("fault-{n:08}");
    let (content_type, extra, body) = match service {
        "ec2" => {
            let (code, message) = if throttle {
                ("RequestLimitExceeded", "Request limit exceeded.")
            } else {
                (
                    "InternalError",
                    "An internal error has occurred. Retry your request.",
                )
            };
            (
                "text/xml;charset=UTF-8",
                String::new(),
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>"
                ),
            )
        }
        "dynamodb" => {
            let t = if throttle {
                "ThrottlingException"
            } else {
                "InternalServerError"
            };
            (
                "application/x-amz-json-1.0",
                String::new(),
                format!(
                    "{{\"__type\":\"com.amazonaws.dynamodb.v20120810#{t}\",\"message\":\"injected {}\"}}",
                    kind.name()
                ),
            )
        }
        "sqs" => {
            let t = if throttle {
                "RequestThrottled"
            } else {
                "InternalError"
            };
            let fault = if throttle { "Sender" } else { "Receiver" };
            (
                "application/x-amz-json-1.0",
                format!("x-amzn-query-error: {t};{fault}\r\n"),
                format!(
                    "{{\"__type\":\"com.amazonaws.sqs#{t}\",\"message\":\"injected {}\"}}",
                    kind.name()
                ),
            )
        }
        // EventBridge (JSON 1.1) and anything else speaking JSON.
        _ => {
            let t = if throttle {
                "ThrottlingException"
            } else {
                "InternalException"
            };
            (
                "application/x-amz-json-1.1",
                String::new(),
                format!(
                    "{{\"__type\":\"{t}\",\"message\":\"injected {}\"}}",
                    kind.name()
                ),
            )
        }
    };
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\nx-amzn-requestid: {request_id}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn reset(conn: TcpStream) {
    // Linger 0: closing sends RST instead of FIN. (Deprecated because a non-zero linger blocks
    // the thread on drop; a zero one does not.)
    #[allow(deprecated)]
    let _ = conn.set_linger(Some(Duration::ZERO));
    drop(conn);
}

async fn serve(shared: Arc<Shared>, mut conn: TcpStream) -> Result<()> {
    let Some(req) = read_request(&mut conn).await? else {
        return Ok(());
    };
    let (service, op) = req.operation();
    if lock(&shared.crash).crashed {
        lock(&shared.stats).refused_after_crash += 1;
        reset(conn);
        return Ok(());
    }
    let (config, n) = {
        let mut stats = lock(&shared.stats);
        stats.requests += 1;
        (lock(&shared.config).clone(), stats.requests)
    };
    if let Some(d) = config.delays.get(&op) {
        tokio::time::sleep(*d).await;
    }
    let rate = config.rates.get(service.as_str()).copied().unwrap_or(0.0);
    let eligible = config.only.is_empty() || config.only.contains(&op);
    let fault = if rate > 0.0 && eligible && !config.kinds.is_empty() {
        let mut rng = lock(&shared.rng);
        (rng.next_f64() < rate).then(|| config.kinds[rng.below(config.kinds.len())])
    } else {
        None
    };
    if let Some(kind) = fault {
        let mut stats = lock(&shared.stats);
        stats.faults += 1;
        *stats.by_kind.entry(kind.name()).or_default() += 1;
        *stats.by_service.entry(service.clone()).or_default() += 1;
    }
    match fault {
        Some(kind @ (FaultKind::Throttle | FaultKind::ServerError)) => {
            conn.write_all(&error_response(&service, kind, n)).await?;
            return Ok(());
        }
        Some(FaultKind::Timeout) => {
            tokio::time::sleep(config.hold).await;
            return Ok(());
        }
        Some(FaultKind::Reset) => {
            reset(conn);
            return Ok(());
        }
        _ => {}
    }
    let token = shared
        .honour_tokens
        .then(|| req.token(&service, &op))
        .flatten();
    // Requests carrying a token are served one at a time, so a retry racing the first attempt
    // waits for its answer (AWS answers such a retry once the first is done).
    let _token_turn = match &token {
        Some(_) => Some(shared.token_turn.lock().await),
        None => None,
    };
    let cached = token
        .as_ref()
        .and_then(|t| lock(&shared.tokens).get(t).cloned());
    let response = match cached {
        Some(r) => {
            lock(&shared.stats).replayed += 1;
            r
        }
        None => {
            let _serial = if shared.serialize_dynamodb && service == "dynamodb" {
                Some(shared.dynamodb.lock().await)
            } else {
                None
            };
            let r = forward(&shared, &req).await?;
            if let Some(t) = token {
                if status_ok(&r) {
                    lock(&shared.tokens).insert(t, r.clone());
                }
            }
            r
        }
    };
    drop(_token_turn);
    match fault {
        Some(FaultKind::TimeoutAfterForward) => {
            tokio::time::sleep(config.hold).await;
            return Ok(());
        }
        Some(FaultKind::ResetAfterForward) => {
            reset(conn);
            return Ok(());
        }
        _ => {}
    }
    conn.write_all(&response).await?;
    conn.flush().await?;
    shared.calls.fetch_add(1, Ordering::SeqCst);
    lock(&shared.call_log).push(format!("{service}:{op}"));
    let crashed_now = {
        let mut c = lock(&shared.crash);
        match c.after {
            Some(after) if !c.crashed => {
                c.answered += 1;
                c.crashed = c.answered >= after;
                c.crashed
            }
            _ => false,
        }
    };
    if crashed_now {
        shared.crashes.send_modify(|n| *n += 1);
    }
    Ok(())
}
