//! A simulated EC2 answering the protocol's EC2 port as the real API does: instances tagged with
//! the fleet and their decision token, RunInstances with a ClientToken (honoured, or ignored as the
//! emulator does) and MinCount = MaxCount, DescribeInstances that lists everything but terminated
//! instances and is eventually consistent for new ones, DescribeInstanceStatus, TerminateInstances
//! that fails whole for an unknown id or one the fleet's IAM policy does not cover, CreateTags and
//! DeleteTags of phoenix's keys (adopting and releasing instances) likewise, and instances
//! launched outside phoenix for it to adopt or to leave alone. Plus the faults: boot and
//! status-check delays, bad images, zone outages, single failures, instances vanishing or
//! stopping, capacity shortages (per pool: an instance type in a zone, every type in a zone — an
//! outage of the zone's capacity — or everywhere), throttling and lost responses; and the
//! `phoenix:protected` tag an operator sets on an instance and removes.
use crate::rng::Rng;
use crate::variant::WorldBug;
use chrono::Duration;
use phoenix_core::images::ImageFacts;
use phoenix_core::model::{
    LaunchTemplateRef, Lifecycle, Observed, Timestamp, TAG_DEFINITION, TAG_FLEET, TAG_PROTECTED,
    TAG_TOKEN,
};
use phoenix_core::{ImageId, InstanceId};
use phoenix_protocol::error::{Error, Result};
use phoenix_protocol::ports::ec2::{
    Ec2Instance, InstanceStatus, Instances, Ran, RunInstances, TemplateVersions, MAX_STATUS_IDS,
};
use std::collections::{BTreeMap, BTreeSet};

pub const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
pub const SUBNETS: [&str; 3] = ["subnet-0000000a", "subnet-0000000b", "subnet-0000000c"];
pub const INSTANCE_TYPE: &str = "t3.micro";
/// The simulated fleet's name.
pub const FLEET: &str = "web";
/// The prefix of phoenix's own tag keys (`phoenix:fleet`, `phoenix:launch`, ...).
pub const PHOENIX_PREFIX: &str = "phoenix:";

/// A pool of EC2 capacity: an instance type in a zone. `None` is every type, or every zone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pool {
    pub instance_type: Option<String>,
    pub zone: Option<usize>,
}

impl Pool {
    /// Whether a launch of `instance_type` into `zone` draws on this pool.
    pub fn covers(&self, instance_type: &str, zone: usize) -> bool {
        self.instance_type
            .as_deref()
            .is_none_or(|t| t == instance_type)
            && self.zone.is_none_or(|z| z == zone)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} in {}",
            self.instance_type.as_deref().unwrap_or("any type"),
            self.zone.map_or("any zone", |z| ZONES[z])
        )
    }
}

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

/// One simulated instance. Its tags are what EC2 keeps: those it was launched with, and those
/// CreateTags and DeleteTags changed since. One phoenix launched carries the fleet's tag (the
/// simulator runs one fleet) unless an operator took it out of the fleet by removing the tag.
#[derive(Debug, Clone)]
pub struct Vm {
    pub id: InstanceId,
    pub image: ImageId,
    pub zone: usize,
    pub instance_type: String,
    pub launched_at: Timestamp,
    pub tags: BTreeMap<String, String>,
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
    /// It carries the `phoenix:fleet` tag of the simulated fleet.
    pub fn tagged(&self) -> bool {
        self.tags.get(TAG_FLEET).is_some_and(|f| f == FLEET)
    }
    /// Its `phoenix:launch` tag: the decision (or adoption) it belongs to.
    pub fn token(&self) -> Option<&str> {
        self.tags.get(TAG_TOKEN).map(String::as_str)
    }
    /// Its `phoenix:definition` tag.
    pub fn definition(&self) -> Option<&str> {
        self.tags.get(TAG_DEFINITION).map(String::as_str)
    }
    /// It carries the `phoenix:protected` tag.
    pub fn protected(&self) -> bool {
        self.tags.contains_key(TAG_PROTECTED)
    }
    /// An operator sets or removes the `phoenix:protected` tag.
    pub fn set_protected(&mut self, on: bool) {
        if on {
            self.tags
                .insert(TAG_PROTECTED.to_string(), "true".to_string());
        } else {
            self.tags.remove(TAG_PROTECTED);
        }
    }
    /// The keys of phoenix's tags (`phoenix:*`) it carries.
    pub fn phoenix_tags(&self) -> impl Iterator<Item = &str> {
        self.tags
            .keys()
            .map(String::as_str)
            .filter(|k| k.starts_with(PHOENIX_PREFIX))
    }
    /// Exists and is not on its way out (stopped instances still exist).
    pub fn alive(&self) -> bool {
        !self.state.is_gone()
    }
    /// Pending or running: what counts against the surge (and costs money).
    pub fn counts_for_surge(&self) -> bool {
        matches!(self.state, Lifecycle::Pending | Lifecycle::Running)
    }
}

pub struct Ec2 {
    pub vms: BTreeMap<InstanceId, Vm>,
    next_id: u64,
    /// What RunInstances answered per ClientToken (EC2 returns the same for a repeated token).
    client_tokens: BTreeMap<String, Vec<InstanceId>>,
    /// Every token any instance was ever created for (kept after the instances are gone).
    pub tokens_created: BTreeSet<String>,
    /// The AMIs this account can see.
    pub images: BTreeSet<ImageId>,
    /// Launch templates by name.
    pub templates: BTreeMap<String, TemplateVersions>,
    // --- the world's condition -------------------------------------------------------------
    /// Bad images: launched instances of these are born broken.
    pub bad_images: BTreeMap<ImageId, Badness>,
    /// Zones down, until when.
    pub zones_down: BTreeMap<usize, Timestamp>,
    /// Pools out of capacity (RunInstances of a type in a zone the pool covers fails with
    /// InsufficientInstanceCapacity), until when.
    pub shortage: BTreeMap<Pool, Timestamp>,
    /// API calls fail with RequestLimitExceeded with this probability (per mille) until then.
    pub throttle: Option<(Timestamp, u32)>,
    /// Whether RunInstances honours the ClientToken (real EC2 does; the emulator does not).
    pub honour_client_token: bool,
    /// A RunInstances response is lost (per mille); the SDK retries the call.
    pub lost_response: u32,
    /// Longest DescribeInstances lag for a new instance, in seconds.
    pub max_lag: u64,
    /// A promise about tags this EC2 breaks (`Variant::World`), if any.
    pub bug: Option<WorldBug>,
}

/// What IAM answers a call the functions' policy does not allow.
fn unauthorized(message: String) -> Error {
    Error::Permanent {
        service: "ec2",
        message: format!("UnauthorizedOperation: {message}"),
    }
}

fn throttled(call: &str) -> Error {
    Error::Throttled {
        service: "ec2",
        message: format!("RequestLimitExceeded ({call})"),
    }
}

impl Ec2 {
    pub fn new() -> Self {
        Ec2 {
            vms: BTreeMap::new(),
            next_id: 0x1000_0000,
            client_tokens: BTreeMap::new(),
            tokens_created: BTreeSet::new(),
            images: BTreeSet::new(),
            templates: BTreeMap::new(),
            bad_images: BTreeMap::new(),
            zones_down: BTreeMap::new(),
            shortage: BTreeMap::new(),
            throttle: None,
            honour_client_token: true,
            lost_response: 0,
            max_lag: 20,
            bug: None,
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

    pub fn throttles(&self, now: Timestamp, rng: &mut Rng) -> bool {
        self.throttle
            .is_some_and(|(until, p)| now < until && rng.chance(p))
    }

    /// What DescribeInstances lists: not terminated, and past its listing lag.
    pub fn visible(vm: &Vm, now: Timestamp) -> bool {
        vm.visible_from <= now && vm.state != Lifecycle::Terminated
    }

    fn described(&self, vm: &Vm) -> Ec2Instance {
        Ec2Instance {
            id: vm.id.to_string(),
            image: Some(vm.image.to_string()),
            state: vm.state,
            launched_at: Some(vm.launched_at),
            zone: Some(ZONES[vm.zone].to_string()),
            subnet: Some(SUBNETS[vm.zone].to_string()),
            instance_type: Some(vm.instance_type.clone()),
            tags: vm.tags.clone(),
        }
    }

    // --- the API -------------------------------------------------------------------------------

    /// Whether RunInstances of `instance_type` into `zone` is refused for capacity now.
    pub fn short(&self, instance_type: &str, zone: usize, now: Timestamp) -> bool {
        self.shortage
            .iter()
            .any(|(pool, until)| now < *until && pool.covers(instance_type, zone))
    }

    /// DescribeInstances: every instance the filter selects that is listed yet (new ones appear
    /// after a lag) and not terminated.
    pub fn describe_instances(
        &self,
        which: &Instances,
        now: Timestamp,
        rng: &mut Rng,
    ) -> Result<Vec<Ec2Instance>> {
        if self.throttles(now, rng) {
            return Err(throttled("DescribeInstances"));
        }
        let selected = |vm: &Vm| match which {
            Instances::Tagged { key, value } => vm.tags.get(key) == Some(value),
            Instances::Ids(ids) => ids.iter().any(|id| id == vm.id.as_str()),
        };
        Ok(self
            .vms
            .values()
            .filter(|vm| Self::visible(vm, now) && selected(vm))
            .map(|vm| self.described(vm))
            .collect())
    }

    /// The system status check fails: the host (an impaired host, its zone down), not the image.
    pub fn system_impaired(&self, vm: &Vm) -> bool {
        vm.state == Lifecycle::Running && (vm.impaired || self.zone_down(vm))
    }

    /// DescribeInstanceStatus: the status checks of the ids EC2 reports on (running ones).
    pub fn instance_status(
        &self,
        ids: &[String],
        now: Timestamp,
        rng: &mut Rng,
    ) -> Result<Vec<InstanceStatus>> {
        if self.throttles(now, rng) {
            return Err(throttled("DescribeInstanceStatus"));
        }
        if ids.len() > MAX_STATUS_IDS {
            return Err(Error::Permanent {
                service: "ec2",
                message: format!("DescribeInstanceStatus of {} ids", ids.len()),
            });
        }
        Ok(ids
            .iter()
            .filter_map(|id| self.vms.values().find(|vm| vm.id.as_str() == id.as_str()))
            .filter(|vm| vm.state == Lifecycle::Running)
            .map(|vm| InstanceStatus {
                id: vm.id.to_string(),
                ok: self.status_ok(vm, now),
                system_impaired: self.system_impaired(vm),
            })
            .collect())
    }

    /// RunInstances, all or nothing, into the request's subnet; a repeated ClientToken answers
    /// the first call's instances where the endpoint honours it. A lost response is retried by
    /// the SDK: against an endpoint that ignores the token, that launches again. Returns the
    /// answer and, for the simulator's checks, the instances this call created.
    pub fn run_instances(
        &mut self,
        r: &RunInstances,
        now: Timestamp,
        rng: &mut Rng,
    ) -> (Result<Ran>, Vec<InstanceId>) {
        if self.throttles(now, rng) {
            return (Err(throttled("RunInstances")), Vec::new());
        }
        let Some(image) = ImageId::parse(&r.image)
            .ok()
            .filter(|i| self.images.contains(i))
        else {
            let e = Error::NotFound(format!("InvalidAMIID.NotFound: {}", r.image));
            return (Err(e), Vec::new());
        };
        let zone = r
            .subnet
            .as_deref()
            .and_then(|s| SUBNETS.iter().position(|x| *x == s))
            .unwrap_or(0);
        let instance_type = r.instance_type.as_deref().unwrap_or(INSTANCE_TYPE);
        if self.short(instance_type, zone, now) {
            return (
                Err(Error::Capacity("InsufficientInstanceCapacity".into())),
                Vec::new(),
            );
        }
        let answer = |ec2: &Ec2, ids: &[InstanceId]| Ran {
            instances: ids
                .iter()
                .filter_map(|id| ec2.vms.get(id))
                .map(|vm| ec2.described(vm))
                .collect(),
            request_id: None,
        };
        if self.honour_client_token {
            if let Some(ids) = self.client_tokens.get(&r.client_token).cloned() {
                return (Ok(answer(self, &ids)), Vec::new());
            }
        }
        let mut created = self.create(r, &image, zone, now, rng);
        if rng.chance(self.lost_response) {
            // The response is lost; the SDK retries the same request. EC2 answers a repeated
            // ClientToken with the first result; an endpoint that ignores it launches again.
            if rng.chance(300) {
                // The retries time out too: the caller cannot know the launch happened.
                let e = Error::Transient {
                    service: "ec2",
                    message: "RequestTimeout (RunInstances, after retries)".into(),
                };
                return (Err(e), created);
            }
            if !self.honour_client_token {
                let again = self.create(r, &image, zone, now, rng);
                let out = answer(self, &again);
                created.extend(again);
                return (Ok(out), created);
            }
        }
        (Ok(answer(self, &created)), created)
    }

    /// TerminateInstances: one id that does not exist fails the whole call
    /// (`InvalidInstanceID.NotFound`), and so does one without the fleet's tag — the functions'
    /// IAM policy allows terminating only instances that carry it (`UnauthorizedOperation`).
    /// Returns the ids this call moved to shutting-down.
    pub fn terminate_instances(
        &mut self,
        ids: &[String],
        now: Timestamp,
        rng: &mut Rng,
    ) -> Result<Vec<InstanceId>> {
        if self.throttles(now, rng) {
            return Err(throttled("TerminateInstances"));
        }
        let mut found = Vec::new();
        for id in ids {
            match self.vms.values().find(|vm| vm.id.as_str() == id.as_str()) {
                None => return Err(Error::NotFound(format!("InvalidInstanceID.NotFound: {id}"))),
                Some(vm) if !vm.tagged() => {
                    return Err(unauthorized(format!("{id} is not tagged {TAG_FLEET}")))
                }
                Some(vm) => found.push(vm.id.clone()),
            }
        }
        let mut terminated = Vec::new();
        for id in found {
            if let Some(vm) = self.vms.get_mut(&id) {
                if vm.alive() {
                    vm.state = Lifecycle::ShuttingDown;
                    vm.transition_at = Some(now + Duration::seconds(rng.range(5, 40) as i64));
                    terminated.push(id);
                }
            }
        }
        Ok(terminated)
    }

    /// DescribeImages of one AMI.
    pub fn describe_image(&self, image: &str) -> Option<ImageFacts> {
        self.images
            .iter()
            .any(|i| i.as_str() == image)
            .then(ImageFacts::default)
    }

    /// DescribeLaunchTemplates of one template, by id or name.
    pub fn describe_launch_template(&self, t: &LaunchTemplateRef) -> Option<TemplateVersions> {
        self.templates
            .iter()
            .find(|(name, v)| t.name.as_ref() == Some(*name) || t.id.as_ref() == Some(&v.id))
            .map(|(_, v)| v.clone())
    }

    /// CreateLaunchTemplateVersion made the default (`--set-default`): returns the new version.
    pub fn new_template_version(&mut self, name: &str) -> Option<u64> {
        let t = self.templates.get_mut(name)?;
        t.latest += 1;
        t.default = t.latest;
        Some(t.latest)
    }

    /// Everything DescribeInstances would list of the fleet, with status checks, as the
    /// protocol's `Compute::describe_fleet` reports it (for the simulator's final check).
    pub fn observed(&self, now: Timestamp) -> Vec<Observed> {
        self.vms
            .values()
            .filter(|vm| Self::visible(vm, now) && vm.tagged())
            .map(|vm| Observed {
                targets: Default::default(),
                id: vm.id.clone(),
                image: Some(vm.image.clone()),
                state: vm.state,
                status_ok: self.status_ok(vm, now),
                system_impaired: self.system_impaired(vm),
                launched_at: Some(vm.launched_at),
                token: vm.token().map(str::to_string),
                zone: Some(ZONES[vm.zone].to_string()),
                instance_type: Some(vm.instance_type.clone()),
                subnet: Some(SUBNETS[vm.zone].to_string()),
                definition: vm.definition().map(str::to_string),
                protected: vm.protected(),
            })
            .collect()
    }

    /// The next instance id EC2 hands out.
    fn new_id(&mut self) -> InstanceId {
        let id = InstanceId::parse(&format!("i-{:08x}", self.next_id))
            .unwrap_or_else(|_| unreachable!("8 hex digits make an instance id"));
        self.next_id += 1;
        id
    }

    /// An instance launched outside phoenix (by hand, by another tool, by an Auto Scaling group)
    /// at `launched_at`, with `tags`: running, booted and listed long before `now`.
    pub fn run_outside(
        &mut self,
        image: &ImageId,
        zone: usize,
        launched_at: Timestamp,
        tags: BTreeMap<String, String>,
    ) -> InstanceId {
        let id = self.new_id();
        let running_at = launched_at + Duration::seconds(30);
        let ready_at = running_at + Duration::seconds(60);
        self.vms.insert(
            id.clone(),
            Vm {
                id: id.clone(),
                image: image.clone(),
                zone,
                instance_type: INSTANCE_TYPE.to_string(),
                launched_at,
                tags,
                visible_from: launched_at,
                state: Lifecycle::Running,
                running_at,
                ready_at,
                transition_at: None,
                gone_at: None,
                born: Badness::Good,
                impaired: false,
                app_failed: false,
                reported: false,
                next_fail_report: None,
                passes_left: 4,
                next_pass_report: Some(ready_at + Duration::seconds(10)),
            },
        );
        id
    }

    /// The instances these ids name, all of them known to EC2 (a terminated one for the hour it
    /// is still listed), or `InvalidInstanceID.NotFound` for the first that is not.
    fn known(&self, ids: &[String]) -> Result<Vec<InstanceId>> {
        ids.iter()
            .map(|id| {
                InstanceId::parse(id)
                    .ok()
                    .filter(|i| self.vms.contains_key(i))
                    .ok_or_else(|| Error::NotFound(format!("InvalidInstanceID.NotFound: {id}")))
            })
            .collect()
    }

    /// CreateTags, as the functions' IAM policy lets them call it: a request that sets
    /// `phoenix:fleet` and no key but phoenix's (`UnauthorizedOperation` otherwise). One id that
    /// does not exist fails the whole call. Returns the ids tagged: all of them.
    pub fn create_tags(
        &mut self,
        ids: &[String],
        tags: &BTreeMap<String, String>,
        now: Timestamp,
        rng: &mut Rng,
    ) -> Result<Vec<InstanceId>> {
        if self.throttles(now, rng) {
            return Err(throttled("CreateTags"));
        }
        let found = self.known(ids)?;
        if !tags.contains_key(TAG_FLEET) || tags.keys().any(|k| !k.starts_with(PHOENIX_PREFIX)) {
            return Err(unauthorized(format!(
                "CreateTags of [{}] without {TAG_FLEET} or with a key not phoenix's",
                tags.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let mut tagged = found.clone();
        match self.bug {
            Some(WorldBug::ForgetTags) => tagged.clear(),
            Some(WorldBug::TagNeighbour) => {
                tagged.extend(found.iter().filter_map(|id| {
                    let next = u64::from_str_radix(id.as_str().strip_prefix("i-")?, 16).ok()? + 1;
                    InstanceId::parse(&format!("i-{next:08x}")).ok()
                }));
            }
            _ => {}
        }
        for id in &tagged {
            if let Some(vm) = self.vms.get_mut(id) {
                vm.tags.extend(tags.clone());
            }
        }
        Ok(found)
    }

    /// DeleteTags, as the functions' IAM policy lets them call it: of phoenix's keys only, named
    /// (a request naming none would delete every tag), from instances that carry `phoenix:fleet`
    /// (`UnauthorizedOperation` otherwise, for the whole call). One id that does not exist fails
    /// the whole call; a key an instance does not carry is no error. Returns the ids untagged.
    pub fn delete_tags(
        &mut self,
        ids: &[String],
        keys: &[String],
        now: Timestamp,
        rng: &mut Rng,
    ) -> Result<Vec<InstanceId>> {
        if self.throttles(now, rng) {
            return Err(throttled("DeleteTags"));
        }
        let found = self.known(ids)?;
        if keys.is_empty() || keys.iter().any(|k| !k.starts_with(PHOENIX_PREFIX)) {
            return Err(unauthorized(format!(
                "DeleteTags of [{}]: only phoenix's keys, named",
                keys.join(", ")
            )));
        }
        if let Some(id) = found
            .iter()
            .find(|id| !self.vms[*id].tags.contains_key(TAG_FLEET))
        {
            return Err(unauthorized(format!(
                "DeleteTags on {id}, which does not carry {TAG_FLEET}"
            )));
        }
        if self.bug == Some(WorldBug::KeepTags) {
            return Ok(found);
        }
        for id in &found {
            if let Some(vm) = self.vms.get_mut(id) {
                for k in keys {
                    vm.tags.remove(k);
                }
            }
        }
        Ok(found)
    }

    fn create(
        &mut self,
        r: &RunInstances,
        image: &ImageId,
        zone: usize,
        now: Timestamp,
        rng: &mut Rng,
    ) -> Vec<InstanceId> {
        // The decision's token is the `phoenix:launch` tag; the ClientToken is one attempt at
        // it (`<token>.<k>` for a later offering), which EC2 keeps apart from the tag. The
        // instances carry the request's tags.
        let token = r
            .tags
            .get(TAG_TOKEN)
            .map_or(r.client_token.as_str(), String::as_str);
        let count = r.count;
        let born = self.bad_images.get(image).copied().unwrap_or(Badness::Good);
        let mut ids = Vec::new();
        for _ in 0..count {
            let id = self.new_id();
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
                    zone,
                    instance_type: r
                        .instance_type
                        .clone()
                        .unwrap_or_else(|| INSTANCE_TYPE.to_string()),
                    launched_at: now,
                    tags: r.tags.clone(),
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
            .entry(r.client_token.clone())
            .or_insert_with(|| ids.clone());
        self.tokens_created.insert(token.to_string());
        ids
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

    /// The fleet's instances that exist and are not on their way out.
    pub fn alive(&self) -> impl Iterator<Item = &Vm> {
        self.vms.values().filter(|vm| vm.alive() && vm.tagged())
    }
}

impl Default for Ec2 {
    fn default() -> Self {
        Self::new()
    }
}
