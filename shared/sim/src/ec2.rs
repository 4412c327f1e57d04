//! A simulated EC2 that behaves the way phoenix's adapter (`phoenix_aws::compute`) sees the real
//! one: instances tagged with the fleet and their decision token, RunInstances with a ClientToken
//! and MinCount = MaxCount, DescribeInstances that lists everything but terminated instances and
//! is eventually consistent for new ones, DescribeInstanceStatus, TerminateInstances re-validated
//! by tag. Plus the faults: boot and status-check delays, bad images, zone outages, single
//! failures, instances vanishing or stopping, capacity shortages, throttling and lost responses.

use crate::rng::Rng;
use chrono::Duration;
use phoenix_core::model::{Lifecycle, Observed, Timestamp};
use phoenix_core::planner::Launched;
use phoenix_core::{ImageId, InstanceId};
use std::collections::{BTreeMap, BTreeSet};

pub const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
pub const SUBNETS: [&str; 3] = ["subnet-0000000a", "subnet-0000000b", "subnet-0000000c"];
pub const INSTANCE_TYPE: &str = "t3.micro";

/// How an image is broken, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Badness {
    Good,
    /// EC2's status checks never pass (the instance does not boot properly).
    StatusNeverOk,
    /// The status checks pass but the application does not: only a health check sees it.
    AppFails,
    /// Both.
    Both,
}

impl Badness {
    pub fn status_fails(self) -> bool {
        matches!(self, Badness::StatusNeverOk | Badness::Both)
    }
    pub fn app_fails(self) -> bool {
        matches!(self, Badness::AppFails | Badness::Both)
    }
}

/// One simulated instance. Every instance carries the fleet tag (the sim runs one fleet).
#[derive(Debug, Clone)]
pub struct Vm {
    pub id: InstanceId,
    pub image: ImageId,
    pub token: String,
    pub zone: usize,
    pub launched_at: Timestamp,
    /// DescribeInstances shows it from then (eventual consistency).
    pub visible_from: Timestamp,
    pub state: Lifecycle,
    /// Pending until then.
    pub running_at: Timestamp,
    /// Status checks (and the application) would pass from then on, if nothing is wrong.
    pub ready_at: Timestamp,
    /// When stopping or shutting-down ends.
    pub transition_at: Option<Timestamp>,
    pub gone_at: Option<Timestamp>,
    /// Faults. `born` is the badness of its image when it was launched.
    pub born: Badness,
    pub impaired: bool,
    pub app_failed: bool,
    /// The health checker has reported it failed (spuriously or not).
    pub reported: bool,
    pub next_fail_report: Option<Timestamp>,
    pub passes_left: u8,
    pub next_pass_report: Option<Timestamp>,
}

impl Vm {
    /// Exists and is not on its way out (stopped instances still exist).
    pub fn alive(&self) -> bool {
        !self.state.is_gone()
    }
    /// Pending or running: what counts against the surge (and costs money).
    pub fn counts_for_surge(&self) -> bool {
        matches!(self.state, Lifecycle::Pending | Lifecycle::Running)
    }
}

/// What went wrong with an API call, classified as `phoenix_aws::error` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(pub String);

impl ApiError {
    /// A timeout, a lost connection, a 5xx: the call may have happened (`Error::Transient`).
    pub fn is_transient(&self) -> bool {
        self.0.starts_with("RequestTimeout")
    }
}

/// The result of RunInstances as the adapter returns it, plus what the simulator needs to know
/// for its checks: whether instances were actually created by this call.
pub struct LaunchResult {
    pub result: Result<Vec<Launched>, ApiError>,
    pub created: Vec<InstanceId>,
}

pub struct Ec2 {
    pub vms: BTreeMap<InstanceId, Vm>,
    next_id: u64,
    /// What RunInstances answered per ClientToken (EC2 returns the same for a repeated token).
    client_tokens: BTreeMap<String, Vec<InstanceId>>,
    /// Every token any instance was ever created for (kept after the instances are gone).
    pub tokens_created: BTreeSet<String>,
    // --- the world's condition -------------------------------------------------------------
    /// Bad images: launched instances of these are born broken.
    pub bad_images: BTreeMap<ImageId, Badness>,
    /// Zones down, until when.
    pub zones_down: BTreeMap<usize, Timestamp>,
    /// Zones out of capacity (RunInstances fails), until when; `usize::MAX` is every zone.
    pub shortage: BTreeMap<usize, Timestamp>,
    /// API calls fail with RequestLimitExceeded with this probability (per mille) until then.
    pub throttle: Option<(Timestamp, u32)>,
    /// Whether RunInstances honours the ClientToken (real EC2 does; the emulator does not).
    pub honour_client_token: bool,
    /// A RunInstances response is lost (per mille); the SDK retries the call.
    pub lost_response: u32,
    /// Longest DescribeInstances lag for a new instance, in seconds.
    pub max_lag: u64,
}

impl Ec2 {
    pub fn new() -> Self {
        Ec2 {
            vms: BTreeMap::new(),
            next_id: 0x1000_0000,
            client_tokens: BTreeMap::new(),
            tokens_created: BTreeSet::new(),
            bad_images: BTreeMap::new(),
            zones_down: BTreeMap::new(),
            shortage: BTreeMap::new(),
            throttle: None,
            honour_client_token: true,
            lost_response: 0,
            max_lag: 20,
        }
    }

    // --- ground truth ----------------------------------------------------------------------

    pub fn zone_down(&self, vm: &Vm) -> bool {
        self.zones_down.contains_key(&vm.zone)
    }

    /// Both EC2 status checks report ok (what DescribeInstanceStatus says).
    pub fn status_ok(&self, vm: &Vm, now: Timestamp) -> bool {
        vm.state == Lifecycle::Running
            && now >= vm.ready_at
            && !vm.impaired
            && !vm.born.status_fails()
            && !self.zone_down(vm)
    }

    /// Something outside phoenix is wrong with it: it cannot serve, or will not once booted.
    pub fn fault(&self, vm: &Vm) -> bool {
        vm.impaired
            || vm.app_failed
            || vm.born != Badness::Good
            || self.zone_down(vm)
            || matches!(vm.state, Lifecycle::Stopping | Lifecycle::Stopped)
    }

    /// Serving: running, booted, and nothing wrong with it.
    pub fn world_healthy(&self, vm: &Vm, now: Timestamp) -> bool {
        vm.state == Lifecycle::Running && now >= vm.ready_at && !self.fault(vm)
    }

    fn throttled(&self, now: Timestamp, rng: &mut Rng) -> bool {
        self.throttle
            .is_some_and(|(until, p)| now < until && rng.chance(p))
    }

    fn visible(vm: &Vm, now: Timestamp) -> bool {
        vm.visible_from <= now && vm.state != Lifecycle::Terminated
    }

    fn observed(&self, vm: &Vm, now: Timestamp) -> Observed {
        Observed {
            id: vm.id.clone(),
            image: Some(vm.image.clone()),
            state: vm.state,
            status_ok: self.status_ok(vm, now),
            launched_at: Some(vm.launched_at),
            token: Some(vm.token.clone()),
            zone: Some(ZONES[vm.zone].to_string()),
            instance_type: Some(INSTANCE_TYPE.to_string()),
        }
    }

    fn launched(vm: &Vm) -> Launched {
        Launched {
            id: vm.id.clone(),
            launched_at: Some(vm.launched_at),
            state: vm.state,
            zone: Some(ZONES[vm.zone].to_string()),
            instance_type: Some(INSTANCE_TYPE.to_string()),
        }
    }

    // --- the API, as phoenix's adapter uses it ------------------------------------------------

    /// DescribeInstances (fleet tag, every state but terminated) + DescribeInstanceStatus.
    pub fn describe(&self, now: Timestamp, rng: &mut Rng) -> Result<Vec<Observed>, ApiError> {
        if self.throttled(now, rng) {
            return Err(ApiError("RequestLimitExceeded (DescribeInstances)".into()));
        }
        Ok(self
            .vms
            .values()
            .filter(|vm| Self::visible(vm, now))
            .map(|vm| self.observed(vm, now))
            .collect())
    }

    /// `Compute::launch`: instances already carrying the token are returned; otherwise
    /// RunInstances with the token as ClientToken, all or nothing, into the subnet the token picks.
    pub fn launch(
        &mut self,
        token: &str,
        image: &ImageId,
        count: u32,
        now: Timestamp,
        rng: &mut Rng,
    ) -> LaunchResult {
        let fail = |e: &str| LaunchResult {
            result: Err(ApiError(e.into())),
            created: Vec::new(),
        };
        if self.throttled(now, rng) {
            return fail("RequestLimitExceeded (DescribeInstances)");
        }
        let mut existing: Vec<&Vm> = self
            .vms
            .values()
            .filter(|vm| vm.token == token && Self::visible(vm, now))
            .collect();
        if !existing.is_empty() {
            existing.sort_by(|a, b| a.id.cmp(&b.id));
            return LaunchResult {
                result: Ok(existing.into_iter().map(Self::launched).collect()),
                created: Vec::new(),
            };
        }
        if self.throttled(now, rng) {
            return fail("RequestLimitExceeded (RunInstances)");
        }
        let zone = subnet_index(token, SUBNETS.len());
        let short = |z: usize| self.shortage.get(&z).is_some_and(|u| now < *u);
        if short(zone) || short(usize::MAX) {
            return fail("InsufficientInstanceCapacity");
        }
        if self.honour_client_token {
            if let Some(ids) = self.client_tokens.get(token) {
                let mut out: Vec<Launched> = ids
                    .iter()
                    .filter_map(|id| self.vms.get(id))
                    .map(Self::launched)
                    .collect();
                out.sort_by(|a, b| a.id.cmp(&b.id));
                return LaunchResult {
                    result: Ok(out),
                    created: Vec::new(),
                };
            }
        }
        let mut created = self.create(token, image, count, zone, now, rng);
        if rng.chance(self.lost_response) {
            // The response is lost; the SDK retries the same request. EC2 answers a repeated
            // ClientToken with the first result; an endpoint that ignores it launches again.
            if rng.chance(300) {
                // The retries time out too: the caller cannot know the launch happened.
                return LaunchResult {
                    result: Err(ApiError(
                        "RequestTimeout (RunInstances, after retries)".into(),
                    )),
                    created,
                };
            }
            if !self.honour_client_token {
                let again = self.create(token, image, count, zone, now, rng);
                created.extend(again.iter().cloned());
                let out = again
                    .iter()
                    .map(|id| Self::launched(&self.vms[id]))
                    .collect();
                return LaunchResult {
                    result: Ok(out),
                    created,
                };
            }
        }
        let mut out: Vec<Launched> = created
            .iter()
            .map(|id| Self::launched(&self.vms[id]))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        LaunchResult {
            result: Ok(out),
            created,
        }
    }

    fn create(
        &mut self,
        token: &str,
        image: &ImageId,
        count: u32,
        zone: usize,
        now: Timestamp,
        rng: &mut Rng,
    ) -> Vec<InstanceId> {
        let born = self.bad_images.get(image).copied().unwrap_or(Badness::Good);
        let mut ids = Vec::new();
        for _ in 0..count {
            let id = InstanceId::parse(&format!("i-{:08x}", self.next_id))
                .unwrap_or_else(|_| unreachable!("8 hex digits make an instance id"));
            self.next_id += 1;
            let running_at = now + Duration::seconds(rng.range(5, 60) as i64);
            let ready_at = running_at + Duration::seconds(rng.range(10, 120) as i64);
            let lag = if self.max_lag == 0 {
                0
            } else {
                rng.range(0, self.max_lag) as i64
            };
            self.vms.insert(
                id.clone(),
                Vm {
                    id: id.clone(),
                    image: image.clone(),
                    token: token.to_string(),
                    zone,
                    launched_at: now,
                    visible_from: now + Duration::seconds(lag),
                    state: Lifecycle::Pending,
                    running_at,
                    ready_at,
                    transition_at: None,
                    gone_at: None,
                    born,
                    impaired: false,
                    app_failed: false,
                    reported: false,
                    next_fail_report: None,
                    passes_left: 4,
                    next_pass_report: Some(ready_at + Duration::seconds(rng.range(5, 30) as i64)),
                },
            );
            ids.push(id);
        }
        self.client_tokens
            .entry(token.to_string())
            .or_insert_with(|| ids.clone());
        self.tokens_created.insert(token.to_string());
        ids
    }

    /// `Compute::terminate`: only instances DescribeInstances shows with the fleet tag are
    /// terminated; ids it does not show count as gone already (which, for an instance too new to
    /// be listed, is not true: the next reconcile finds it as an orphan). Returns the ids reported
    /// gone and, separately, those this call actually terminated.
    pub fn terminate(
        &mut self,
        ids: &[InstanceId],
        now: Timestamp,
        rng: &mut Rng,
    ) -> Result<(Vec<InstanceId>, Vec<InstanceId>), ApiError> {
        if ids.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        if self.throttled(now, rng) {
            return Err(ApiError("RequestLimitExceeded (DescribeInstances)".into()));
        }
        let alive: Vec<InstanceId> = ids
            .iter()
            .filter(|id| self.vms.get(*id).is_some_and(|vm| Self::visible(vm, now)))
            .cloned()
            .collect();
        if !alive.is_empty() && self.throttled(now, rng) {
            return Err(ApiError("RequestLimitExceeded (TerminateInstances)".into()));
        }
        let mut terminated = Vec::new();
        for id in &alive {
            if let Some(vm) = self.vms.get_mut(id) {
                if vm.alive() {
                    vm.state = Lifecycle::ShuttingDown;
                    vm.transition_at = Some(now + Duration::seconds(rng.range(5, 40) as i64));
                    terminated.push(id.clone());
                }
            }
        }
        Ok((ids.to_vec(), terminated))
    }

    // --- what happens by itself ----------------------------------------------------------------

    /// Lifecycle transitions due by `now`; drops instances terminated over an hour ago.
    pub fn advance(&mut self, now: Timestamp) {
        for vm in self.vms.values_mut() {
            match vm.state {
                Lifecycle::Pending if now >= vm.running_at => vm.state = Lifecycle::Running,
                Lifecycle::Stopping if vm.transition_at.is_some_and(|t| now >= t) => {
                    vm.state = Lifecycle::Stopped;
                }
                Lifecycle::ShuttingDown if vm.transition_at.is_some_and(|t| now >= t) => {
                    vm.state = Lifecycle::Terminated;
                    vm.gone_at = Some(now);
                }
                _ => {}
            }
        }
        self.vms
            .retain(|_, vm| vm.gone_at.is_none_or(|t| t + Duration::hours(1) > now));
        self.zones_down.retain(|_, until| now < *until);
        self.shortage.retain(|_, until| now < *until);
        if self.throttle.is_some_and(|(until, _)| now >= until) {
            self.throttle = None;
        }
    }

    /// Terminated outside phoenix (a host failure, someone in the console).
    pub fn vanish(&mut self, id: &InstanceId, now: Timestamp) {
        if let Some(vm) = self.vms.get_mut(id) {
            vm.state = Lifecycle::Terminated;
            vm.gone_at = Some(now);
        }
    }

    /// Stopped outside phoenix.
    pub fn stop(&mut self, id: &InstanceId, now: Timestamp, rng: &mut Rng) {
        if let Some(vm) = self.vms.get_mut(id) {
            if vm.state == Lifecycle::Running || vm.state == Lifecycle::Pending {
                vm.state = Lifecycle::Stopping;
                vm.transition_at = Some(now + Duration::seconds(rng.range(5, 30) as i64));
            }
        }
    }

    pub fn alive(&self) -> impl Iterator<Item = &Vm> {
        self.vms.values().filter(|vm| vm.alive())
    }
}

impl Default for Ec2 {
    fn default() -> Self {
        Self::new()
    }
}

/// The subnet a launch decision goes to: the same hash of the token as `phoenix_aws::compute`.
pub fn subnet_index(token: &str, subnets: usize) -> usize {
    token
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % subnets
}
