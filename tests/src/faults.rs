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
//!   after that AWS call, and nothing after it reached AWS;
//! - refuse EC2 launches for lack of capacity in chosen (instance type, availability zone) pools,
//!   On-Demand and Spot or Spot only, the way EC2 does (`set_no_capacity`; see `NoCapacity`).
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
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// `RunInstances` answered `InsufficientInstanceCapacity` (not forwarded), in all and per
    /// (instance type, availability zone). Each attempt counts: the SDK retries this answer.
    pub no_capacity: u64,
    pub no_capacity_by_pool: BTreeMap<(String, String), u64>,
}

/// The (instance type, availability zone) pools EC2 has no capacity in, as the proxy plays them.
///
/// A `RunInstances` whose `InstanceType` and zone fall in a refused pool is not forwarded and is
/// answered as EC2 answers it: HTTP 500 with the code `InsufficientInstanceCapacity` in EC2's XML
/// error shape. EC2 files this code among its server errors, which come with a 5xx status, and
/// clients report it with status 500 (`BotoServerError: 500 Internal Server Error` with this very
/// XML, aws-sdk-js `statusCode: 500, retryable: true`); 500 is what makes the SDKs retry it (the
/// Rust SDK's standard retry retries 500, 502, 503 and 504 by status), so a launch refused here is
/// attempted as many times as against EC2 before its caller sees the code. A Spot launch
/// (`InstanceMarketOptions.MarketType=spot`) into an empty Spot pool gets the same code, with the
/// message "There is no Spot capacity available that matches your request."; the other Spot
/// codes are not about capacity (`SpotMaxPriceTooLow`: the maximum price is below the Spot price)
/// and are not played.
///
/// The zone of a launch is its subnet's (`SubnetId`, or `NetworkInterface.1.SubnetId`), which
/// the proxy asks the emulator once per subnet (`DescribeSubnets`, with the launch's credentials
/// so that it reads the same account and region; the proxy's own call, not counted nor logged),
/// else `Placement.AvailabilityZone`. A launch with neither, or whose instance type comes only
/// from a launch template, is forwarded: EC2 picks the zone, and the proxy does not read
/// templates.
#[derive(Debug, Clone, Default)]
struct NoCapacity {
    /// Pools refusing every launch, On-Demand and Spot.
    all: BTreeSet<(String, String)>,
    /// Pools refusing Spot launches only (the Spot pool is empty, On-Demand capacity is not).
    spot: BTreeSet<(String, String)>,
}

impl NoCapacity {
    fn pools(&self, spot: bool) -> impl Iterator<Item = &(String, String)> {
        self.all
            .iter()
            .chain(self.spot.iter().filter(move |_| spot))
    }
}

fn pools(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    pairs
        .iter()
        .map(|(t, z)| (t.to_string(), z.to_string()))
        .collect()
}

/// A launch refused for lack of capacity.
struct Refusal {
    instance_type: String,
    zone: String,
    spot: bool,
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
    /// When each EC2 request arrived (EC2 counts its rate on arrival), since the last reset.
    ec2_arrivals: Mutex<Vec<std::time::SystemTime>>,
    serialize_dynamodb: bool,
    honour_tokens: bool,
    dynamodb: tokio::sync::Mutex<()>,
    tokens: Mutex<HashMap<String, Vec<u8>>>,
    token_turn: tokio::sync::Mutex<()>,
    no_capacity: Mutex<NoCapacity>,
    /// Subnet id to availability zone, as the emulator answered (a subnet never moves).
    subnet_zones: Mutex<HashMap<String, String>>,
    /// Seconds added to every `launchTime` EC2 answers (`set_launch_time_shift`).
    launch_time_shift: std::sync::atomic::AtomicI64,
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
            ec2_arrivals: Mutex::new(Vec::new()),
            serialize_dynamodb,
            honour_tokens,
            dynamodb: tokio::sync::Mutex::new(()),
            tokens: Mutex::new(HashMap::new()),
            token_turn: tokio::sync::Mutex::new(()),
            no_capacity: Mutex::new(NoCapacity::default()),
            subnet_zones: Mutex::new(HashMap::new()),
            launch_time_shift: std::sync::atomic::AtomicI64::new(0),
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

    /// The operations of those calls (`dynamodb:TransactWriteItems`, ...), in order; a launch
    /// refused for lack of capacity as `ec2:RunInstances InsufficientInstanceCapacity`.
    pub fn call_log(&self) -> Vec<String> {
        lock(&self.shared.call_log).clone()
    }

    /// The most EC2 requests that arrived within one second of the clock (as the budget counts
    /// them: by whole second since the epoch) since the last reset.
    pub fn ec2_peak_per_second(&self) -> usize {
        let mut by_second: BTreeMap<u64, usize> = BTreeMap::new();
        for at in lock(&self.shared.ec2_arrivals).iter() {
            let second = at
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            *by_second.entry(second).or_default() += 1;
        }
        by_second.into_values().max().unwrap_or(0)
    }

    pub fn reset_calls(&self) {
        self.shared.calls.store(0, Ordering::SeqCst);
        lock(&self.shared.call_log).clear();
        lock(&self.shared.ec2_arrivals).clear();
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

    /// From now on EC2 has no capacity for these (instance type, availability zone) pairs: every
    /// launch into one, On-Demand or Spot, is refused with `InsufficientInstanceCapacity` (see
    /// `NoCapacity`). Replaces the pairs set by an earlier call; leaves the Spot-only ones.
    pub fn set_no_capacity(&self, pairs: &[(&str, &str)]) {
        lock(&self.shared.no_capacity).all = pools(pairs);
    }

    /// From now on these (instance type, availability zone) Spot pools are empty: Spot launches
    /// into them are refused with `InsufficientInstanceCapacity`, On-Demand ones are not.
    /// Replaces the pairs set by an earlier call; leaves those of `set_no_capacity`.
    pub fn set_no_spot_capacity(&self, pairs: &[(&str, &str)]) {
        lock(&self.shared.no_capacity).spot = pools(pairs);
    }

    /// Capacity everywhere again, On-Demand and Spot.
    pub fn clear_no_capacity(&self) {
        *lock(&self.shared.no_capacity) = NoCapacity::default();
    }

    /// From now on every `launchTime` in EC2's answers (`RunInstances`, `DescribeInstances`) is
    /// `seconds` later than the emulator's: a test whose controller clock runs ahead of the real
    /// one (`Harness::clock`) sees instances launched on its own clock, as in AWS, where both are
    /// the same. The emulator stamps launches with the real time and cannot be told otherwise.
    pub fn set_launch_time_shift(&self, seconds: i64) {
        self.shared
            .launch_time_shift
            .store(seconds, Ordering::SeqCst);
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

/// `s` form-encoded: everything but the unreserved characters escaped.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The text of the first `<name>` element of an XML answer.
fn xml_text(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..end].to_string())
}

/// The launch `RunInstances` asks for is refused for lack of capacity (see `NoCapacity`).
async fn refusal(shared: &Shared, req: &Request) -> Option<Refusal> {
    let instance_type = form_field(&req.body, "InstanceType")?;
    let spot = form_field(&req.body, "InstanceMarketOptions.MarketType")
        .is_some_and(|m| m.eq_ignore_ascii_case("spot"));
    let rules = lock(&shared.no_capacity).clone();
    // No pool of this type is refused: nothing to look up.
    if !rules.pools(spot).any(|(t, _)| *t == instance_type) {
        return None;
    }
    let subnet = form_field(&req.body, "SubnetId")
        .or_else(|| form_field(&req.body, "NetworkInterface.1.SubnetId"));
    let zone = match subnet {
        Some(subnet) => subnet_zone(shared, req, &subnet).await?,
        None => form_field(&req.body, "Placement.AvailabilityZone")?,
    };
    let pool = (instance_type, zone);
    let refused = rules.pools(spot).any(|p| *p == pool);
    refused.then_some(Refusal {
        instance_type: pool.0,
        zone: pool.1,
        spot,
    })
}

/// The availability zone of `subnet`, asked of the emulator once (`None` if it does not know the
/// subnet: the launch is forwarded and the emulator answers it).
async fn subnet_zone(shared: &Shared, req: &Request, subnet: &str) -> Option<String> {
    if let Some(zone) = lock(&shared.subnet_zones).get(subnet) {
        return Some(zone.clone());
    }
    let body = format!(
        "Action=DescribeSubnets&Version=2016-11-15&SubnetId.1={}",
        percent_encode(subnet)
    );
    // The launch's own credentials: the emulator keeps subnets per account (its access key) and
    // region (its credential scope), and does not check the signature.
    let authorization = req
        .header("authorization")
        .map(|a| format!("authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST / HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-www-form-urlencoded; charset=utf-8\r\n{authorization}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        shared.upstream,
        body.len()
    );
    let mut up = TcpStream::connect(shared.upstream).await.ok()?;
    up.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw).await.ok()?;
    if !status_ok(&raw) {
        return None;
    }
    let zone = xml_text(&String::from_utf8_lossy(&raw), "availabilityZone")?;
    lock(&shared.subnet_zones).insert(subnet.to_string(), zone.clone());
    Some(zone)
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

/// An EC2 answer (`content-length` framed, as `forward` leaves it) with every `<launchTime>`
/// moved `by` seconds; anything else as it was.
fn shift_launch_times(response: Vec<u8>, by: i64) -> Vec<u8> {
    let Some(head_end) = find(&response, b"\r\n\r\n") else {
        return response;
    };
    let Ok(body) = std::str::from_utf8(&response[head_end + 4..]) else {
        return response;
    };
    let chunked = String::from_utf8_lossy(&response[..head_end])
        .to_ascii_lowercase()
        .contains("transfer-encoding");
    if chunked || !body.contains("<launchTime>") {
        return response;
    }
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(start) = rest.find("<launchTime>") {
        let value_at = start + "<launchTime>".len();
        let Some(len) = rest[value_at..].find("</launchTime>") else {
            break;
        };
        let value = &rest[value_at..value_at + len];
        out.push_str(&rest[..value_at]);
        match chrono::DateTime::parse_from_rfc3339(value) {
            Ok(t) => out.push_str(
                &(t + chrono::Duration::seconds(by))
                    .to_utc()
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string(),
            ),
            Err(_) => out.push_str(value),
        }
        rest = &rest[value_at + len..];
    }
    out.push_str(rest);
    let head = String::from_utf8_lossy(&response[..head_end]);
    let mut lines: Vec<String> = head
        .split("\r\n")
        .filter(|l| {
            !l.split(':')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("content-length")
        })
        .map(str::to_string)
        .collect();
    lines.push(format!("content-length: {}", out.len()));
    let mut bytes = format!("{}\r\n\r\n", lines.join("\r\n")).into_bytes();
    bytes.extend_from_slice(out.as_bytes());
    bytes
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
                ec2_error_body(code, message, &request_id),
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

/// EC2's error shape (the query protocol's `Response/Errors/Error`).
fn ec2_error_body(code: &str, message: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>",
        xml_escape(message)
    )
}

/// EC2's answer to a launch it has no capacity for: HTTP 500 (see `NoCapacity`), with EC2's
/// messages for an On-Demand and for a Spot launch.
fn no_capacity_response(r: &Refusal, n: u64) -> Vec<u8> {
    let request_id = format!("no-capacity-{n:08}");
    let message = if r.spot {
        "There is no Spot capacity available that matches your request.".to_string()
    } else {
        format!(
            "We currently do not have sufficient {t} capacity in the Availability Zone you requested ({z}). Our system will be working on provisioning additional capacity.",
            t = r.instance_type,
            z = r.zone
        )
    };
    let body = ec2_error_body("InsufficientInstanceCapacity", &message, &request_id);
    format!(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/xml;charset=UTF-8\r\nx-amzn-requestid: {request_id}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
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
    if service == "ec2" {
        lock(&shared.ec2_arrivals).push(std::time::SystemTime::now());
    }
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
    let refused = if service == "ec2" && op == "RunInstances" {
        refusal(&shared, &req).await
    } else {
        None
    };
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
    // A launch refused for lack of capacity is an answer of EC2's like any other: it counts as
    // an answered call (and towards an armed crash), and a fault after forwarding loses it. A
    // retry of a launch that succeeded is still answered from its token, as EC2 does.
    let mut refused_now = false;
    let response = match (cached, &refused) {
        (Some(r), _) => {
            lock(&shared.stats).replayed += 1;
            r
        }
        (None, Some(r)) => {
            refused_now = true;
            let mut stats = lock(&shared.stats);
            stats.no_capacity += 1;
            *stats
                .no_capacity_by_pool
                .entry((r.instance_type.clone(), r.zone.clone()))
                .or_default() += 1;
            no_capacity_response(r, n)
        }
        (None, None) => {
            let _serial = if shared.serialize_dynamodb && service == "dynamodb" {
                Some(shared.dynamodb.lock().await)
            } else {
                None
            };
            let mut r = forward(&shared, &req).await?;
            let shift = shared.launch_time_shift.load(Ordering::SeqCst);
            if shift != 0 && service == "ec2" {
                r = shift_launch_times(r, shift);
            }
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
    lock(&shared.call_log).push(if refused_now {
        format!("{service}:{op} InsufficientInstanceCapacity")
    } else {
        format!("{service}:{op}")
    });
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
