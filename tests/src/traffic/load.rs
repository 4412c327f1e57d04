//! A load generator: a steady rate of `GET /?ms=N` to the router, each with a timeout, and what
//! came of them.
//!
//! Requests start on a fixed schedule whatever the answers do (an open loop, as users arrive), so
//! slow or failing targets do not slow the load down. Which requests are slow is drawn from a
//! seeded generator: the same seed sends the same sequence. A request succeeds when it is answered
//! 200 in full within the timeout; anything else — 502, 503, another status, a connection error,
//! the timeout — is a failure, counted by kind. `stop` returns once every request started has
//! finished or timed out, so the report counts every request sent.

use super::http::{self, Client};
use crate::faults::SplitMix64;
use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Requests started per second.
    pub rate_per_s: u32,
    /// Share of requests that are slow, in [0, 1].
    pub slow_share: f64,
    /// Work a slow request asks for.
    pub slow_ms: u64,
    /// Work every other request asks for.
    pub fast_ms: u64,
    /// A request not answered in full within this is a failure.
    pub timeout: Duration,
    /// Seed of the draw of slow requests.
    pub seed: u64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            rate_per_s: 40,
            slow_share: 0.1,
            slow_ms: 1500,
            fast_ms: 20,
            timeout: Duration::from_secs(10),
            seed: 1,
        }
    }
}

/// What came of the requests of a load. Latencies are those of the successful requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficReport {
    pub sent: u64,
    pub failed: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// Failures by kind: `502`, `503`, `status 404`, `timeout`, `connection`, `body`.
    pub failures_by_kind: BTreeMap<String, u64>,
}

impl fmt::Display for TrafficReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "requests {}, failed {}, p50 {} ms, p99 {} ms",
            self.sent, self.failed, self.p50_ms, self.p99_ms
        )?;
        if !self.failures_by_kind.is_empty() {
            let kinds: Vec<String> = self
                .failures_by_kind
                .iter()
                .map(|(kind, n)| format!("{kind}: {n}"))
                .collect();
            write!(f, " ({})", kinds.join(", "))?;
        }
        Ok(())
    }
}

/// A running load. Dropping it without `stop` stops it too; the requests in flight then finish
/// unreported.
pub struct Load {
    stop: watch::Sender<bool>,
    driver: JoinHandle<Vec<Outcome>>,
    sent: Arc<AtomicU64>,
}

/// How one request ended.
enum Outcome {
    Ok(Duration),
    Failed(String),
}

impl Load {
    /// Starts sending to `target` (the router).
    pub fn start(target: SocketAddr, config: LoadConfig) -> Load {
        let (stop, mut stopped) = watch::channel(false);
        let sent = Arc::new(AtomicU64::new(0));
        let driver = {
            let sent = sent.clone();
            tokio::spawn(async move {
                let client = http::client(false);
                let mut rng = SplitMix64(config.seed);
                let period = Duration::from_secs_f64(1.0 / f64::from(config.rate_per_s.max(1)));
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut requests = JoinSet::new();
                let mut outcomes = Vec::new();
                loop {
                    tokio::select! {
                        _ = stopped.changed() => break,
                        _ = tick.tick() => {
                            let ms = if rng.next_f64() < config.slow_share {
                                config.slow_ms
                            } else {
                                config.fast_ms
                            };
                            sent.fetch_add(1, Ordering::Relaxed);
                            let client = client.clone();
                            let timeout = config.timeout;
                            requests.spawn(async move { request(&client, target, ms, timeout).await });
                        }
                        Some(done) = requests.join_next(), if !requests.is_empty() => {
                            outcomes.push(joined(done));
                        }
                    }
                }
                while let Some(done) = requests.join_next().await {
                    outcomes.push(joined(done));
                }
                outcomes
            })
        };
        Load { stop, driver, sent }
    }

    /// Requests started so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops starting requests, waits for those in flight to finish or time out, and reports.
    pub async fn stop(self) -> TrafficReport {
        let _ = self.stop.send(true);
        let outcomes = match self.driver.await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                // The driver panicked: every request is unaccounted for, so all count as failed.
                let sent = self.sent.load(Ordering::Relaxed);
                return TrafficReport {
                    sent,
                    failed: sent,
                    failures_by_kind: BTreeMap::from([(format!("load generator: {e}"), sent)]),
                    ..TrafficReport::default()
                };
            }
        };
        report(&outcomes)
    }
}

fn joined(done: Result<Outcome, tokio::task::JoinError>) -> Outcome {
    done.unwrap_or_else(|e| Outcome::Failed(format!("panic: {e}")))
}

async fn request(client: &Client, target: SocketAddr, ms: u64, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let uri = format!("http://{target}/?ms={ms}");
    let req = match Request::get(uri.as_str()).body(http_body_util::Full::new(Bytes::new())) {
        Ok(req) => req,
        Err(e) => return Outcome::Failed(format!("request: {e}")),
    };
    let exchange = async {
        let response = client
            .request(req)
            .await
            .map_err(|_| "connection".to_string())?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(|_| "body".to_string())?;
        match status {
            StatusCode::OK => Ok(()),
            StatusCode::BAD_GATEWAY => Err("502".to_string()),
            StatusCode::SERVICE_UNAVAILABLE => Err("503".to_string()),
            other => Err(format!("status {}", other.as_u16())),
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(())) => Outcome::Ok(start.elapsed()),
        Ok(Err(kind)) => Outcome::Failed(kind),
        Err(_) => Outcome::Failed("timeout".to_string()),
    }
}

fn report(outcomes: &[Outcome]) -> TrafficReport {
    let mut latencies = Vec::new();
    let mut failures_by_kind = BTreeMap::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Ok(latency) => latencies.push(latency.as_millis() as u64),
            Outcome::Failed(kind) => *failures_by_kind.entry(kind.clone()).or_insert(0) += 1,
        }
    }
    latencies.sort_unstable();
    TrafficReport {
        sent: outcomes.len() as u64,
        failed: failures_by_kind.values().sum(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0),
        failures_by_kind,
    }
}

/// Nearest-rank percentile of sorted values (0 when there are none).
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
