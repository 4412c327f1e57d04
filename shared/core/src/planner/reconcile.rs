//! One reconcile pass over a whole fleet: fold in what EC2 reports (`Observed`), finish or retry
//! unfinished work, then plan repairs, retirements, rollout waves and scaling.
//!
//! What holds: a pass is idempotent — run on the state it produced, against an unchanged EC2, it
//! decides nothing more. What it finishes: a pending launch whose lease ran out is adopted (its
//! instances found by their `phoenix:launch` tag) or launched again with the same token; a
//! decided termination not carried out is issued again; an instance tagged with the fleet that no
//! record and no pending launch owns is terminated; a recorded instance EC2 does not list counts
//! as vanished only once `OBSERVE_GRACE` has passed since its launch — an adopted one not yet
//! seen with the fleet's tags is tagged again instead (`adoption`); a released one still seen
//! with them is untagged again.

use super::rollout::track_rollout;
use super::scale::roll_and_scale;
use super::step::{Command, Launched, Step};
use super::tx::{fleet_tokens, Tx, LEASE};
use crate::events::Change;
use crate::ids::InstanceId;
use crate::model::{
    Fleet, Health, Instance, Instances, Lifecycle, Observed, Timestamp, TAG_PROTECTED,
};
use chrono::Duration;
use std::cmp::Ordering;
use std::collections::BTreeSet;

/// How long a recorded instance may be missing from DescribeInstances before it counts as vanished
/// (EC2's read-after-write is eventually consistent for new instances).
pub const OBSERVE_GRACE: Duration = Duration::minutes(2);

impl Step {
    /// `then(|f| reconcile(f, observed, now))`, planning on this step's fleet in place rather
    /// than on a copy of it.
    pub fn then_reconcile(self, observed: &[Observed], now: Timestamp) -> Step {
        let Step {
            fleet,
            changes,
            commands,
            touched,
        } = self;
        let next = reconcile_tx(Tx::owning(fleet, now), observed);
        Step::followed_by(changes, commands, touched, next)
    }
}

/// One reconcile pass over a whole fleet: fold in what EC2 reports, finish or retry unfinished
/// work, then plan replacements, rollout waves and scaling under the disruption budget.
///
/// Idempotent: run on the state it produced (and an unchanged EC2) it decides nothing more.
pub fn reconcile(fleet: &Fleet, observed: &[Observed], now: Timestamp) -> Step {
    reconcile_tx(Tx::new(fleet, now), observed)
}

/// What EC2 says of one instance now, folded into its record (its state, whether its host is
/// impaired): read before judging a failure report, so that a failure of the instance alone
/// (AWS stopped it, its host failed) is not taken for the image's.
pub fn observe_instance(fleet: &Fleet, observed: &Observed, now: Timestamp) -> Step {
    let mut tx = Tx::new(fleet, now);
    if let Some(inst) = fleet.instances.get(&observed.id).filter(|i| i.is_live()) {
        let host_impaired = observed.state == Lifecycle::Running && observed.system_impaired;
        if observed.state != inst.state && !observed.state.is_gone() {
            if let Some(i) = tx.instance_mut(&observed.id) {
                i.state = observed.state;
            }
            tx.changes.push(Change::StateChanged {
                instance: observed.id.clone(),
                state: observed.state,
            });
        }
        if host_impaired != inst.signals.host_impaired {
            if let Some(i) = tx.instance_mut(&observed.id) {
                i.signals.host_impaired = host_impaired;
            }
        }
    }
    tx.finish()
}

fn reconcile_tx(mut tx: Tx, observed: &[Observed]) -> Step {
    // The counters are derived: a full view is the moment to correct any drift.
    let (live, failed) = tx.fleet.live_instances().fold((0, 0), |(live, failed), i| {
        (live + 1, failed + u32::from(i.is_failed()))
    });
    tx.fleet.live = live;
    tx.fleet.failed = failed;
    observe(&mut tx, observed);
    tx.wake();
    tx.health_gate();
    tx.breaker();
    tx.detach_from_groups();
    // Failed instances first: they are the most urgent and cost no availability. Then instances
    // owed a replacement by a notice (waiting for their window or for room). Both found in one
    // pass: `retire` passes over any that a repair has just taken.
    let (mut failed, mut retiring) = (Vec::new(), Vec::new());
    for i in tx.fleet.live_instances().filter(|i| i.disposal.is_none()) {
        if i.is_failed() {
            failed.push(i.id.clone());
        }
        if i.retirement.is_some() {
            retiring.push(i.id.clone());
        }
    }
    for id in failed {
        if tx.room_to_touch() {
            tx.repair(&id);
        }
    }
    for id in retiring {
        if tx.room_to_touch() {
            tx.retire(&id);
        }
    }
    roll_and_scale(&mut tx);
    tx.rebalance();
    track_rollout(&mut tx);
    tx.forget_refusals();
    if tx.fleet.budget_exhausted && tx.hourly_room() != Some(0) {
        tx.note_budget(false);
    }
    tx.finish()
}

/// A recorded instance EC2 shows gone (or no longer lists): terminated as decided, or vanished.
fn gone(tx: &mut Tx, inst: &Instance, state: &str) {
    if inst.disposal.is_some() {
        tx.changes.push(Change::Terminated {
            instances: vec![inst.id.clone()],
            request_ids: Vec::new(),
        });
    } else {
        tx.changes.push(Change::Vanished {
            instance: inst.id.clone(),
            state: state.into(),
        });
    }
    tx.bury(&inst.id);
}

fn observe(tx: &mut Tx, observed: &[Observed]) {
    let now = tx.now;

    // Pending launches: adopt what EC2 has for them, or launch again once the lease ran out.
    for pending in tx.fleet.pending.clone() {
        let mut found: Vec<Launched> = observed
            .iter()
            .filter(|o| o.token.as_deref() == Some(pending.token.as_str()) && !o.state.is_gone())
            .filter(|o| !tx.fleet.instances.contains_key(&o.id))
            .map(|o| Launched {
                id: o.id.clone(),
                launched_at: o.launched_at,
                state: o.state,
                zone: o.zone.clone(),
                instance_type: o.instance_type.clone(),
                subnet: o.subnet.clone(),
                definition: o.definition.clone(),
            })
            .collect();
        found.sort_by(|a, b| (a.launched_at, &a.id).cmp(&(b.launched_at, &b.id)));
        if !found.is_empty() {
            tx.adopt_launch(&pending.token, &found, &[], None);
        } else if pending.lease_until <= now && tx.fleet.quarantined.contains_key(&pending.image) {
            tx.drop_pending(
                &pending.token,
                &format!("image {} is quarantined", pending.image),
            );
        } else if pending.lease_until <= now {
            if let Some(p) = tx
                .fleet
                .pending
                .iter_mut()
                .find(|p| p.token == pending.token)
            {
                p.lease_until = now + LEASE;
            }
            tx.changes.push(Change::LaunchRetried {
                token: pending.token.clone(),
            });
            // The same offerings, in the same order: each attempt at one keeps its ClientToken.
            tx.launches.push(Command::Launch {
                token: pending.token.clone(),
                image: pending.image.clone(),
                count: pending.count,
                offerings: pending.offerings.clone(),
            });
        }
    }

    // Recorded instances: follow EC2's view of them, as they were before this loop changed any
    // (a snapshot: a clone of the shared records, not a copy of them).
    let recorded = tx.fleet.instances.clone();
    let (reports, known) = match_observed(&recorded, observed);
    for (inst, report) in &reports {
        if inst.released.is_some() && tx.room_to_touch() {
            tx.follow_released(inst, report.is_some_and(|o| !o.state.is_gone()));
        }
    }
    for (inst, report) in reports.into_iter().filter(|(i, _)| i.is_live()) {
        if !tx.room_to_touch() {
            break;
        }
        match report {
            Some(o) if o.state.is_gone() => gone(tx, inst, o.state.as_str()),
            Some(o) => {
                tx.seen_tagged(inst);
                if o.state != inst.state {
                    if let Some(i) = tx.instance_mut(&inst.id) {
                        i.state = o.state;
                    }
                    tx.changes.push(Change::StateChanged {
                        instance: inst.id.clone(),
                        state: o.state,
                    });
                }
                if (o.zone.is_some() && inst.zone.is_none())
                    || (o.instance_type.is_some() && inst.instance_type.is_none())
                {
                    if let Some(i) = tx.instance_mut(&inst.id) {
                        i.zone = i.zone.clone().or(o.zone.clone());
                        i.instance_type = i.instance_type.clone().or(o.instance_type.clone());
                    }
                }
                // Protection is the `phoenix:protected` tag: the record follows it.
                if o.protected != inst.protected {
                    if let Some(i) = tx.instance_mut(&inst.id) {
                        i.protected = o.protected;
                    }
                    tx.changes.push(Change::ProtectionChanged {
                        instance: inst.id.clone(),
                        protected: o.protected,
                        by: format!("tag {TAG_PROTECTED}"),
                    });
                }
                let stopped = matches!(o.state, Lifecycle::Stopping | Lifecycle::Stopped);
                if stopped && !inst.is_failed() && inst.disposal.is_none() {
                    tx.set_health(
                        &inst.id,
                        Health::broken(format!("instance is {} outside phoenix", o.state.as_str())),
                    );
                } else if inst.health == Health::Unknown {
                    // What keeps it from becoming healthy may be its host: remembered, so that a
                    // late wave is not blamed on the image for it.
                    let host_impaired = o.state == Lifecycle::Running && o.system_impaired;
                    if host_impaired != inst.signals.host_impaired {
                        if let Some(i) = tx.instance_mut(&inst.id) {
                            i.signals.host_impaired = host_impaired;
                        }
                    }
                    let ec2_ok = o.state == Lifecycle::Running && o.status_ok;
                    if ec2_ok && !inst.signals.ec2_ok {
                        if let Some(i) = tx.instance_mut(&inst.id) {
                            i.signals.ec2_ok = true;
                        }
                    }
                    tx.refresh_elb_signal(&inst.id, o);
                    tx.promote(&inst.id);
                }
                tx.serving(inst, o);
                tx.way_out(inst, o);
            }
            None if tx.awaiting_tag(inst) => {}
            None if inst.launched_at + OBSERVE_GRACE <= now => gone(tx, inst, "missing"),
            None => {}
        }
    }

    tx.note_registrations();

    // Tagged with the fleet, but owned by no record and no pending decision: terminate.
    let pending_tokens: BTreeSet<&str> = fleet_tokens(&tx.fleet);
    // (The loop above neither adds nor removes records: `known` still says which have one.)
    let orphans: Vec<InstanceId> = observed
        .iter()
        .zip(known)
        .filter(|(o, known)| !known && !o.state.is_gone())
        .map(|(o, _)| o)
        .filter(|o| {
            o.token
                .as_deref()
                .is_none_or(|t| !pending_tokens.contains(t))
        })
        .filter(|o| !tx.terminate_now.contains(&o.id))
        .map(|o| o.id.clone())
        .collect();
    for id in orphans {
        tx.changes.push(Change::TerminationDecided {
            instance: id.clone(),
            reason: "owned by no phoenix decision".into(),
        });
        tx.terminate_now.push(id);
    }
}

/// Pairs each recorded instance, in id order, with what EC2 reports about it (the later report
/// if there are two), and says which reports belong to a record. A merge of both lists in id
/// order: a map lookup per instance would cost more than the rest of a pass over a large fleet.
fn match_observed<'r, 'o>(
    recorded: &'r Instances,
    observed: &'o [Observed],
) -> (Vec<(&'r Instance, Option<&'o Observed>)>, Vec<bool>) {
    // Positions in `observed` by id (EC2 lists instances in no particular order); with equal
    // ids, the later last.
    let mut order: Vec<([u64; 3], usize)> = observed
        .iter()
        .enumerate()
        .map(|(k, o)| (id_key(&o.id), k))
        .collect();
    order.sort_unstable();
    let mut order = order.into_iter().peekable();
    let mut known = vec![false; observed.len()];
    let reports = recorded
        .iter()
        .map(|(id, inst)| {
            let key = id_key(id);
            let mut report = None;
            while let Some(&(other, k)) = order.peek() {
                match other.cmp(&key) {
                    Ordering::Less => {}
                    Ordering::Equal => {
                        known[k] = true;
                        report = Some(&observed[k]);
                    }
                    Ordering::Greater => break,
                }
                order.next();
            }
            (inst, report)
        })
        .collect();
    (reports, known)
}

/// An instance id as numbers, to sort thousands without comparing strings: a valid id is at
/// most 19 ASCII bytes (`i-` and 8 or 17 hex digits), so its first 24 bytes, zero-padded, tell
/// it apart from any other and sort as its text does.
fn id_key(id: &InstanceId) -> [u64; 3] {
    let mut bytes = [0u8; 24];
    let text = id.as_str().as_bytes();
    let n = text.len().min(bytes.len());
    bytes[..n].copy_from_slice(&text[..n]);
    let word = |k: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[k * 8..k * 8 + 8]);
        u64::from_be_bytes(w)
    };
    [word(0), word(1), word(2)]
}
