//! One HTTP backend per running EC2 instance, living and dying with it.
//!
//! The emulator's instances run nothing, so each instance EC2 reports `running` gets a server on
//! 127.0.0.1 standing for the application on it: `GET /?ms=N` sleeps N ms and answers 200 with the
//! instance id. EC2 is read every 100 ms. When it reports the instance `shutting-down`,
//! `terminated`, `stopping` or `stopped`, or no longer lists it, the backend is killed hard: its
//! listener and every connection are dropped where they stand, so a request in flight on it gets
//! no answer — the client sees the connection closed — as when the instance and its process go.
//! An instance that came back to `running` (started again) gets a new backend on a new port.

use super::http::{self, Body};
use anyhow::{Context, Result};
use aws_sdk_ec2::types::{Filter, InstanceStateName};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How often EC2 is read.
const WATCH: Duration = Duration::from_millis(100);

/// An EC2 tag an instance must carry (e.g. `phoenix:fleet` = `web`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

impl Tag {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Tag {
        Tag {
            key: key.into(),
            value: value.into(),
        }
    }

    /// The DescribeInstances filter that keeps the instances carrying it.
    pub fn filter(&self) -> Filter {
        Filter::builder()
            .name(format!("tag:{}", self.key))
            .values(self.value.clone())
            .build()
    }
}

/// The backends alive now, readable from other tasks (the router).
#[derive(Clone, Default)]
pub struct Live(Arc<Shared>);

#[derive(Default)]
struct Shared {
    backends: Mutex<BTreeMap<String, Backend>>,
    killed: AtomicU64,
    killed_busy: AtomicU64,
    requests_killed: AtomicU64,
}

struct Backend {
    addr: SocketAddr,
    server: JoinHandle<()>,
    requests: Requests,
}

/// The requests a backend is serving, each with the moment its answer is due.
#[derive(Clone, Default)]
struct Requests(Arc<Mutex<HashMap<u64, Instant>>>);

impl Requests {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Live {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Backend>> {
        self.0.backends.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address of an instance's backend, if it is alive.
    pub fn addr(&self, instance: &str) -> Option<SocketAddr> {
        self.lock().get(instance).map(|b| b.addr)
    }

    /// Instances with a live backend.
    pub fn instances(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Requests a backend is serving now.
    pub fn in_flight(&self, instance: &str) -> usize {
        self.lock()
            .get(instance)
            .map_or(0, |b| b.requests.lock().len())
    }

    /// How long the longest request in flight on a backend still has to run (zero when idle).
    pub fn longest_remaining(&self, instance: &str) -> Duration {
        let now = Instant::now();
        self.lock().get(instance).map_or(Duration::ZERO, |b| {
            b.requests
                .lock()
                .values()
                .map(|due| due.saturating_duration_since(now))
                .max()
                .unwrap_or(Duration::ZERO)
        })
    }

    /// Backends killed so far.
    pub fn killed(&self) -> u64 {
        self.0.killed.load(Ordering::Relaxed)
    }

    /// Backends killed with at least one request in flight.
    pub fn killed_busy(&self) -> u64 {
        self.0.killed_busy.load(Ordering::Relaxed)
    }

    /// Requests that were in flight on a backend when it was killed.
    pub fn requests_killed(&self) -> u64 {
        self.0.requests_killed.load(Ordering::Relaxed)
    }

    async fn spawn(&self, instance: &str) -> Result<()> {
        let (listener, addr) = http::bind().await?;
        let requests = Requests::default();
        let server = {
            let instance = instance.to_string();
            let requests = requests.clone();
            let next = Arc::new(AtomicU64::new(0));
            http::serve(listener, false, move |req| {
                let instance = instance.clone();
                let requests = requests.clone();
                let id = next.fetch_add(1, Ordering::Relaxed);
                async move { answer(&instance, &requests, id, req).await }
            })
        };
        let previous = self.lock().insert(
            instance.to_string(),
            Backend {
                addr,
                server,
                requests,
            },
        );
        if let Some(previous) = previous {
            previous.server.abort();
        }
        Ok(())
    }

    fn kill(&self, instance: &str) {
        let Some(backend) = self.lock().remove(instance) else {
            return;
        };
        let in_flight = backend.requests.lock().len() as u64;
        backend.server.abort();
        self.0.killed.fetch_add(1, Ordering::Relaxed);
        if in_flight > 0 {
            self.0.killed_busy.fetch_add(1, Ordering::Relaxed);
            self.0
                .requests_killed
                .fetch_add(in_flight, Ordering::Relaxed);
        }
    }

    fn kill_all(&self) {
        for instance in self.instances() {
            self.kill(&instance);
        }
    }
}

/// `GET /?ms=N`: N ms later, 200 with the instance id.
async fn answer(
    instance: &str,
    requests: &Requests,
    id: u64,
    req: Request<Incoming>,
) -> Response<Body> {
    let ms = match http::query_param(req.uri(), "ms").map(|v| v.parse::<u64>()) {
        None => 0,
        Some(Ok(ms)) => ms,
        Some(Err(_)) => return http::text(StatusCode::BAD_REQUEST, "ms must be a number\n"),
    };
    let work = Duration::from_millis(ms);
    let _serving = Serving::start(requests, id, Instant::now() + work);
    tokio::time::sleep(work).await;
    http::text(StatusCode::OK, instance.to_string())
}

/// A request in `Requests` for as long as it is being served: removed when answered, and also
/// when its connection's task is dropped mid-sleep (the backend killed, the client gone).
struct Serving<'a> {
    requests: &'a Requests,
    id: u64,
}

impl<'a> Serving<'a> {
    fn start(requests: &'a Requests, id: u64, due: Instant) -> Serving<'a> {
        requests.lock().insert(id, due);
        Serving { requests, id }
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.requests.lock().remove(&self.id);
    }
}

/// The backends of the running instances, kept in step with EC2 until dropped.
pub struct Backends {
    live: Live,
    watcher: JoinHandle<()>,
}

impl Backends {
    /// Reads EC2 at `emulator` once (every running instance has its backend when this returns),
    /// then every 100 ms. With a tag, only instances carrying it get a backend.
    pub async fn start(emulator: &str, tag: Option<Tag>) -> Result<Backends> {
        let sdk = phoenix_aws::config::emulator_sdk_config(emulator).await;
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let live = Live::default();
        sync(&ec2, tag.as_ref(), &live).await?;
        let watcher = {
            let live = live.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(WATCH);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    // A failed read changes nothing: the instances are as they were last seen.
                    if let Err(e) = sync(&ec2, tag.as_ref(), &live).await {
                        eprintln!("traffic backends: reading EC2: {e:#}");
                    }
                }
            })
        };
        Ok(Backends { live, watcher })
    }

    /// A handle on the live backends for other tasks.
    pub fn live(&self) -> Live {
        self.live.clone()
    }

    /// The address of an instance's backend, if it is alive.
    pub fn addr(&self, instance: &str) -> Option<SocketAddr> {
        self.live.addr(instance)
    }

    /// Instances with a live backend.
    pub fn instances(&self) -> Vec<String> {
        self.live.instances()
    }

    /// Requests a backend is serving now.
    pub fn in_flight(&self, instance: &str) -> usize {
        self.live.in_flight(instance)
    }

    /// How long the longest request in flight on a backend still has to run (zero when idle).
    pub fn longest_remaining(&self, instance: &str) -> Duration {
        self.live.longest_remaining(instance)
    }

    /// Backends killed so far.
    pub fn killed(&self) -> u64 {
        self.live.killed()
    }

    /// Backends killed with at least one request in flight.
    pub fn killed_busy(&self) -> u64 {
        self.live.killed_busy()
    }

    /// Requests that were in flight on a backend when it was killed.
    pub fn requests_killed(&self) -> u64 {
        self.live.requests_killed()
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.watcher.abort();
        self.live.kill_all();
    }
}

/// Gives every running instance a backend and kills the backends of the others.
async fn sync(ec2: &aws_sdk_ec2::Client, tag: Option<&Tag>, live: &Live) -> Result<()> {
    let mut running = BTreeSet::new();
    let mut pages = ec2
        .describe_instances()
        .set_filters(tag.map(|t| vec![t.filter()]))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.context("DescribeInstances")?;
        for reservation in page.reservations() {
            for instance in reservation.instances() {
                let state = instance.state().and_then(|s| s.name());
                if let (Some(id), Some(InstanceStateName::Running)) =
                    (instance.instance_id(), state)
                {
                    running.insert(id.to_string());
                }
            }
        }
    }
    for instance in live.instances() {
        if !running.contains(&instance) {
            live.kill(&instance);
        }
    }
    for instance in running {
        if live.addr(&instance).is_none() {
            live.spawn(&instance).await?;
        }
    }
    Ok(())
}
