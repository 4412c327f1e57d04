//! Instances phoenix did not launch: taken into a fleet (`adopt`), detached from the Auto Scaling
//! group they came from a batch at a time (`Tx::detach_from_groups`), given back (`release`).
//!
//! What holds:
//! - adopting launches nothing and terminates nothing: it records running instances as the
//!   fleet's, then tags them (the records first, so no pass takes them for orphans); those on
//!   another image than the fleet's are rolled to it by a rollout, under the disruption budget;
//! - an adopted instance not yet seen with the fleet's tags is asked to be tagged again after
//!   `LEASE`, never taken for vanished; one EC2 no longer knows is;
//! - while an instance is in its Auto Scaling group nothing voluntary takes it (`is_held`), and
//!   a failed one waits to be detached before it is repaired; detaching takes an instance out of
//!   the group's target groups (AWS deregisters it; phoenix registers it with the fleet's), so
//!   serving instances are detached only as far as the budget lets instances be unavailable,
//!   counting those detached and not yet serving again; failed ones go first, all at once;
//! - a released instance's record stays as a tombstone; its tags are removed after the commit,
//!   and again by any pass that still sees them. Release refuses while anything is in flight.

use super::intents::{create_fleet, update_spec, Resolved};
use super::step::Step;
use super::tx::{Tx, LEASE, MAX_TOUCHED_PER_STEP};
use crate::error::{Error, Result};
use crate::events::Change;
use crate::ids::{ImageId, InstanceId};
use crate::model::{
    Adopted, AsgMember, Fleet, FleetSpec, Health, Instance, Lifecycle, Observed, Released, Signals,
    Takeover,
};
use crate::time::Timestamp;
use std::collections::BTreeMap;

/// What an adoption takes: the instances found, what selected them, and the Auto Scaling group
/// they are taken from (a takeover), if they are.
#[derive(Debug, Clone, Copy)]
pub struct Adoption<'a> {
    pub found: &'a [Observed],
    /// `tag:app=web`, `instances`, `asg:<name>`: recorded with each instance.
    pub from: &'a str,
    pub group: Option<&'a str>,
}

/// Most instances one adoption records: they are written in one transaction. The controller
/// adopts more in as many steps.
pub const MAX_ADOPTED_PER_STEP: usize = MAX_TOUCHED_PER_STEP;

/// Takes `adoption.found` into the fleet `before` (created from `spec` if there is none, else
/// updated to it as `phoenix fleet apply` would), as one step: records, then a `Tag` command.
/// Refused, with every reason, when one of them is not running or has no image; instances
/// already the fleet's are left as they are (adopting again is harmless).
pub fn adopt(
    before: Option<&Fleet>,
    spec: FleetSpec,
    resolved: Resolved,
    adoption: Adoption<'_>,
    now: Timestamp,
) -> Result<Step> {
    let refused: Vec<String> = adoption
        .found
        .iter()
        .filter_map(|o| match (o.state, &o.image) {
            (Lifecycle::Running, Some(_)) => None,
            (Lifecycle::Running, None) => Some(format!("{} reports no image", o.id)),
            (state, _) => Some(format!(
                "{} is {}: only running instances are adopted",
                o.id,
                state.as_str()
            )),
        })
        .collect();
    if !refused.is_empty() {
        return Err(Error::invalid("instances", refused.join("; ")));
    }
    if adoption.found.len() > MAX_ADOPTED_PER_STEP {
        return Err(Error::invalid(
            "instances",
            format!(
                "{} in one step; at most {MAX_ADOPTED_PER_STEP}",
                adoption.found.len()
            ),
        ));
    }
    if let (Some(f), Some(group)) = (before, adoption.group) {
        if let Some(t) = f.takeover.as_ref().filter(|t| t.group != group) {
            return Err(Error::invalid(
                "asg",
                format!(
                    "fleet {} is taking over Auto Scaling group {} already; one at a time",
                    f.spec.name, t.group
                ),
            ));
        }
    }
    let step = match before {
        Some(f) => update_spec(f, spec, resolved, now)?,
        None => create_fleet(spec, resolved, now)?,
    };
    Ok(step.then(|f| {
        let mut tx = Tx::new(f, now);
        tx.adopt(adoption);
        tx.finish()
    }))
}

impl Tx {
    /// The token an adoption is recorded under: `<fleet>-<incarnation>-<version>-a`, like a
    /// launch decision's (`decide_launch`) and distinct from every one of them.
    fn adoption_token(&self) -> String {
        format!(
            "{}-{}-{}-a",
            self.fleet.spec.name,
            self.fleet.incarnation(),
            self.fleet.version + 1
        )
    }

    fn adopt(&mut self, adoption: Adoption<'_>) {
        let token = self.adoption_token();
        let definition = self.fleet.definition().fingerprint();
        let mut ids = Vec::new();
        for o in adoption.found {
            let Some(image) = o.image.clone() else {
                continue;
            };
            if ids.contains(&o.id) || self.fleet.instances.get(&o.id).is_some_and(|i| i.is_live()) {
                continue;
            }
            let record = Instance {
                id: o.id.clone(),
                image,
                launched_at: o.launched_at.unwrap_or(self.now),
                state: Lifecycle::Running,
                health: Health::Unknown,
                // It served before phoenix took it: no `HealthCheckPassed` is owed for it. What
                // EC2 and the target groups say of it still counts, from the next pass.
                signals: Signals {
                    passed: true,
                    ..Signals::default()
                },
                token: token.clone(),
                zone: o.zone.clone(),
                instance_type: o.instance_type.clone(),
                disposal: None,
                terminated_at: None,
                taints: Vec::new(),
                retirement: None,
                replacement_for: None,
                // What it is made of beyond its image is not known: it counts as the fleet's
                // definition, and an image, subnet or type that differs still rolls it.
                definition: Some(definition.clone()),
                subnet: o.subnet.clone(),
                launch_hook: None,
                protected: o.protected,
                spot: false,
                adopted: Some(Adopted {
                    at: self.now,
                    from: adoption.from.to_string(),
                    tagged: false,
                    asked_at: self.now,
                    asg: adoption.group.map(|g| AsgMember {
                        group: g.to_string(),
                        detach_asked: None,
                    }),
                }),
                released: None,
            };
            self.fleet.instances.insert(o.id.clone(), record);
            self.touched.insert(o.id.clone());
            self.fleet.live += 1;
            ids.push(o.id.clone());
        }
        if ids.is_empty() {
            self.ignore("every instance selected is the fleet's already");
            return;
        }
        self.changes.push(Change::Adopted {
            token,
            from: adoption.from.to_string(),
            instances: ids.clone(),
        });
        if let Some(group) = adoption.group {
            match self.fleet.takeover.as_mut() {
                Some(t) => t.instances += ids.len() as u32,
                None => {
                    self.fleet.takeover = Some(Takeover {
                        group: group.to_string(),
                        started_at: self.now,
                        instances: ids.len() as u32,
                    });
                    self.changes.push(Change::TakeoverStarted {
                        group: group.to_string(),
                        instances: ids.len() as u32,
                    });
                }
            }
        }
        self.tag.extend(ids.iter().cloned());
        self.roll_adopted(&ids);
    }

    /// Adopted instances on another image than the fleet's are rolled to it by a rollout from
    /// the image most of them run (what a rollback would go back to), unless one is under way.
    fn roll_adopted(&mut self, ids: &[InstanceId]) {
        if self
            .fleet
            .rollout
            .as_ref()
            .is_some_and(|r| r.status.is_active())
        {
            return;
        }
        let spec_image = self.fleet.spec.image.clone();
        let mut off: BTreeMap<&ImageId, usize> = BTreeMap::new();
        for id in ids {
            if let Some(i) = self
                .fleet
                .instances
                .get(id)
                .filter(|i| i.image != spec_image)
            {
                *off.entry(&i.image).or_default() += 1;
            }
        }
        let Some(from) = off
            .iter()
            .max_by_key(|(image, n)| (**n, std::cmp::Reverse(**image)))
            .map(|(image, _)| (*image).clone())
        else {
            return;
        };
        self.start_rollout(from, spec_image, None);
    }

    /// EC2 lists an adopted instance with the fleet's tags: it is tagged, whatever became of
    /// the request.
    pub(super) fn seen_tagged(&mut self, inst: &Instance) {
        if inst.adopted.as_ref().is_some_and(|a| !a.tagged) {
            if let Some(a) = self.instance_mut(&inst.id).and_then(|i| i.adopted.as_mut()) {
                a.tagged = true;
            }
            self.changes.push(Change::Tagged {
                instances: vec![inst.id.clone()],
                retried: false,
            });
        }
    }

    /// An adopted instance EC2 does not list with the fleet's tags yet: tagging it is asked
    /// again once the request's lease ran out. Whether this is such an instance.
    pub(super) fn awaiting_tag(&mut self, inst: &Instance) -> bool {
        let Some(a) = inst.adopted.as_ref().filter(|a| !a.tagged) else {
            return false;
        };
        if a.asked_at + LEASE <= self.now {
            let now = self.now;
            if let Some(a) = self.instance_mut(&inst.id).and_then(|i| i.adopted.as_mut()) {
                a.asked_at = now;
            }
            self.changes.push(Change::Tagged {
                instances: vec![inst.id.clone()],
                retried: true,
            });
            self.tag.push(inst.id.clone());
        }
        true
    }

    /// A released instance's tags: removed again while EC2 still lists it with them, once the
    /// last request's lease ran out; known removed once it does not.
    pub(super) fn follow_released(&mut self, inst: &Instance, still_tagged: bool) {
        let Some(r) = inst.released.as_ref().filter(|r| !r.untagged) else {
            return;
        };
        let now = self.now;
        if !still_tagged {
            if let Some(r) = self
                .instance_mut(&inst.id)
                .and_then(|i| i.released.as_mut())
            {
                r.untagged = true;
            }
            self.changes.push(Change::Untagged {
                instances: vec![inst.id.clone()],
            });
        } else if r.asked_at + LEASE <= now {
            if let Some(r) = self
                .instance_mut(&inst.id)
                .and_then(|i| i.released.as_mut())
            {
                r.asked_at = now;
            }
            self.changes.push(Change::Released {
                instances: vec![inst.id.clone()],
            });
            self.untag.push(inst.id.clone());
        }
    }

    /// The next batch of a takeover: adopted instances still in their group, tagged, with no
    /// detach in flight — the failed ones, then as many serving ones as the budget lets be
    /// unavailable (all of them when the fleet has no target groups: detaching then takes
    /// nothing out of service). Once none is left in the group, the takeover is over.
    pub(super) fn detach_from_groups(&mut self) {
        let Some(takeover) = self.fleet.takeover.clone() else {
            return;
        };
        if !self.fleet.complete {
            return;
        }
        let now = self.now;
        let in_flight = |i: &Instance| {
            i.adopted
                .as_ref()
                .and_then(|a| a.asg.as_ref())
                .and_then(|m| m.detach_asked)
                .is_some_and(|t| t + LEASE > now)
        };
        let members: Vec<&Instance> = self.fleet.live_instances().filter(|i| i.in_asg()).collect();
        if members.is_empty() {
            self.fleet.takeover = None;
            self.changes.push(Change::TakeoverFinished {
                group: takeover.group,
            });
            return;
        }
        let flying = members.iter().filter(|i| in_flight(i)).count() as u32;
        let due: Vec<&Instance> = members
            .iter()
            .copied()
            .filter(|i| i.adopted.as_ref().is_some_and(|a| a.tagged) && !in_flight(i))
            .collect();
        let (broken, serving): (Vec<&Instance>, Vec<&Instance>) = due
            .into_iter()
            .partition(|i| i.is_failed() || i.state != Lifecycle::Running);
        let room = if self.fleet.spec.target_groups().is_empty() {
            serving.len()
        } else {
            let healthy = self
                .fleet
                .live_instances()
                .filter(|i| i.is_healthy() && i.disposal.is_none())
                .count() as u32;
            healthy
                .saturating_sub(flying)
                .saturating_sub(self.fleet.budget().min_healthy) as usize
        };
        let mut chosen: Vec<(String, InstanceId)> = broken
            .iter()
            .chain(serving.iter().take(room))
            .filter_map(|i| {
                let group = i.adopted.as_ref()?.asg.as_ref()?.group.clone();
                Some((group, i.id.clone()))
            })
            .collect();
        chosen.truncate(MAX_TOUCHED_PER_STEP.saturating_sub(self.touched.len()));
        let mut by_group: BTreeMap<String, Vec<InstanceId>> = BTreeMap::new();
        for (group, id) in chosen {
            if let Some(m) = self
                .instance_mut(&id)
                .and_then(|i| i.adopted.as_mut())
                .and_then(|a| a.asg.as_mut())
            {
                m.detach_asked = Some(now);
            }
            by_group.entry(group).or_default().push(id);
        }
        for (group, instances) in by_group {
            self.changes.push(Change::DetachDecided {
                group: group.clone(),
                instances: instances.clone(),
            });
            self.detach.entry(group).or_default().extend(instances);
        }
    }

    /// Out of their group: the fleet's own from now on. AWS took them out of the group's target
    /// groups; until the fleet's report them healthy again they do not count as serving.
    pub(super) fn detached(&mut self, group: &str, ids: &[InstanceId], request_ids: &[String]) {
        let groups = !self.fleet.spec.target_groups().is_empty();
        for id in ids {
            let Some(inst) = self.instance_mut(id) else {
                continue;
            };
            if let Some(a) = inst.adopted.as_mut() {
                a.asg = None;
            }
            if groups && inst.is_live() {
                inst.signals.elb_ok = false;
                if inst.health == Health::Healthy {
                    self.set_health(id, Health::Unknown);
                }
            }
        }
        self.changes.push(Change::Detached {
            group: group.to_string(),
            instances: ids.to_vec(),
            request_ids: request_ids.to_vec(),
        });
    }

    /// A detach that failed: asked again by the next pass.
    pub(super) fn detach_failed(&mut self, group: &str, ids: &[InstanceId], error: &str) {
        for id in ids {
            if let Some(m) = self
                .instance_mut(id)
                .and_then(|i| i.adopted.as_mut())
                .and_then(|a| a.asg.as_mut())
            {
                m.detach_asked = None;
            }
        }
        self.changes.push(Change::DetachFailed {
            group: group.to_string(),
            instances: ids.to_vec(),
            error: error.to_string(),
        });
    }

    /// Tagging went through: `gone` ones EC2 no longer knows have vanished.
    pub(super) fn tagged(&mut self, ids: &[InstanceId], gone: &[InstanceId]) {
        let mut done = Vec::new();
        for id in ids.iter().filter(|id| !gone.contains(id)) {
            if let Some(a) = self.instance_mut(id).and_then(|i| i.adopted.as_mut()) {
                a.tagged = true;
                done.push(id.clone());
            }
        }
        if !done.is_empty() {
            self.changes.push(Change::Tagged {
                instances: done,
                retried: false,
            });
        }
        for id in gone {
            if self.fleet.instances.get(id).is_some_and(|i| i.is_live()) {
                self.changes.push(Change::Vanished {
                    instance: id.clone(),
                    state: "not found when tagged".into(),
                });
                self.bury(id);
            }
        }
    }

    pub(super) fn untagged(&mut self, ids: &[InstanceId]) {
        for id in ids {
            if let Some(r) = self.instance_mut(id).and_then(|i| i.released.as_mut()) {
                r.untagged = true;
            }
        }
        self.changes.push(Change::Untagged {
            instances: ids.to_vec(),
        });
    }
}

/// Gives every live instance of the fleet back (`phoenix fleet release`), as one step: each
/// record kept as released, the capacity set to 0 so nothing is launched in their place, then an
/// `Untag` command. Refused while launches, terminations, a rollout or a takeover are under way
/// (they would be cut off halfway), and for more instances than one step writes.
pub fn release(fleet: &Fleet, now: Timestamp) -> Result<Step> {
    let name = &fleet.spec.name;
    let busy = |what: String| {
        Error::invalid(
            "fleet",
            format!("fleet {name} has {what}; release it once that is over"),
        )
    };
    if !fleet.complete {
        return Err(Error::invalid("fleet", "release needs the whole fleet"));
    }
    if !fleet.pending.is_empty() {
        return Err(busy(format!(
            "{} launches in flight",
            fleet.pending_count()
        )));
    }
    let leaving = fleet
        .live_instances()
        .filter(|i| i.disposal.is_some())
        .count();
    if leaving > 0 {
        return Err(busy(format!("{leaving} instances on their way out")));
    }
    if let Some(r) = fleet.rollout.as_ref().filter(|r| r.status.is_active()) {
        return Err(busy(format!(
            "rollout {} under way (`phoenix rollout abort {name}` stops it)",
            r.id
        )));
    }
    if let Some(t) = &fleet.takeover {
        return Err(busy(format!(
            "a takeover of Auto Scaling group {}",
            t.group
        )));
    }
    let ids: Vec<InstanceId> = fleet.live_instances().map(|i| i.id.clone()).collect();
    if ids.len() > MAX_TOUCHED_PER_STEP {
        return Err(Error::invalid(
            "fleet",
            format!(
                "fleet {name} has {} instances; release gives back at most {MAX_TOUCHED_PER_STEP} \
                 at once (scale it in first)",
                ids.len()
            ),
        ));
    }
    let mut tx = Tx::new(fleet, now);
    if tx.fleet.spec.capacity != 0 {
        tx.changes.push(Change::CapacityChanged {
            from: tx.fleet.spec.capacity,
            to: 0,
        });
        tx.fleet.spec.capacity = 0;
        tx.fleet.capacity_set_at = now;
    }
    for id in &ids {
        let failed = tx.fleet.instances.get(id).is_some_and(Instance::is_failed);
        if let Some(i) = tx.instance_mut(id) {
            i.released = Some(Released {
                at: now,
                untagged: false,
                asked_at: now,
            });
        }
        tx.fleet.live = tx.fleet.live.saturating_sub(1);
        if failed {
            tx.fleet.failed = tx.fleet.failed.saturating_sub(1);
        }
    }
    if !ids.is_empty() {
        tx.changes.push(Change::Released {
            instances: ids.clone(),
        });
        tx.untag = ids;
    } else {
        tx.ignore("the fleet has no instance to give back");
    }
    Ok(tx.finish())
}
