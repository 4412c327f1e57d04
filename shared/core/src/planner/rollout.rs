//! A rollout's life: started by a new image, moved on wave by wave (`scale` plans the waves),
//! paused for the canary's bake and at checkpoints, sent back by the health gate or by an
//! operator, and ended once every instance runs its target image, healthy. Also the operator's
//! commands to a rollout (`control`), and the controller's early look at a wave that may have
//! just turned healthy (`wave_to_recheck`).
//!
//! What holds: a fleet has at most one rollout in motion (a newer image supersedes it); a new-image
//! instance that fails, or a wave late past its progress deadline, rolls the rollout back and
//! quarantines the image, and the launches of it this step would have made are given up; a
//! rollout held by a failed gate with automatic rollback off waits for the operator, not for a
//! timer.

use super::step::Command;
use super::tx::{fleet_tokens, Tx};
use crate::events::{Change, ControlAction};
use crate::ids::{ImageId, InstanceId};
use crate::model::{Fleet, Health, Instance, Pause, Quarantine, Rollout, RolloutStatus, Timestamp};
use crate::quantity::{Quantity, Rounding};
use chrono::Duration;
use std::collections::BTreeSet;

impl Tx {
    /// The rollout, while it still moves instances or may (in progress, paused, rolling back).
    pub(super) fn active_rollout(&mut self) -> Option<&mut Rollout> {
        self.fleet.rollout.as_mut().filter(|r| r.status.is_active())
    }

    pub(super) fn start_rollout(&mut self, from: ImageId, to: ImageId) {
        let mut next_id = 1;
        if let Some(prev) = self.fleet.rollout.as_mut() {
            next_id = prev.id + 1;
            if prev.status.is_active() {
                prev.status = RolloutStatus::Superseded;
                prev.finished_at = Some(self.now);
                prev.pause = None;
                self.changes
                    .push(Change::RolloutSuperseded { rollout: prev.id });
            }
        }
        self.changes.push(Change::RolloutStarted {
            rollout: next_id,
            from: Some(from.clone()),
            to: to.clone(),
        });
        self.fleet.rollout = Some(Rollout {
            id: next_id,
            from: Some(from),
            to,
            status: RolloutStatus::InProgress,
            started_at: self.now,
            finished_at: None,
            waves: Vec::new(),
            pause: None,
            checkpoints_passed: Vec::new(),
            reason: None,
        });
    }

    /// Sends the rollout back to its previous image, under the same budget. `quarantine`: the new
    /// image failed (not an operator's undo) and may not be launched for this fleet again.
    fn roll_back(&mut self, reason: String, quarantine: bool) {
        let now = self.now;
        let Some(r) = self.fleet.rollout.clone().filter(|r| r.status.is_active()) else {
            return;
        };
        if quarantine && !self.fleet.quarantined.contains_key(&r.to) {
            self.fleet.quarantined.insert(
                r.to.clone(),
                Quarantine {
                    reason: reason.clone(),
                    at: now,
                    rollout: r.id,
                },
            );
            self.changes.push(Change::ImageQuarantined {
                image: r.to.clone(),
                reason: reason.clone(),
            });
        }
        if quarantine {
            // Launches of the image retried earlier in this step are not made after all.
            self.cancel_launches(&r.to);
        }
        let back = r
            .from
            .clone()
            .filter(|f| !self.fleet.quarantined.contains_key(f));
        let Some(back) = back else {
            // Nothing safe to go back to: stop where we are and say so.
            self.abort(format!("{reason}; no earlier image to roll back to"));
            return;
        };
        if quarantine && !self.fleet.spec.policy.auto_rollback {
            let why = format!("health gate failed: {reason}; automatic rollback is off");
            // Already paused on a timer (a bake, a checkpoint): it now waits for the operator,
            // or the timer would resume it onto the quarantined image.
            if let Some(r) = self
                .active_rollout()
                .filter(|r| r.status == RolloutStatus::Paused)
            {
                if let Some(p) = r.pause.as_mut().filter(|p| p.until.is_some()) {
                    p.until = None;
                    p.reason = why.clone();
                    let id = r.id;
                    self.changes.push(Change::RolloutPaused {
                        rollout: id,
                        reason: why,
                        until: None,
                    });
                }
                return;
            }
            self.pause(why, None);
            return;
        }
        self.fleet.spec.image = back;
        if let Some(r) = self.fleet.rollout.as_mut() {
            r.status = RolloutStatus::RollingBack;
            r.pause = None;
            r.reason = Some(reason.clone());
            self.changes.push(Change::RolloutRollingBack {
                rollout: r.id,
                reason,
            });
        }
    }

    /// Drops the launches of `image` this step would make (retries of pending launches).
    fn cancel_launches(&mut self, image: &ImageId) {
        let tokens: Vec<String> = self
            .launches
            .iter()
            .filter_map(|c| match c {
                Command::Launch {
                    token, image: i, ..
                } if i == image => Some(token.clone()),
                _ => None,
            })
            .collect();
        for token in tokens {
            self.launches
                .retain(|c| !matches!(c, Command::Launch { token: t, .. } if *t == token));
            self.terminate_after.remove(&token);
            self.drop_pending(&token, format!("image {image} is quarantined"));
        }
    }

    pub(super) fn abort(&mut self, reason: String) {
        let now = self.now;
        if let Some(r) = self.active_rollout() {
            r.status = RolloutStatus::Aborted;
            r.finished_at = Some(now);
            r.pause = None;
            r.reason = Some(reason.clone());
            let id = r.id;
            self.changes.push(Change::RolloutAborted {
                rollout: id,
                reason,
            });
        }
    }

    fn pause(&mut self, reason: String, until: Option<Timestamp>) {
        if let Some(r) = self.active_rollout() {
            if r.status == RolloutStatus::Paused {
                return;
            }
            let resume_to = r.status;
            r.status = RolloutStatus::Paused;
            r.pause = Some(Pause {
                reason: reason.clone(),
                until,
                resume_to,
            });
            let id = r.id;
            self.changes.push(Change::RolloutPaused {
                rollout: id,
                reason,
                until,
            });
        }
    }

    fn resume(&mut self, reason: String) {
        if let Some(r) = self
            .active_rollout()
            .filter(|r| r.status == RolloutStatus::Paused)
        {
            r.status = r
                .pause
                .take()
                .map(|p| p.resume_to)
                .unwrap_or(RolloutStatus::InProgress);
            let id = r.id;
            self.changes.push(Change::RolloutResumed {
                rollout: id,
                reason,
            });
        }
    }

    /// The health gate of a rollout: a new-image instance that failed, or a wave that missed its
    /// deadline, sends the rollout back to the previous image and quarantines the new one.
    pub(super) fn health_gate(&mut self) {
        let now = self.now;
        let Some(r) = self.fleet.rollout.as_ref() else {
            return;
        };
        if !matches!(r.status, RolloutStatus::InProgress | RolloutStatus::Paused) {
            return;
        }
        if r.pause
            .as_ref()
            .is_some_and(|p| p.resume_to == RolloutStatus::RollingBack)
        {
            return;
        }
        let failed = self
            .fleet
            .instances
            .values()
            // Instances of this rollout only: launched since it started (EC2 stamps launch times to
            // the second, hence the one-second allowance). An instance that already ran the
            // target image before (a rollout back to an older image) says nothing about it.
            // (Health first: the cheapest test, and the one that almost always fails.)
            .find_map(|i| match &i.health {
                Health::Unhealthy { reason }
                    if i.image == r.to
                        && i.is_live()
                        && i.launched_at + Duration::seconds(1) >= r.started_at =>
                {
                    Some(format!(
                        "{} on {} failed its health check: {reason}",
                        i.id, r.to
                    ))
                }
                _ => None,
            });
        let deadline = self.fleet.spec.policy.progress_deadline;
        let late = r
            .waves
            .iter()
            .find(|w| {
                w.healthy_at.is_none()
                    && w.started_at + deadline.duration() <= now
                    && r.status == RolloutStatus::InProgress
            })
            .map(|w| {
                format!(
                    "wave {} was not healthy within its progress deadline of {deadline}",
                    w.number
                )
            });
        if let Some(reason) = failed.or(late) {
            self.roll_back(reason, true);
        }
    }

    /// Resumes a rollout whose timed pause (bake, checkpoint) is over.
    pub(super) fn wake(&mut self) {
        let now = self.now;
        let due = self
            .fleet
            .rollout
            .as_ref()
            .and_then(|r| r.pause.as_ref())
            .is_some_and(|p| p.until.is_some_and(|u| u <= now));
        if due {
            self.resume("pause over".into());
        }
    }
}

/// An operator's command to the rollout.
pub(super) fn control(tx: &mut Tx, action: ControlAction) {
    let status = tx.fleet.rollout.as_ref().map(|r| r.status);
    match (action, status) {
        (ControlAction::Pause, Some(RolloutStatus::InProgress | RolloutStatus::RollingBack)) => {
            tx.pause("paused by operator".into(), None)
        }
        (ControlAction::Resume, Some(RolloutStatus::Paused)) => {
            let forward = tx.fleet.rollout.as_ref().filter(|r| {
                r.pause
                    .as_ref()
                    .is_none_or(|p| p.resume_to != RolloutStatus::RollingBack)
            });
            match forward.filter(|r| tx.fleet.quarantined.contains_key(&r.to)) {
                Some(r) => {
                    let reason = format!(
                        "rollout {}'s image {} is quarantined: undo the rollout, or clear the quarantine first",
                        r.id, r.to
                    );
                    tx.ignore(reason)
                }
                None => tx.resume("resumed by operator".into()),
            }
        }
        (ControlAction::Abort, Some(s)) if s.is_active() => tx.abort("aborted by operator".into()),
        (ControlAction::Undo, Some(RolloutStatus::InProgress | RolloutStatus::Paused)) => {
            tx.roll_back("undone by operator".into(), false)
        }
        (ControlAction::Undo, Some(RolloutStatus::Succeeded | RolloutStatus::Aborted)) => {
            // Undo a finished rollout: a new rollout back to the image before it.
            let Some(r) = tx.fleet.rollout.clone() else {
                return;
            };
            match r.from.filter(|f| !tx.fleet.quarantined.contains_key(f)) {
                Some(back) => {
                    let current = tx.fleet.spec.image.clone();
                    tx.changes.push(Change::ImageChanged {
                        from: current.clone(),
                        to: back.clone(),
                    });
                    tx.fleet.spec.image = back.clone();
                    tx.fleet.image_set_at = tx.now;
                    tx.start_rollout(current, back);
                }
                None => tx.ignore(format!(
                    "rollout {} has no earlier image to go back to",
                    r.id
                )),
            }
        }
        (ControlAction::ResumeRepairs, _) => {
            if tx.fleet.breaker.take().is_some() {
                tx.fleet.breaker_overridden = true;
                tx.changes.push(Change::ReplacementResumed {
                    reason: "resumed by operator (the breaker stays off until fewer instances are unhealthy)".into(),
                });
            } else {
                tx.ignore("repairs are not halted");
            }
        }
        (action, status) => {
            let what = status
                .map(|s| format!("{s:?}").to_lowercase())
                .unwrap_or_else(|| "none".into());
            tx.ignore(format!(
                "cannot {} a rollout in state {what}",
                action.as_str()
            ))
        }
    }
}

/// Marks waves healthy; pauses for the canary's bake and at checkpoints; ends the rollout once
/// every instance runs its target image, healthy (Succeeded, or RolledBack when going back).
pub(super) fn track_rollout(tx: &mut Tx) {
    let now = tx.now;
    // Read in place rather than copied: a large rollout's waves list thousands of instances.
    let Some(rollout) = tx.fleet.rollout.as_ref().filter(|r| r.status.is_active()) else {
        return;
    };
    let pending: BTreeSet<&str> = fleet_tokens(&tx.fleet);
    let mut changes = Vec::new();
    // Waves that just became healthy, by position.
    let mut healthy_waves = Vec::new();
    for (n, wave) in rollout.waves.iter().enumerate() {
        if wave.healthy_at.is_some() {
            continue;
        }
        let launched_all = wave.tokens.iter().all(|t| !pending.contains(t.as_str()));
        let live: Vec<&Instance> = wave
            .launched
            .iter()
            .filter_map(|id| tx.fleet.instances.get(id))
            .filter(|i| i.is_live())
            .collect();
        if launched_all && !live.is_empty() && live.iter().all(|i| i.is_healthy()) {
            healthy_waves.push(n);
            changes.push(Change::WaveHealthy {
                rollout: rollout.id,
                wave: wave.number,
            });
        }
    }
    let first_wave_was_unhealthy = rollout
        .waves
        .first()
        .is_some_and(|w| w.healthy_at.is_none());
    let target = tx.fleet.spec.image.clone();
    let capacity = tx.fleet.spec.capacity as usize;
    let live: Vec<&Instance> = tx.fleet.live_instances().collect();
    let healthy_on_target = live
        .iter()
        .filter(|i| i.image == target && i.is_healthy() && i.disposal.is_none())
        .count();
    // A rollout whose image failed its health gate (quarantined, paused with automatic rollback
    // off) does not succeed by itself: the operator undoes it, or clears the quarantine.
    let done = tx.fleet.pending.is_empty()
        && !tx.fleet.quarantined.contains_key(&target)
        && live.len() == capacity
        && live
            .iter()
            .all(|i| i.image == target && i.is_healthy() && i.disposal.is_none());
    let policy = tx.fleet.spec.policy.clone();
    let canary_just_healthy =
        policy.canary.is_some() && first_wave_was_unhealthy && healthy_waves.first() == Some(&0);
    let mut pause = None;
    if let Some(r) = tx.fleet.rollout.as_mut() {
        for n in healthy_waves {
            r.waves[n].healthy_at = Some(now);
        }
        if done {
            r.status = if r.status == RolloutStatus::RollingBack {
                RolloutStatus::RolledBack
            } else {
                RolloutStatus::Succeeded
            };
            r.finished_at = Some(now);
            r.pause = None;
            changes.push(if r.status == RolloutStatus::RolledBack {
                Change::RolloutRolledBack { rollout: r.id }
            } else {
                Change::RolloutSucceeded { rollout: r.id }
            });
        } else if r.status == RolloutStatus::InProgress {
            if canary_just_healthy && !policy.bake.is_zero() {
                pause = Some((
                    format!("canary baking for {}", policy.bake),
                    Some(now + policy.bake.duration()),
                ));
            } else if let Some(cp) = policy
                .checkpoints
                .iter()
                .find(|c| !r.checkpoints_passed.contains(&c.percent))
            {
                if healthy_on_target as u32 >= checkpoint_count(capacity as u32, cp.percent) {
                    r.checkpoints_passed.push(cp.percent);
                    let until = cp.pause.map(|p| now + p.duration());
                    changes.push(Change::CheckpointReached {
                        rollout: r.id,
                        percent: cp.percent,
                        until,
                    });
                    let how = match cp.pause {
                        Some(p) => format!("for {p}"),
                        None => "until `phoenix rollout resume`".into(),
                    };
                    pause = Some((
                        format!("checkpoint {}% reached: paused {how}", cp.percent),
                        until,
                    ));
                }
            }
        }
    }
    tx.changes.extend(changes);
    if let Some((reason, until)) = pause {
        tx.pause(reason, until);
    }
}

pub(super) fn checkpoint_count(capacity: u32, percent: u32) -> u32 {
    Quantity::Percent(percent)
        .resolve(capacity, Rounding::Up)
        .max(1)
}

/// After an instance event: the instances of the rollout's current wave, if the event made one
/// of them healthy. The wave may now be complete; if those instances (read alone, not the whole
/// fleet) are all healthy (`wave_healthy`), the controller reconciles the fleet at once so the
/// next wave starts now, not at the next scheduled reconcile (up to a minute later, every wave).
pub fn wave_to_recheck<'a>(fleet: &'a Fleet, changes: &[Change]) -> Option<&'a [InstanceId]> {
    let wave = fleet
        .rollout
        .as_ref()
        .filter(|r| r.status == RolloutStatus::InProgress)?
        .waves
        .last()
        .filter(|w| w.healthy_at.is_none())?;
    changes
        .iter()
        .any(|c| {
            matches!(c, Change::HealthChanged { instance, health: Health::Healthy }
                if wave.launched.contains(instance))
        })
        .then_some(wave.launched.as_slice())
}

/// Whether every live instance of `members` (a fleet loaded with one wave's instances) is healthy.
pub fn wave_healthy(members: &Fleet) -> bool {
    members
        .instances
        .values()
        .filter(|i| i.is_live())
        .all(|i| i.is_healthy())
}
