//! Everything phoenix records about one fleet (`Fleet`): its spec, its rollout and waves, the
//! launches it decided and has not yet seen (`PendingLaunch`), quarantined images, the breaker
//! and the hourly budget's memory, and its instances.
//!
//! What holds: `version` rises by one with every committed change, and every write is
//! conditional on the version read; an event older than `image_set_at` (or `capacity_set_at`)
//! changes neither, so a late delivery cannot undo a newer change; `live` and `failed` count the
//! live and the failed instances (counters, so that work on one instance needs no other record;
//! set again from the records by every reconcile of the whole fleet); a launch is in `pending`
//! from the moment it is decided until its instances are recorded or it is given up
//! (write-ahead).

use super::adoption::Takeover;
use super::budgets::Reason;
use super::definition::Definition;
use super::instance::{Instance, Instances};
use super::placement::{Offering, Unavailable};
use super::spec::{Budget, FleetSpec};
use crate::events::QueuedIntent;
use crate::ids::{ImageId, InstanceId};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A launch phoenix decided and has not yet seen the instances of. Recorded before RunInstances is
/// called (write-ahead), so a crash between the call and the record is recovered by finding the
/// instances by their `phoenix:launch` tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLaunch {
    pub token: String,
    pub image: ImageId,
    pub count: u32,
    pub reason: String,
    pub decided_at: Timestamp,
    /// Until then, the invocation that decided it owns the call; after, any reconcile may finish it.
    pub lease_until: Timestamp,
    /// The failed instance this launch replaces, for a repair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement_for: Option<InstanceId>,
    /// Where it may launch, in order: the first that EC2 has capacity for (none, for a launch
    /// recorded before there were offerings: the fleet's type, in a subnet drawn from its token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offerings: Vec<Offering>,
}

impl PendingLaunch {
    /// The zone it was planned for.
    pub fn zone(&self) -> Option<&str> {
        self.offerings.first().and_then(|o| o.zone.as_deref())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStatus {
    InProgress,
    /// Stopped at a checkpoint or by an operator; `rollout resume` (or the checkpoint's timer)
    /// continues it.
    Paused,
    /// The new image failed its health gate: instances on it are being replaced by the previous image.
    RollingBack,
    Succeeded,
    /// Every instance is back on the previous image; the new one is quarantined.
    RolledBack,
    /// Stopped for good by an operator; the fleet stays as it is, mixed if need be.
    Aborted,
    /// A newer image arrived before this rollout finished; the newer rollout continues from here.
    Superseded,
}

impl RolloutStatus {
    /// Still moving instances (or about to).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RolloutStatus::InProgress | RolloutStatus::Paused | RolloutStatus::RollingBack
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub number: u32,
    pub started_at: Timestamp,
    /// Launch tokens of this wave.
    pub tokens: Vec<String>,
    pub launched: Vec<InstanceId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terminated: Vec<InstanceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ImageId>,
    pub to: ImageId,
    pub status: RolloutStatus,
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    pub waves: Vec<Wave>,
    /// Why it is paused, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
    /// Checkpoints (in %) already passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints_passed: Vec<u32>,
    /// Why it rolled back or was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last time it moved on: it started, a wave started or became healthy, it rolled back,
    /// an operator resumed it. `None`: when it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progressed_at: Option<Timestamp>,
    /// It has not moved on for longer than the progress deadline, for a reason that is not the
    /// image's fault: it waits, and says on what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled: Option<Stall>,
    /// The launch definition it changes, if it does (with or without a new image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<DefinitionChange>,
    /// Held outside the fleet's rollout windows or by a freeze: since when, why, and when it
    /// may go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<WindowWait>,
    /// An operator let it go on outside its windows and freezes (`rollout resume --now`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_windows: bool,
}

/// A rollout held by the fleet's rollout windows or a freeze.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowWait {
    pub since: Timestamp,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opens: Option<Timestamp>,
}

/// A rollout's change of launch definition: from and to which fingerprint (both kept in
/// `Fleet::definitions` while the rollout may need them), and the fields that differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefinitionChange {
    pub from: String,
    pub to: String,
    pub fields: Vec<String>,
    /// The subnets before, when instances run in one taken away (subnets are not part of the
    /// fingerprint: adding one rolls nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnets: Option<Vec<String>>,
}

impl Rollout {
    /// When it last moved on.
    pub fn progressed(&self) -> Timestamp {
        self.progressed_at.unwrap_or(self.started_at)
    }
}

/// A rollout that waits longer than its progress deadline on something phoenix will not judge
/// (a health report that does not come, capacity EC2 does not have, a host that failed): nothing
/// is rolled back or quarantined for it; the operator is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stall {
    pub since: Timestamp,
    pub reason: String,
    /// What it waits on: instances (with why) and launches not made.
    pub waiting_on: Vec<String>,
}

/// Why a rollout waits, and until when (none: until `phoenix rollout resume`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// Status to return to on resume.
    pub resume_to: RolloutStatus,
}

/// An image refused for a fleet after it failed a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub reason: String,
    pub at: Timestamp,
    pub rollout: u64,
}

/// A replacement's failure in the breaker's window: one that failed again within the window is
/// churn, the sign that repairing does not help. At most `MAX_RECENT_FAILURES` are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentFailure {
    pub at: Timestamp,
    pub instance: FailedInstance,
}

/// Most failures the fleet record keeps for its breaker: each is a few hundred bytes of a record
/// DynamoDB holds to 400 KB (and the history entry copies), and past this many the breaker has
/// long tripped (more than its share of capacity unhealthy at once) in all but the largest fleets.
pub const MAX_RECENT_FAILURES: usize = 500;

/// What the breaker reads of a failed instance: whether it was a replacement, and what the
/// failures may share (image, zone, type, launch time). (Records written before it kept the whole
/// instance; these fields read from them as they are.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedInstance {
    pub id: InstanceId,
    pub image: ImageId,
    pub launched_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement_for: Option<InstanceId>,
}

impl From<&Instance> for FailedInstance {
    fn from(i: &Instance) -> Self {
        FailedInstance {
            id: i.id.clone(),
            image: i.image.clone(),
            launched_at: i.launched_at,
            zone: i.zone.clone(),
            instance_type: i.instance_type.clone(),
            replacement_for: i.replacement_for.clone(),
        }
    }
}

/// The mass-failure breaker, while tripped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breaker {
    pub tripped_at: Timestamp,
    pub unhealthy: u32,
    /// The attribute most unhealthy instances share, if one stands out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<String>,
    /// Why it tripped: which instances, over what window, against what threshold.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Everything phoenix records about one fleet. `instances` may hold only part of the fleet (an
/// instance-scoped event loads just its instance); `complete` says which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    pub spec: FleetSpec,
    /// Bumped by every committed change; every write is conditional on the version it read.
    pub version: u64,
    pub created_at: Timestamp,
    /// Event times of the last image and capacity changes, so a late, older event cannot undo a
    /// newer one (EventBridge does not order deliveries).
    pub image_set_at: Timestamp,
    pub capacity_set_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingLaunch>,
    /// Live instances (kept as a count so instance-scoped work can respect the surge limit without
    /// reading every instance).
    pub live: u32,
    /// Live instances that failed a health check (a count, for the breaker, for the same reason).
    #[serde(default)]
    pub failed: u32,
    /// Images refused for this fleet, with why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quarantined: BTreeMap<ImageId, Quarantine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Breaker>,
    /// Instances that failed in the breaker's window (replaced or not), as they were then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<RecentFailure>,
    /// An operator resumed repairs while the breaker was tripped; it stays off until fewer
    /// instances are unhealthy than its threshold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub breaker_overridden: bool,
    /// When instances were taken away in the last hour (for `max_replacements_per_hour`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disruptions: Vec<Timestamp>,
    /// When instances were taken away in the last hour for a reason with its own hourly budget
    /// (`policy.budgets`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disruptions_by_reason: BTreeMap<Reason, Vec<Timestamp>>,
    /// Whether the hourly budget was exhausted at the last pass (recorded once, not every pass).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub budget_exhausted: bool,
    /// The version a launch template named by `$Latest`/`$Default` (or by no version) resolved
    /// to when last looked at; new instances launch from that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_version: Option<String>,
    /// The launch definitions by fingerprint: the fleet's, its live instances', and those its
    /// last rollout came from (to roll back, or undo, to them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub definitions: BTreeMap<String, Definition>,
    /// What instances recorded without a definition count as: set to the fleet's definition when
    /// it first changes. Until then, they count as matching it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_definition: Option<String>,
    /// Target groups of the spec that did not exist at the last look: while one is missing, no
    /// instance that may serve is taken away voluntarily, and no drain ends before its delay.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub lb_missing: BTreeSet<String>,
    /// Registrations decided whose outcome is not recorded yet, by instance: until when each may
    /// still reach the target groups (`planner::REGISTRATION_LEASE` after its decision). While
    /// one may, the instance is not registered again, and a drain of it does not end.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registering: BTreeMap<InstanceId, Timestamp>,
    /// The availability zone of each of the spec's subnets, as EC2 reported it when the fleet
    /// file was applied (`placement`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub zones: BTreeMap<String, String>,
    /// Offerings (`Offering::key`) EC2 refused for capacity, skipped until their `until`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unavailable: BTreeMap<String, Unavailable>,
    /// Spot interruptions of the last day, by the (type, zone) `Offering::key` of the instance
    /// interrupted: Spot launches take the pools interrupted least first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub interruptions: BTreeMap<String, Vec<Timestamp>>,
    /// An Auto Scaling group being taken over: its instances detached a batch at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover: Option<Takeover>,
    #[serde(skip)]
    pub instances: Instances,
    #[serde(skip)]
    pub complete: bool,
    /// Intents waiting to be applied (`QueuedIntent`), oldest first; loaded with the whole fleet
    /// only.
    #[serde(skip)]
    pub inbox: Vec<QueuedIntent>,
}

impl Fleet {
    pub fn new(spec: FleetSpec, now: Timestamp) -> Self {
        Fleet {
            spec,
            version: 0,
            created_at: now,
            image_set_at: now,
            capacity_set_at: now,
            rollout: None,
            pending: Vec::new(),
            live: 0,
            failed: 0,
            quarantined: BTreeMap::new(),
            breaker: None,
            breaker_overridden: false,
            failures: Vec::new(),
            disruptions: Vec::new(),
            disruptions_by_reason: BTreeMap::new(),
            budget_exhausted: false,
            template_version: None,
            definitions: BTreeMap::new(),
            legacy_definition: None,
            lb_missing: BTreeSet::new(),
            registering: BTreeMap::new(),
            zones: BTreeMap::new(),
            unavailable: BTreeMap::new(),
            interruptions: BTreeMap::new(),
            takeover: None,
            inbox: Vec::new(),
            instances: Instances::new(),
            complete: true,
        }
    }

    /// Tells this fleet apart from an earlier one of the same name: its creation time in base 36
    /// (seconds; 6 characters until 2038, 7 after).
    pub fn incarnation(&self) -> String {
        let mut n = self.created_at.timestamp().max(0) as u64;
        let mut out = Vec::new();
        loop {
            out.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
            n /= 36;
            if n == 0 {
                break;
            }
        }
        out.reverse();
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn live_instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values().filter(|i| i.is_live())
    }

    pub fn pending_count(&self) -> u32 {
        self.pending.iter().map(|p| p.count).sum()
    }

    pub fn budget(&self) -> Budget {
        self.spec.policy.budget(self.spec.capacity)
    }

    /// The image new instances come from: the fleet's, unless it is quarantined (a health gate
    /// that failed with automatic rollback off leaves the fleet on it while the rollout waits for
    /// the operator), then the one that rollout came from, if that one is not. None: nothing may
    /// be launched until the operator settles it.
    pub fn launchable_image(&self) -> Option<ImageId> {
        let ok = |i: &ImageId| !self.quarantined.contains_key(i);
        Some(self.spec.image.clone()).filter(ok).or_else(|| {
            self.rollout
                .as_ref()
                .filter(|r| r.status.is_active())
                .and_then(|r| r.from.clone())
                .filter(ok)
        })
    }

    /// The zone a subnet counts in: its availability zone as looked up when the fleet file was
    /// applied, else the subnet itself — so an instance and its subnet always count in the same.
    pub fn zone_of_subnet(&self, subnet: &str) -> String {
        self.zones
            .get(subnet)
            .cloned()
            .unwrap_or_else(|| subnet.to_string())
    }

    /// The zone an instance counts in: its subnet's, else the zone EC2 reported (none: the fleet
    /// names no subnets and EC2 placed it).
    pub fn zone_of(&self, i: &Instance) -> Option<String> {
        match &i.subnet {
            Some(s) if self.zones.contains_key(s) || self.spec.subnets.contains(s) => {
                Some(self.zone_of_subnet(s))
            }
            _ if self.spec.subnets.is_empty() => None,
            _ => i.zone.clone().or_else(|| i.subnet.clone()),
        }
    }

    /// The fleet's zones, in the order of its subnets, each with its first subnet.
    pub fn zones(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for s in &self.spec.subnets {
            let z = self.zone_of_subnet(s);
            if !out.iter().any(|(zone, _)| *zone == z) {
                out.push((z, s.clone()));
            }
        }
        out
    }

    /// The launch definition new instances get: the spec's, its launch template at the version
    /// it resolved to.
    pub fn definition(&self) -> Definition {
        Definition::of(&self.spec, self.template_version.as_deref())
    }
}
