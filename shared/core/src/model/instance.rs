//! One instance as phoenix records it (`Instance`), a fleet's records together (`Instances`,
//! shared copy-on-write between copies of a fleet), and what EC2 says about one (`Observed`).
//!
//! What holds: `terminated_at` is set once, and the record then stays as a tombstone so that late
//! events about the instance are recognised; while `disposal` is set (phoenix decided to
//! terminate it), the instance is neither repaired nor retired again. A copy of `Instances` shares
//! every record with the original until one of them changes it.

use super::adoption::{Adopted, Released};
use super::traffic::{HookWait, Targets};
use crate::ids::{ImageId, InstanceId};
use crate::lifecycle::{Health, Lifecycle};
use crate::notice::{Retirement, Taint};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Tag keys phoenix puts on every instance it launches, at launch (tag-on-create), so that an
/// instance is attributable to its fleet and decision from the moment it exists.
pub const TAG_FLEET: &str = "phoenix:fleet";
pub const TAG_IMAGE: &str = "phoenix:image";
pub const TAG_TOKEN: &str = "phoenix:launch";
/// The fingerprint of the launch definition it was launched from (`Definition::fingerprint`).
pub const TAG_DEFINITION: &str = "phoenix:definition";
/// Set (to any value) on an instance to protect it from voluntary disruption.
pub const TAG_PROTECTED: &str = "phoenix:protected";

/// The health signals an instance has given so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Signals {
    /// EC2 reported it running with both status checks `ok`.
    #[serde(default)]
    pub ec2_ok: bool,
    /// A `HealthCheckPassed` event named it.
    #[serde(default)]
    pub passed: bool,
    /// EC2's system status check reported its host impaired at the last look: whatever keeps it
    /// from becoming healthy is not the image's fault.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_impaired: bool,
    /// Every target group of the fleet reported it `healthy`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub elb_ok: bool,
}

/// phoenix has decided to terminate this instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disposal {
    pub reason: String,
    /// When it was decided, or last acted on (a stage begun, a call issued again): a call not
    /// followed by its outcome within `LEASE` of this is issued again.
    pub decided_at: Timestamp,
    /// Act only once this launch (its replacement) has succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_launch: Option<String>,
    /// Where it is on its way out.
    #[serde(default, skip_serializing_if = "Stage::is_terminate")]
    pub stage: Stage,
    /// It drained: no group lists it, and no registration decided before can land any more
    /// (`Fleet::registering`). It is terminated without being deregistered again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
}

/// The way out of a fleet, in order: deregistered from the fleet's target groups, drained,
/// held by the terminating hook, terminated. A fleet without target groups or a terminating hook
/// (and every record from before there were stages) goes straight to `Terminate`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// To be deregistered from every target group (after its replacement launched, if it waits
    /// for one); then it drains.
    Deregister,
    /// Deregistered: requests in flight finish. Over once no group lists it, or at `until` (the
    /// groups' deregistration delay, or sooner when AWS takes the instance back sooner).
    Draining { since: Timestamp, until: Timestamp },
    /// The terminating hook holds it: until `LifecycleActionCompleted` or `until`.
    Hook { since: Timestamp, until: Timestamp },
    /// To be terminated (re-validated just before the call).
    #[default]
    Terminate,
}

impl Stage {
    pub fn is_terminate(&self) -> bool {
        *self == Stage::Terminate
    }
    /// Deregistered and not yet terminated: out of the load balancers, still running.
    pub fn is_draining(&self) -> bool {
        matches!(self, Stage::Draining { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    pub image: ImageId,
    pub launched_at: Timestamp,
    pub state: Lifecycle,
    pub health: Health,
    #[serde(default)]
    pub signals: Signals,
    /// The launch decision that created it (its EC2 ClientToken and `phoenix:launch` tag).
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposal: Option<Disposal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated_at: Option<Timestamp>,
    /// In-place changes made to it outside phoenix (CloudTrail), newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// A replacement owed to it though it has not failed (Spot interruption, maintenance, taint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retirement: Option<Retirement>,
    /// The failed instance it was launched to replace, if it was (the breaker counts a
    /// replacement that fails again as a sign that repairing does not help).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement_for: Option<InstanceId>,
    /// The fingerprint of the launch definition it was launched from (`Definition`); none for an
    /// instance recorded before phoenix kept it (it counts as `Fleet::legacy_definition`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// The launching hook it waited on (none: the fleet had none when it launched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_hook: Option<HookWait>,
    /// Protected from voluntary disruption (its `phoenix:protected` tag): no rollout, age,
    /// rebalance or scale-in takes it; a failure or AWS taking it back still replaces it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protected: bool,
    /// A Spot instance (else On-Demand).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spot: bool,
    /// Taken into the fleet rather than launched by it (`phoenix fleet adopt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<Adopted>,
    /// Given back (`phoenix fleet release`): no longer the fleet's, the record kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<Released>,
}

impl Instance {
    /// The fleet's, and not terminated: neither a tombstone nor given back.
    pub fn is_live(&self) -> bool {
        self.terminated_at.is_none() && self.released.is_none()
    }
    /// Still in the Auto Scaling group it was adopted from.
    pub fn in_asg(&self) -> bool {
        self.adopted.as_ref().is_some_and(|a| a.asg.is_some())
    }
    /// Nothing voluntary takes it (a rollout, retirement for age, rebalance, scale-in): it is
    /// protected, or still in its Auto Scaling group.
    pub fn is_held(&self) -> bool {
        self.protected || self.in_asg()
    }
    pub fn is_healthy(&self) -> bool {
        self.health == Health::Healthy && self.state == Lifecycle::Running
    }
    pub fn is_failed(&self) -> bool {
        matches!(self.health, Health::Unhealthy { .. })
    }
    /// Past its launching hook (or it had none): it may be registered and counted.
    pub fn launch_hook_passed(&self) -> bool {
        self.launch_hook.as_ref().is_none_or(HookWait::continued)
    }
}

/// A fleet's instance records by id, shared copy-on-write. The planner is a pure function: each
/// step starts from a copy of the fleet it was given. With thousands of instances, copying every
/// record (and its strings) would cost more than the planning itself, so a copy shares them
/// instead: cloning is O(1); the first change copies the map's index (ids and pointers) once,
/// and only the records actually changed are copied.
#[derive(Clone, Default)]
pub struct Instances(Arc<BTreeMap<InstanceId, Arc<Instance>>>);

impl Instances {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn contains_key(&self, id: &InstanceId) -> bool {
        self.0.contains_key(id)
    }
    pub fn get(&self, id: &InstanceId) -> Option<&Instance> {
        self.0.get(id).map(|i| &**i)
    }
    /// The record to change, copied first if another fleet value shares it.
    pub fn get_mut(&mut self, id: &InstanceId) -> Option<&mut Instance> {
        if !self.0.contains_key(id) {
            return None;
        }
        Arc::make_mut(&mut self.0).get_mut(id).map(Arc::make_mut)
    }
    /// Adds or replaces a record, returning the one it replaced.
    pub fn insert(&mut self, id: InstanceId, instance: Instance) -> Option<Instance> {
        Arc::make_mut(&mut self.0)
            .insert(id, Arc::new(instance))
            .map(Arc::unwrap_or_clone)
    }
    pub fn remove(&mut self, id: &InstanceId) -> Option<Instance> {
        if !self.0.contains_key(id) {
            return None;
        }
        Arc::make_mut(&mut self.0)
            .remove(id)
            .map(Arc::unwrap_or_clone)
    }
    pub fn retain(&mut self, mut keep: impl FnMut(&InstanceId, &Instance) -> bool) {
        Arc::make_mut(&mut self.0).retain(|id, i| keep(id, i));
    }
    pub fn clear(&mut self) {
        *self = Self::default();
    }
    /// In id order, as every iterator here.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &InstanceId> + ExactSizeIterator {
        self.0.keys()
    }
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Instance> + ExactSizeIterator {
        self.0.values().map(|i| &**i)
    }
    pub fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = (&InstanceId, &Instance)> + ExactSizeIterator {
        self.0.iter().map(|(id, i)| (id, &**i))
    }
}

impl PartialEq for Instances {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Instances {}

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl std::ops::Index<&InstanceId> for Instances {
    type Output = Instance;
    fn index(&self, id: &InstanceId) -> &Instance {
        &self.0[id]
    }
}

impl FromIterator<(InstanceId, Instance)> for Instances {
    fn from_iter<T: IntoIterator<Item = (InstanceId, Instance)>>(iter: T) -> Self {
        Instances(Arc::new(
            iter.into_iter().map(|(id, i)| (id, Arc::new(i))).collect(),
        ))
    }
}

impl Extend<(InstanceId, Instance)> for Instances {
    fn extend<T: IntoIterator<Item = (InstanceId, Instance)>>(&mut self, iter: T) {
        Arc::make_mut(&mut self.0).extend(iter.into_iter().map(|(id, i)| (id, Arc::new(i))));
    }
}

/// What EC2 says about one instance tagged with the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Observed {
    pub id: InstanceId,
    pub image: Option<ImageId>,
    pub state: Lifecycle,
    /// Both EC2 status checks (system and instance) report `ok`.
    pub status_ok: bool,
    /// The system status check reports `impaired`: a problem of the host, not of the image.
    pub system_impaired: bool,
    pub launched_at: Option<Timestamp>,
    /// The `phoenix:launch` tag.
    pub token: Option<String>,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub subnet: Option<String>,
    /// The `phoenix:definition` tag.
    pub definition: Option<String>,
    /// What the fleet's target groups report about it (empty: none lists it, or the fleet has
    /// none).
    pub targets: Targets,
    /// It carries the `phoenix:protected` tag.
    pub protected: bool,
}

impl Observed {
    /// How EC2 shows a recorded instance when all is well: running, both status checks ok.
    pub fn running_ok(i: &Instance) -> Self {
        Observed {
            id: i.id.clone(),
            image: Some(i.image.clone()),
            state: Lifecycle::Running,
            status_ok: true,
            system_impaired: false,
            launched_at: Some(i.launched_at),
            token: Some(i.token.clone()),
            zone: i.zone.clone(),
            instance_type: i.instance_type.clone(),
            subnet: i.subnet.clone(),
            definition: i.definition.clone(),
            targets: Targets::new(),
            protected: i.protected,
        }
    }
}
