//! The calm phase: the world heals, and the fleet must converge within its time.

use super::Sim;
use crate::check::Checker;
use crate::traffic::Traffic;
use chrono::Duration;
use phoenix_core::model::{retires_at, Openness, RolloutStatus, Timestamp};
use phoenix_core::planner::Step;
use phoenix_core::InstanceId;
use std::collections::BTreeSet;

impl Sim {
    /// The calm phase begins: no more faults, lost or late events or crashes; zones come back,
    /// capacity returns, throttling stops, deleted target groups are restored, and images launch
    /// healthy from now on. Instances that
    /// are broken stay broken (and are reported, and replaced). The operator lifts every
    /// protection: a protected instance holds a rollout back for as long as it is protected, by
    /// design, and the fleet could not converge.
    pub(super) fn calm_down(&mut self) {
        {
            let mut w = self.world.lock();
            w.chaos = false;
            w.ec2.zones_down.clear();
            w.ec2.shortage.clear();
            for vm in w.ec2.vms.values_mut() {
                vm.set_protected(false);
            }
            w.ec2.throttle = None;
            w.ec2.lost_response = 0;
            w.ec2.bad_images.clear();
            let now = w.now;
            let w = &mut *w;
            w.elb.advance(now, &w.ec2, true);
            w.line = format!(
                "[{}] {} calm: faults stop, the world heals",
                w.steps,
                w.clock()
            );
            self.next_operator_check = w.now;
        }
        self.flush_line();
    }

    /// How long the calm phase may take: `Config::settle`, plus what the fleet's own pace needs
    /// to replace every instance twice over (a rollback, then a rollout or repairs): waves of
    /// `max_surge` instances of up to five minutes each (boot, status checks, a reconcile, the
    /// health report) — more behind target groups (the longest deregistration delay) and with
    /// hooks (two minutes each for the handler's answer), and the longest hook timeout once (a
    /// hook the handler never answered) — or the hourly disruption budget, whichever is slower.
    pub(super) fn settle_time(&self) -> Duration {
        let w = self.world.lock();
        let meta = w.books.meta();
        let instances = meta.spec.capacity.max(w.books.live().count() as u32);
        let budget = meta.budget();
        let per_wave = budget.max_total.saturating_sub(meta.spec.capacity).max(1);
        let spec = &meta.spec;
        let delay = spec
            .target_groups()
            .iter()
            .filter_map(|g| w.elb.delay(&g.arn))
            .max()
            .unwrap_or(0);
        let hooks = [spec.hooks.launching, spec.hooks.terminating];
        let wave = 5 + delay.div_ceil(60) as i64 + 2 * hooks.iter().flatten().count() as i64;
        let longest_hook = hooks.iter().flatten().map(|h| h.timeout.0).max();
        let by_waves = Duration::minutes(i64::from(2 * instances.div_ceil(per_wave)) * wave)
            + Duration::seconds(longest_hook.unwrap_or(0) as i64);
        let by_budget = meta
            .spec
            .policy
            .max_replacements_per_hour
            .map_or(Duration::zero(), |limit| {
                Duration::hours(i64::from((2 * instances).div_ceil(limit.max(1))))
            });
        self.cfg.settle + by_waves.max(by_budget)
    }

    /// `None` once the fleet has converged, else why not, with the kind of violation it is if it
    /// lasts past the deadline: `adoption` or `release` when an adoption or a release is not
    /// carried out in EC2 (`Custody::unsettled`), `group` when a group taken over is not empty, `serving` when what is left is an instance counted healthy and
    /// not registered, or a registration of what the fleet does not keep
    /// (`Traffic::check_serving`), `drift` when all that is left is drift
    /// (`Checker::check_drift`), else `liveness`.
    ///
    /// The fleet's windows and freezes: a rollout they hold is active, so not converged (the
    /// operator lets it go on now, `operator_tidies_up`). A scale-in they hold is not the fleet
    /// failing to converge: instances beyond capacity are allowed while the fleet is closed now
    /// and still 30 s from now (when `final_checks` reconciles once more), every one of them
    /// healthy, staying and matching the spec like the rest.
    pub(super) fn converged(&self) -> Option<(&'static str, String)> {
        let w = self.world.lock();
        // Adoptions and releases carried out in EC2: an adopted instance tagged as the fleet's, a
        // released one untagged.
        if let Some(unsettled) = w.custody.unsettled(&w.books, &w.ec2) {
            return Some(unsettled);
        }
        // A group taken over ends empty, but for instances an operator took out of the fleet
        // meanwhile (theirs, wherever they are).
        if let Some((group, id)) = w
            .autoscaling
            .left_in_takeovers()
            .find(|(_, id)| !w.custody.taken_out(id))
        {
            return Some((
                "group",
                format!("{id} is still in Auto Scaling group {group}, which the fleet took over"),
            ));
        }
        let meta = w.books.meta();
        let now = w.now;
        let not = |why: String| Some(("liveness", why));
        if let Some(r) = meta.rollout.as_ref().filter(|r| r.status.is_active()) {
            return not(match &r.waiting {
                Some(wait) => format!(
                    "rollout {} to {} still {:?}, waiting: {}",
                    r.id, r.to, r.status, wait.reason
                ),
                None => format!("rollout {} to {} still {:?}", r.id, r.to, r.status),
            });
        }
        if !meta.pending.is_empty() {
            return not(format!("{} launches pending", meta.pending.len()));
        }
        if meta.breaker.is_some() {
            return not("breaker tripped".into());
        }
        let queued = w.books.inbox().count();
        if queued > 0 {
            return not(format!("{queued} intents queued, not applied"));
        }
        let live: Vec<_> = w.books.live().collect();
        let capacity = meta.spec.capacity as usize;
        let held = |t| !matches!(meta.spec.policy.disruption_at(t), Openness::Open { .. });
        let scale_in_held = live.len() > capacity
            && meta.spec.policy.windows.len() + meta.spec.policy.freezes.len() > 0
            && held(now)
            && held(now + Duration::seconds(30));
        if live.len() != capacity && !scale_in_held {
            return not(format!(
                "{} live records for capacity {}",
                live.len(),
                meta.spec.capacity
            ));
        }
        // An aborted rollout leaves the fleet as it was, mixed if need be.
        let mixed_ok = meta
            .rollout
            .as_ref()
            .is_some_and(|r| r.status == RolloutStatus::Aborted);
        if let Some(i) = live.iter().find(|i| {
            !i.is_healthy() || i.disposal.is_some() || (i.image != meta.spec.image && !mixed_ok)
        }) {
            return not(format!(
                "{} on {} {:?} {:?} leaving={:?} (fleet image {})",
                i.id,
                i.image,
                i.state,
                i.health,
                i.disposal.as_ref().map(|d| &d.stage),
                meta.spec.image
            ));
        }
        if let Some(arn) = meta.lb_missing.iter().next() {
            return not(format!(
                "the fleet records target group {} missing",
                phoenix_core::model::group_name(arn)
            ));
        }
        let alive: BTreeSet<&InstanceId> = w.ec2.alive().map(|vm| &vm.id).collect();
        let recorded: BTreeSet<&InstanceId> = live.iter().map(|i| &i.id).collect();
        if alive != recorded {
            return not(format!(
                "EC2 has {} alive, the books {} live ({} unrecorded)",
                alive.len(),
                recorded.len(),
                alive.difference(&recorded).count()
            ));
        }
        if let Some(vm) = w.ec2.alive().find(|vm| !w.ec2.world_healthy(vm, now)) {
            return not(format!("{} is not healthy in EC2", vm.id));
        }
        // Zones: the planner keeps them within one instance of each other, and moves one
        // instance at a time into a zone that has too few (a rebalance is voluntary disruption:
        // it waits for the windows, as a scale-in does, and for the hourly budget). In the calm
        // no launch is refused, and a refusal is remembered for `UNAVAILABLE_FOR` only, so a
        // fleet whose zones differ by more than one has not converged.
        // Held now and still when `final_checks` reconciles, 30 s on.
        let spent = |t: Timestamp| {
            meta.spec
                .policy
                .max_replacements_per_hour
                .is_some_and(|limit| {
                    let recent = meta
                        .disruptions
                        .iter()
                        .filter(|d| **d + Duration::hours(1) > t)
                        .count();
                    recent >= limit as usize
                })
        };
        let later = now + Duration::seconds(30);
        let scheduled = meta.spec.policy.windows.len() + meta.spec.policy.freezes.len() > 0;
        // Nothing to launch from: the fleet's image is quarantined (a gate failed with automatic
        // rollback off, or the rollout was aborted on it) and no active rollout has an image to
        // go back to. The operator's to settle; no instance is launched meanwhile.
        let rebalance_held = (spent(now) && spent(later))
            || (scheduled && held(now) && held(later))
            || meta.launchable_image().is_none();
        if let Some(zones) = Checker::unbalanced(&w.ec2).filter(|_| !rebalance_held) {
            return not(format!("zones differ by more than one: {zones}"));
        }
        // The operator lifted every protection when the calm began: the books follow the tag on
        // the next pass.
        if let Some(i) = live.iter().find(|i| {
            w.ec2
                .vms
                .get(&i.id)
                .is_some_and(|vm| vm.protected() != i.protected)
        }) {
            return not(format!("{} still recorded protected", i.id));
        }
        // An instance that reaches its lifetime by the final reconcile (30 s on) is replaced:
        // the fleet is not at rest until none does (unless what holds a rebalance holds it too).
        if let Some(lifetime) = meta.spec.max_instance_lifetime.filter(|_| !rebalance_held) {
            let soon = now + Duration::seconds(30);
            if let Some(i) = live
                .iter()
                .find(|i| !i.protected && retires_at(i, lifetime) <= soon)
            {
                return not(format!(
                    "{} reaches its max_instance_lifetime {lifetime}",
                    i.id
                ));
            }
        }
        if let Some(why) = Traffic::check_serving(&w.books, &w.ec2, &w.elb) {
            return Some(("serving", why));
        }
        Checker::check_drift(&w.books, &w.ec2).map(|why| ("drift", why))
    }

    /// `None` once the outbox is empty (every notification committed was published, and its
    /// item removed), else what it still holds.
    pub(super) fn unsent(&self) -> Option<String> {
        let w = self.world.lock();
        let outbox: Vec<String> = w
            .books
            .outbox()
            .map(|m| format!("v{} ({}s old)", m.version, (w.now - m.at).num_seconds()))
            .collect();
        (!outbox.is_empty()).then(|| {
            format!(
                "the outbox still holds the notifications of {}",
                outbox.join(", ")
            )
        })
    }

    /// Converged: every queued intent applied, every notification committed in the outbox
    /// published at least once, and one more reconcile must find nothing to do.
    pub(super) fn final_checks(&mut self) {
        let mut w = self.world.lock();
        let unapplied = w.checker.unapplied();
        if unapplied > 0 {
            w.violate(
                "liveness",
                format!("{unapplied} queued intents never applied"),
            );
        }
        let unpublished = w.checker.unpublished();
        if !unpublished.is_empty() {
            w.violate(
                "notification",
                format!(
                    "{} notifications committed in the outbox never reached the bus: {}",
                    unpublished.len(),
                    unpublished.join(", ")
                ),
            );
        }
        let fleet = w.books.load_fleet();
        let now = w.now + Duration::seconds(30);
        let mut observed = w.ec2.observed(now);
        w.elb.observe(&fleet.spec, &mut observed, &w.ec2, now);
        let step = self
            .planner
            .reconcile(Step::unchanged(&fleet), &observed, now);
        if step.is_noop() && step.commands.is_empty() {
            let census = w.last_census;
            // A scale-in the windows hold (`converged`).
            let beyond = fleet.live.saturating_sub(fleet.spec.capacity);
            let held = if beyond > 0 {
                w.stats.scale_ins_held += 1;
                format!("; {beyond} beyond capacity wait for the window to scale in")
            } else {
                String::new()
            };
            w.line = format!(
                "[{}] {} converged: {} healthy, min {}, {} counted for surge, max {}{held}",
                w.steps,
                w.clock(),
                census.healthy,
                census.min_healthy,
                census.surge_counted,
                census.max_total
            );
        } else {
            w.violate(
                "liveness",
                format!(
                    "converged but not at rest: {} changes, {} commands: {:?}",
                    step.changes.len(),
                    step.commands.len(),
                    step.changes
                ),
            );
        }
        drop(w);
        self.flush_line();
    }
}
