//! The load balancer's data plane: an HTTP/1 server on loopback that sends every request to one
//! backend, round robin, and answers what the backend answered.
//!
//! Which instances are in rotation is refreshed every 100 ms:
//!
//! - `Mode::TargetGroups`: from the ELB API (through the `ElbApiProxy`, so draining, initial and
//!   unhealthy targets are seen as AWS would report them): an instance is in rotation when it is
//!   `healthy` in every group. A target that stops being healthy gets no new request, while those
//!   already sent to it run to completion — as a load balancer drains.
//! - `Mode::Ec2Running`: from EC2: every running instance (carrying the tag, if one is given) —
//!   a static server list refreshed from EC2, with nothing that drains.
//!
//! A request goes to an instance in rotation that has a live backend. With none: 503. When
//! forwarding fails (connection refused, reset, closed before the answer): 502. A client counts
//! both as failed requests.
//!
//! `InFlight` is the state the control plane needs from the data plane: which instances are in
//! rotation and how many requests are in flight on each. Choosing an instance and counting the
//! request happen under one lock, and so do replacing the rotation and reading it, so once an
//! instance is seen out of rotation with nothing in flight, no request can reach it any more.

use super::backends::{Live, Tag};
use super::http::{self, Body, Client};
use anyhow::{Context, Result};
use aws_sdk_ec2::types::Filter;
use aws_sdk_elasticloadbalancingv2::types::TargetHealthStateEnum;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the rotation is refreshed.
const REFRESH: Duration = Duration::from_millis(100);

/// Where the rotation comes from.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Instances `healthy` in every one of these target groups (ARNs), per the ELB API.
    TargetGroups(Vec<String>),
    /// Every instance EC2 reports `running`, carrying the tag if one is given.
    Ec2Running { tag: Option<Tag> },
}

/// The rotation and the requests in flight per instance, shared by the router (which keeps them)
/// and the ELB API proxy (which ends a deregistration when the target is out of rotation and idle).
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<Plane>>);

#[derive(Default)]
struct Plane {
    /// Instances in rotation, in a stable order for round robin.
    rotation: Vec<String>,
    in_flight: HashMap<String, usize>,
    next: usize,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, Plane> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests in flight on an instance.
    pub fn count(&self, instance: &str) -> usize {
        self.lock().in_flight.get(instance).copied().unwrap_or(0)
    }

    /// Requests in flight on every instance.
    pub fn total(&self) -> usize {
        self.lock().in_flight.values().sum()
    }

    /// Whether the router may send new requests to an instance.
    pub fn in_rotation(&self, instance: &str) -> bool {
        self.lock().rotation.iter().any(|i| i == instance)
    }

    /// The instances the router may send new requests to.
    pub fn rotation(&self) -> Vec<String> {
        self.lock().rotation.clone()
    }

    /// Whether the load balancer still sends requests to an instance or still has requests in
    /// flight on it: a deregistration ends only when neither holds.
    pub fn busy(&self, instance: &str) -> bool {
        let plane = self.lock();
        plane.rotation.iter().any(|i| i == instance)
            || plane.in_flight.get(instance).is_some_and(|n| *n > 0)
    }

    fn set_rotation(&self, rotation: BTreeSet<String>) {
        self.lock().rotation = rotation.into_iter().collect();
    }

    /// The next instance in rotation that `live` gives an address for, its request counted in
    /// flight until the ticket is dropped.
    fn pick(&self, live: &Live) -> Option<(String, SocketAddr, Ticket)> {
        let mut plane = self.lock();
        let candidates: Vec<(String, SocketAddr)> = plane
            .rotation
            .iter()
            .filter_map(|id| live.addr(id).map(|addr| (id.clone(), addr)))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (id, addr) = candidates[plane.next % candidates.len()].clone();
        plane.next = plane.next.wrapping_add(1);
        *plane.in_flight.entry(id.clone()).or_insert(0) += 1;
        let ticket = Ticket {
            plane: self.clone(),
            instance: id.clone(),
        };
        Some((id, addr, ticket))
    }
}

/// One request in flight on an instance; dropping it (answered, failed, or abandoned by the
/// client) ends it.
struct Ticket {
    plane: InFlight,
    instance: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut plane = self.plane.lock();
        if let Some(n) = plane.in_flight.get_mut(&self.instance) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                plane.in_flight.remove(&self.instance);
            }
        }
    }
}

/// What the router did, for assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Requests sent to each instance (answered or not).
    pub routed: BTreeMap<String, u64>,
    /// Requests answered 503: no instance in rotation with a live backend.
    pub no_target: u64,
    /// Requests answered 502: the backend refused, reset or closed before answering.
    pub bad_gateway: u64,
}

#[derive(Default)]
struct Counters {
    routed: Mutex<BTreeMap<String, u64>>,
    no_target: AtomicU64,
    bad_gateway: AtomicU64,
}

struct Shared {
    in_flight: InFlight,
    live: Live,
    client: Client,
    counters: Counters,
}

/// The data plane. Dropping it stops serving and refreshing.
pub struct Router {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    refresher: JoinHandle<()>,
}

impl Router {
    /// Starts the router: `elb_api` is the endpoint of the ELB API (the proxy) for
    /// `Mode::TargetGroups`, `emulator` the endpoint EC2 is read from for `Mode::Ec2Running`. The
    /// rotation is read once before this returns.
    pub async fn start(
        mode: Mode,
        elb_api: &str,
        emulator: &str,
        live: Live,
        in_flight: InFlight,
    ) -> Result<Router> {
        let source = match mode {
            Mode::TargetGroups(groups) => {
                let sdk = phoenix_aws::config::emulator_sdk_config(elb_api).await;
                Source::TargetGroups {
                    elb: aws_sdk_elasticloadbalancingv2::Client::new(&sdk),
                    groups,
                }
            }
            Mode::Ec2Running { tag } => {
                let sdk = phoenix_aws::config::emulator_sdk_config(emulator).await;
                Source::Ec2Running {
                    ec2: aws_sdk_ec2::Client::new(&sdk),
                    tag,
                }
            }
        };
        in_flight.set_rotation(source.rotation().await?);
        let refresher = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(REFRESH);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    // On a failed read the last rotation stands, as a load balancer keeps routing
                    // when its control plane is briefly unreachable.
                    match source.rotation().await {
                        Ok(rotation) => in_flight.set_rotation(rotation),
                        Err(e) => eprintln!("traffic router: refreshing the rotation: {e:#}"),
                    }
                }
            })
        };
        let shared = Arc::new(Shared {
            in_flight,
            live,
            client: http::client(false),
            counters: Counters::default(),
        });
        let (listener, addr) = http::bind().await?;
        let server = {
            let shared = shared.clone();
            http::serve(listener, false, move |req| {
                let shared = shared.clone();
                async move { route(&shared, req).await }
            })
        };
        Ok(Router {
            addr,
            shared,
            server,
            refresher,
        })
    }

    /// Where clients send their requests.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The rotation and in-flight counts (shared with the ELB API proxy).
    pub fn in_flight(&self) -> &InFlight {
        &self.shared.in_flight
    }

    /// Instances a new request may go to now: in rotation, with a live backend.
    pub fn routable(&self) -> Vec<String> {
        self.shared
            .in_flight
            .rotation()
            .into_iter()
            .filter(|id| self.shared.live.addr(id).is_some())
            .collect()
    }

    /// Requests sent to an instance so far.
    pub fn routed(&self, instance: &str) -> u64 {
        lock(&self.shared.counters.routed)
            .get(instance)
            .copied()
            .unwrap_or(0)
    }

    pub fn stats(&self) -> RouterStats {
        RouterStats {
            routed: lock(&self.shared.counters.routed).clone(),
            no_target: self.shared.counters.no_target.load(Ordering::Relaxed),
            bad_gateway: self.shared.counters.bad_gateway.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.server.abort();
        self.refresher.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum Source {
    TargetGroups {
        elb: aws_sdk_elasticloadbalancingv2::Client,
        groups: Vec<String>,
    },
    Ec2Running {
        ec2: aws_sdk_ec2::Client,
        tag: Option<Tag>,
    },
}

impl Source {
    async fn rotation(&self) -> Result<BTreeSet<String>> {
        match self {
            Source::TargetGroups { elb, groups } => {
                let mut rotation: Option<BTreeSet<String>> = None;
                for group in groups {
                    let out = elb
                        .describe_target_health()
                        .target_group_arn(group)
                        .send()
                        .await
                        .with_context(|| format!("DescribeTargetHealth of {group}"))?;
                    let healthy: BTreeSet<String> = out
                        .target_health_descriptions()
                        .iter()
                        .filter(|d| {
                            d.target_health().and_then(|h| h.state())
                                == Some(&TargetHealthStateEnum::Healthy)
                        })
                        .filter_map(|d| d.target().and_then(|t| t.id()).map(str::to_string))
                        .collect();
                    rotation = Some(match rotation {
                        None => healthy,
                        Some(r) => r.intersection(&healthy).cloned().collect(),
                    });
                }
                Ok(rotation.unwrap_or_default())
            }
            Source::Ec2Running { ec2, tag } => {
                let mut filters = vec![Filter::builder()
                    .name("instance-state-name")
                    .values("running")
                    .build()];
                if let Some(tag) = tag {
                    filters.push(tag.filter());
                }
                let mut ids = BTreeSet::new();
                let mut pages = ec2
                    .describe_instances()
                    .set_filters(Some(filters))
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.context("DescribeInstances")?;
                    for reservation in page.reservations() {
                        for instance in reservation.instances() {
                            if let Some(id) = instance.instance_id() {
                                ids.insert(id.to_string());
                            }
                        }
                    }
                }
                Ok(ids)
            }
        }
    }
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let Some((instance, addr, ticket)) = shared.in_flight.pick(&shared.live) else {
        shared.counters.no_target.fetch_add(1, Ordering::Relaxed);
        return http::text(StatusCode::SERVICE_UNAVAILABLE, "no healthy target\n");
    };
    *lock(&shared.counters.routed).entry(instance).or_insert(0) += 1;
    let answer = forward(shared, addr, req).await;
    drop(ticket);
    match answer {
        Ok(response) => response,
        Err(e) => {
            shared.counters.bad_gateway.fetch_add(1, Ordering::Relaxed);
            http::text(StatusCode::BAD_GATEWAY, format!("{e:#}\n"))
        }
    }
}

/// Sends the request to the backend at `addr` and reads its whole answer.
async fn forward(
    shared: &Shared,
    addr: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let (mut parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .context("reading the request")?
        .to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = format!("http://{addr}{path}")
        .parse()
        .context("the backend's URI")?;
    // The backend is addressed by its own host and port, as a load balancer does.
    parts.headers.remove(hyper::header::HOST);
    let response = shared
        .client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
        .context("forwarding to the backend")?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .context("reading the backend's answer")?
        .to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}
