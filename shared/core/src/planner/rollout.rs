//! A rollout's life: started by a new image, moved on wave by wave (`scale` plans the waves),
//! paused for the canary's bake and at checkpoints, sent back by the health gate or by an
//! operator, and ended once every instance runs its target image, healthy. Also the operator's
//! commands to a rollout (`control`), and the controller's early look at a wave that may have
//! just turned healthy (`wave_to_recheck`).
//!
//! What holds: a fleet has at most one rollout in motion (a newer image supersedes it); enough
//! new-image instances failing in a way that may be the image's fault (`rollback_after`), or a
//! wave late past its progress deadline for such a reason, rolls the rollout back and quarantines
//! the image, and the launches of it this step would have made are given up; a failure of an
//! instance alone (its host, AWS stopping it) or a launch EC2 could not make never does — a wave
//! late for those stalls the rollout, which says what it waits on and is never guessed about; a
//! rollout held by a failed gate with automatic rollback off waits for the operator, not for a
//! timer.

use super::step::Command;
use super::tx::{fleet_tokens, Tx};
use crate::events::{Change, ControlAction};
use crate::ids::{ImageId, InstanceId};
use crate::lifecycle::{Lifecycle, Suspect};
use crate::model::{
    Definition, DefinitionChange, Fleet, Health, Instance, Pause, Quarantine, Rollout,
    RolloutStatus, Stall, Target, Timestamp, Wave,
};
use crate::quantity::{Quantity, Rounding};
use chrono::Duration;
use std::collections::BTreeSet;

impl Tx {
    /// The rollout, while it still moves instances or may (in progress, paused, rolling back).
    pub(super) fn active_rollout(&mut self) -> Option<&mut Rollout> {
        self.fleet.rollout.as_mut().filter(|r| r.status.is_active())
    }

    /// Starts a rollout if what new instances are made of changed since `before_image` and
    /// `before` (the fleet's definition then): a new image, a new launch definition, or both, in
    /// one rollout. The definitions stay known by fingerprint, to roll back to and to say why an
    /// instance drifted.
    pub(super) fn roll_if_changed(
        &mut self,
        before_image: ImageId,
        before: Definition,
        before_subnets: Vec<String>,
    ) {
        let after = self.fleet.definition();
        let (from, to) = (before.fingerprint(), after.fingerprint());
        let mut fields: Vec<String> = after
            .differences(&before)
            .into_iter()
            .map(String::from)
            .collect();
        // Subnets are not in the fingerprint: a new subnet rolls nothing, one taken away rolls
        // the instances in it.
        let subnets = &self.fleet.spec.subnets;
        let moved = before_subnets != *subnets
            && self.fleet.live_instances().any(|i| {
                i.subnet
                    .as_ref()
                    .is_some_and(|s| !subnets.is_empty() && !subnets.contains(s))
            });
        if moved {
            fields.push("subnets".into());
        }
        // With `instance_types`, which type an instance runs is not in the fingerprint either:
        // the single type turning into a list that holds every live instance's type rolls
        // nothing; a type taken out of the list rolls the instances of it.
        let spec = &self.fleet.spec;
        if !spec.instance_types.is_empty() {
            let retyped = self
                .fleet
                .live_instances()
                .any(|i| !spec.allows_type(i.instance_type.as_deref()));
            fields.retain(|f| f != "instance_type");
            if retyped {
                fields.push("instance_types".into());
            }
        }
        let definition = (!fields.is_empty()).then(|| DefinitionChange {
            fields,
            from: from.clone(),
            to: to.clone(),
            subnets: moved.then_some(before_subnets),
        });
        let changed = from != to;
        self.fleet.definitions.entry(to).or_insert(after);
        if changed {
            // Instances recorded before phoenix kept definitions were launched from this one.
            self.fleet.legacy_definition.get_or_insert(from.clone());
            self.fleet.definitions.entry(from).or_insert(before);
        }
        if before_image != self.fleet.spec.image || definition.is_some() {
            let to = self.fleet.spec.image.clone();
            self.start_rollout(before_image, to, definition);
        }
    }

    pub(super) fn start_rollout(
        &mut self,
        from: ImageId,
        to: ImageId,
        definition: Option<DefinitionChange>,
    ) {
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
            changed: definition
                .as_ref()
                .map(|d| d.fields.clone())
                .unwrap_or_default(),
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
            progressed_at: None,
            stalled: None,
            definition,
            waiting: None,
            ignore_windows: false,
        });
        self.prune_definitions();
    }

    /// Forgets definitions no live instance, the fleet, nor its last rollout was launched from.
    pub(super) fn prune_definitions(&mut self) {
        if !self.fleet.complete {
            return;
        }
        let mut used: BTreeSet<String> = self
            .fleet
            .live_instances()
            .filter_map(|i| i.definition.clone())
            .collect();
        used.insert(self.fleet.definition().fingerprint());
        used.extend(self.fleet.legacy_definition.clone());
        if let Some(d) = self
            .fleet
            .rollout
            .as_ref()
            .and_then(|r| r.definition.as_ref())
        {
            used.insert(d.from.clone());
            used.insert(d.to.clone());
        }
        self.fleet.definitions.retain(|fp, _| used.contains(fp));
    }

    /// Sends the rollout back to its previous image and launch definition, under the same budget.
    /// `failed`: the health gate failed (not an operator's undo); a new image is then quarantined
    /// and may not be launched for this fleet again (a definition alone is not: the fleet file
    /// that brought it is the operator's to change).
    fn roll_back(&mut self, reason: String, failed: bool) {
        let now = self.now;
        let Some(r) = self.fleet.rollout.clone().filter(|r| r.status.is_active()) else {
            return;
        };
        let new_image = r.from.as_ref() != Some(&r.to);
        let quarantine = failed && new_image;
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
        if failed {
            // Launches of the image (or definition) retried earlier in this step are not made
            // after all.
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
        if failed && !self.fleet.spec.policy.auto_rollback {
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
        self.restore_definition(r.definition.as_ref());
        if let Some(r) = self.fleet.rollout.as_mut() {
            r.status = RolloutStatus::RollingBack;
            r.pause = None;
            r.reason = Some(reason.clone());
            self.changes.push(Change::RolloutRollingBack {
                rollout: r.id,
                reason,
            });
        }
        self.progressed();
    }

    /// Puts the definition a rollout came from back into the spec. A launch template goes back to
    /// the version it had resolved to, pinned: it stays there until the fleet file is applied
    /// again.
    fn restore_definition(&mut self, change: Option<&DefinitionChange>) {
        let Some(change) = change else {
            return;
        };
        if let Some(subnets) = &change.subnets {
            self.fleet.spec.subnets = subnets.clone();
        }
        if let Some(def) = self.fleet.definitions.get(&change.from).cloned() {
            def.restore_into(&mut self.fleet.spec);
            self.fleet.template_version = None;
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
            self.drop_pending(&token, &format!("image {image} is quarantined"));
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
            self.progressed();
        }
    }

    /// The health gate of a rollout: enough of its new instances failing in a way that may be the
    /// image's fault (`rollback_after`), or a wave that missed its progress deadline for a reason
    /// that may be the image's, sends the rollout back to the previous image and quarantines the
    /// new one. A deadline missed for anything else — a launch EC2 could not make, a host or zone
    /// that failed, an instance AWS stopped — stalls the rollout instead: it waits, and says on
    /// what. So does a rollback that stops moving on.
    pub(super) fn health_gate(&mut self) {
        let now = self.now;
        let Some(r) = self.fleet.rollout.as_ref() else {
            return;
        };
        if !matches!(
            r.status,
            RolloutStatus::InProgress | RolloutStatus::Paused | RolloutStatus::RollingBack
        ) {
            return;
        }
        let rolling_back = r.status == RolloutStatus::RollingBack
            || r.pause
                .as_ref()
                .is_some_and(|p| p.resume_to == RolloutStatus::RollingBack);
        let deadline = self.fleet.spec.policy.progress_deadline;
        let target = Target::of(&self.fleet);
        if rolling_back {
            // Nothing to go back from; a rollback that does not move on is surfaced.
            if r.status == RolloutStatus::RollingBack && r.progressed() + deadline.duration() <= now
            {
                let waiting = self.waiting_on(None);
                self.stall(
                    format!(
                        "the rollback has not moved on within its progress deadline of {deadline}"
                    ),
                    waiting,
                );
            }
            return;
        }
        // Instances of this rollout only: launched since it started (EC2 stamps launch times to
        // the second, hence the one-second allowance). An instance that already ran the target
        // image before (a rollout back to an older image) says nothing about it. Only failures
        // that may be the image's count; an instance that broke alone is repaired and the
        // rollout goes on. (Health first: the cheapest test, and the one that almost always
        // fails.)
        let failed: Vec<String> = self
            .fleet
            .instances
            .values()
            .filter_map(|i| match &i.health {
                Health::Unhealthy {
                    reason,
                    suspect: Suspect::Image,
                } if target.matches(i)
                    && i.is_live()
                    && i.launched_at + Duration::seconds(1) >= r.started_at =>
                {
                    Some(format!(
                        "{} on {} failed its health check: {reason}",
                        i.id,
                        what_rolls(r)
                    ))
                }
                _ => None,
            })
            .collect();
        let wave_size = r.waves.last().map_or(1, |w| w.launched.len().max(1)) as u32;
        let needed = self
            .fleet
            .spec
            .policy
            .rollback_after
            .resolve(wave_size, Rounding::Up)
            .max(1) as usize;
        if failed.len() >= needed {
            let reason = if failed.len() == 1 {
                failed[0].clone()
            } else {
                format!(
                    "{} of the rollout's instances failed (rollback after {}): {}",
                    failed.len(),
                    needed,
                    failed.join("; ")
                )
            };
            self.roll_back(reason, true);
            return;
        }
        if r.status != RolloutStatus::InProgress || r.progressed() + deadline.duration() > now {
            return;
        }
        // No wave became healthy within the deadline. What it waits on: the waves that still
        // count, and the launches EC2 refused since it last moved on.
        let pending = fleet_tokens(&self.fleet);
        let since = r.progressed();
        let late: Vec<Wave> = r
            .waves
            .iter()
            .filter(|w| {
                w.healthy_at.is_none()
                    && (wave_alive(&self.fleet, &pending, w) || w.started_at >= since)
            })
            .cloned()
            .collect();
        if late.is_empty() {
            return;
        }
        let waiting: Vec<Waiting> = late.iter().flat_map(|w| self.waiting_on(Some(w))).collect();
        let numbers: Vec<String> = late.iter().map(|w| w.number.to_string()).collect();
        if waiting.iter().any(|w| w.image_may_be_at_fault) {
            let reason = format!(
                "wave {} was not healthy within its progress deadline of {deadline}",
                numbers.join(", ")
            );
            self.roll_back(reason, true);
        } else {
            let reason = format!(
                "no wave has been healthy within the progress deadline of {deadline} (waves {}), \
                 for reasons that are not the image's",
                numbers.join(", ")
            );
            self.stall(reason, waiting);
        }
    }

    /// What a late wave (or, with none, a rollback) waits on: its launches not made, and its
    /// instances not healthy yet, each with why and whether the image may be at fault.
    fn waiting_on(&self, wave: Option<&Wave>) -> Vec<Waiting> {
        let target = Target::of(&self.fleet);
        let pending: BTreeSet<&str> = fleet_tokens(&self.fleet);
        let mut out = Vec::new();
        let (tokens, members): (Vec<String>, Vec<InstanceId>) = match wave {
            Some(w) => (w.tokens.clone(), w.launched.clone()),
            None => (
                self.fleet
                    .pending
                    .iter()
                    .filter(|p| p.image == *target.image)
                    .map(|p| p.token.clone())
                    .collect(),
                self.fleet
                    .live_instances()
                    .filter(|i| target.matches(i) && !i.is_healthy())
                    .map(|i| i.id.clone())
                    .collect(),
            ),
        };
        let launched_tokens: BTreeSet<&str> = members
            .iter()
            .filter_map(|id| self.fleet.instances.get(id))
            .map(|i| i.token.as_str())
            .collect();
        for token in &tokens {
            if pending.contains(token.as_str()) {
                out.push(Waiting::not_image(format!("launch {token} not made yet")));
            } else if !launched_tokens.contains(token.as_str()) {
                out.push(Waiting::not_image(format!(
                    "launch {token} failed (EC2 could not make it)"
                )));
            }
        }
        for i in members
            .iter()
            .filter_map(|id| self.fleet.instances.get(id))
            .filter(|i| i.is_live() && !i.is_healthy())
        {
            let (why, image) = match (&i.health, i.state) {
                (
                    Health::Unhealthy {
                        reason,
                        suspect: Suspect::Instance,
                    },
                    _,
                ) => (format!("failed alone: {reason}"), false),
                (Health::Unhealthy { reason, .. }, _) => (format!("failed: {reason}"), true),
                (_, Lifecycle::Pending) => ("still pending in EC2".to_string(), false),
                (_, Lifecycle::Running) if i.signals.host_impaired => (
                    "EC2's system status check reports its host impaired".to_string(),
                    false,
                ),
                (_, Lifecycle::Running) if !i.signals.ec2_ok => {
                    ("EC2's status checks not passed".to_string(), true)
                }
                (_, Lifecycle::Running) => ("no passed health report".to_string(), true),
                (_, state) => (format!("{} in EC2", state.as_str()), false),
            };
            out.push(Waiting {
                what: format!("{} ({why})", i.id),
                image_may_be_at_fault: image,
            });
        }
        out
    }

    /// Marks the rollout stalled (once, until it moves on again), naming what it waits on.
    fn stall(&mut self, reason: String, waiting: Vec<Waiting>) {
        let now = self.now;
        let Some(r) = self.active_rollout() else {
            return;
        };
        if r.stalled.is_some() {
            return;
        }
        let waiting_on: Vec<String> = waiting.into_iter().map(|w| w.what).collect();
        r.stalled = Some(Stall {
            since: now,
            reason: reason.clone(),
            waiting_on: waiting_on.clone(),
        });
        let rollout = r.id;
        self.changes.push(Change::RolloutStalled {
            rollout,
            reason,
            waiting_on,
        });
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
        // A stalled rollout waits on something phoenix will not judge; resuming it gives it
        // another progress deadline.
        (ControlAction::Resume, Some(RolloutStatus::InProgress | RolloutStatus::RollingBack))
            if tx
                .fleet
                .rollout
                .as_ref()
                .is_some_and(|r| r.stalled.is_some()) =>
        {
            let id = tx.fleet.rollout.as_ref().map_or(0, |r| r.id);
            tx.changes.push(Change::RolloutResumed {
                rollout: id,
                reason: "resumed by operator after a stall".into(),
            });
            tx.progressed();
        }
        // Resume, and go on outside the windows and freezes: this rollout only.
        (ControlAction::ResumeNow, Some(s)) if s.is_active() => {
            let reason = "resumed by operator now: goes on outside its windows and freezes";
            if let Some(r) = tx.active_rollout() {
                r.ignore_windows = true;
            }
            if s == RolloutStatus::Paused {
                tx.resume(reason.into());
            } else {
                let id = tx.fleet.rollout.as_ref().map_or(0, |r| r.id);
                tx.changes.push(Change::RolloutResumed {
                    rollout: id,
                    reason: reason.into(),
                });
                tx.progressed();
            }
        }
        (ControlAction::Abort, Some(s)) if s.is_active() => tx.abort("aborted by operator".into()),
        (ControlAction::Undo, Some(RolloutStatus::InProgress | RolloutStatus::Paused)) => {
            tx.roll_back("undone by operator".into(), false)
        }
        (ControlAction::Undo, Some(RolloutStatus::Succeeded | RolloutStatus::Aborted)) => {
            // Undo a finished rollout: a new rollout back to the image and definition before it.
            let Some(r) = tx.fleet.rollout.clone() else {
                return;
            };
            let image = r
                .from
                .clone()
                .filter(|f| *f != r.to && !tx.fleet.quarantined.contains_key(f));
            let definition = r
                .definition
                .as_ref()
                .filter(|d| tx.fleet.definitions.contains_key(&d.from));
            if image.is_none() && definition.is_none() {
                return tx.ignore(format!(
                    "rollout {} has no earlier image or definition to go back to",
                    r.id
                ));
            }
            let current = tx.fleet.spec.image.clone();
            let before = tx.fleet.definition();
            if let Some(back) = image {
                tx.changes.push(Change::ImageChanged {
                    from: current.clone(),
                    to: back.clone(),
                });
                tx.fleet.spec.image = back;
                tx.fleet.image_set_at = tx.now;
            }
            let subnets = tx.fleet.spec.subnets.clone();
            tx.restore_definition(definition);
            tx.roll_if_changed(current, before, subnets);
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
    let canary = first_launching_wave(&tx.fleet, rollout)
        .filter(|w| w.healthy_at.is_none())
        .map(|w| w.number);
    let target = Target::of(&tx.fleet);
    let capacity = tx.fleet.spec.capacity as usize;
    let live: Vec<&Instance> = tx.fleet.live_instances().collect();
    let healthy_on_target = live
        .iter()
        .filter(|i| target.matches(i) && i.is_healthy() && i.disposal.is_none())
        .count();
    // A rollout whose image failed its health gate (quarantined, paused with automatic rollback
    // off) does not succeed by itself: the operator undoes it, or clears the quarantine.
    let done = tx.fleet.pending.is_empty()
        && !tx.fleet.quarantined.contains_key(target.image)
        && live.len() == capacity
        && live
            .iter()
            .all(|i| target.matches(i) && i.is_healthy() && i.disposal.is_none());
    let policy = tx.fleet.spec.policy.clone();
    let canary_just_healthy = policy.canary.is_some()
        && canary.is_some_and(|c| {
            healthy_waves
                .iter()
                .any(|n| rollout.waves.get(*n).is_some_and(|w| w.number == c))
        });
    let mut pause = None;
    let moved_on = !healthy_waves.is_empty();
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
    if moved_on {
        tx.progressed();
    }
    if let Some((reason, until)) = pause {
        tx.pause(reason, until);
    }
}

/// One thing a stalled rollout waits on.
struct Waiting {
    what: String,
    /// The image may be what it waits for (a failure, a health report that does not come):
    /// then a missed deadline rolls back; otherwise it stalls.
    image_may_be_at_fault: bool,
}

impl Waiting {
    fn not_image(what: String) -> Self {
        Waiting {
            what,
            image_may_be_at_fault: false,
        }
    }
}

/// Whether a wave still counts: it waits for a launch, or has live instances. A wave whose
/// launches EC2 refused, or whose instances are all gone (replaced, vanished), has nothing left
/// to become healthy: later waves carry on.
pub(super) fn wave_alive(fleet: &Fleet, pending: &BTreeSet<&str>, w: &Wave) -> bool {
    w.tokens.iter().any(|t| pending.contains(t.as_str()))
        || w.launched
            .iter()
            .any(|id| fleet.instances.get(id).is_some_and(|i| i.is_live()))
}

/// The first wave of a rollout that still counts (`wave_alive`), or became healthy.
pub(super) fn first_launching_wave<'a>(fleet: &Fleet, r: &'a Rollout) -> Option<&'a Wave> {
    let pending = fleet_tokens(fleet);
    r.waves
        .iter()
        .find(|w| w.healthy_at.is_some() || wave_alive(fleet, &pending, w))
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

/// What a rollout rolls out, for people: its image, its definition's changed fields, or both.
pub fn what_rolls(r: &Rollout) -> String {
    let fields = r.definition.as_ref().map(|d| d.fields.join(", "));
    match (r.from.as_ref() == Some(&r.to), fields) {
        (true, Some(f)) => format!("the new definition ({f} changed)"),
        (false, Some(f)) => format!("{} ({f} changed)", r.to),
        (_, None) => r.to.to_string(),
    }
}
