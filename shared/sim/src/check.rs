//! The invariants, checked after every simulation step (and at the EC2 calls that matter), with
//! the bookkeeping they need. Each check is exact about what it allows and why; the comments are
//! the specification.
//!
//! Words used below:
//! - *the books*: what the table holds (the fleet record and the instance records), decoded;
//! - *alive*: an instance of the fleet that EC2 has and that is not shutting down or terminated
//!   (stopped ones are alive); one an operator took out of the fleet (untagged) is no longer the
//!   fleet's and does not count;
//! - *world-healthy*: running, past its boot and status-check delays, and nothing wrong with it
//!   (no fault: not impaired, application not failing, not a bad image, zone up, not stopped);
//! - *believed failed*: its live record's health is `Unhealthy`;
//! - *closed*: the fleet's windows and freezes do not allow voluntary disruption at an instant
//!   (`RolloutPolicy::disruption_at` says `Closed`);
//! - *the definition*: the fingerprint of what the fleet launches besides its image (instance
//!   type, launch template at the version it resolved to, user data, tags, …:
//!   `Fleet::definition`), which every instance carries from its launch (`phoenix:definition`).

use crate::books::Books;
use crate::custody::Custody;
use crate::ec2::{Ec2, Vm, INSTANCE_TYPE, ZONES};
use chrono::Duration;
use phoenix_core::events::{Change, Notification};
use phoenix_core::model::{
    retires_at, Health, Instance, Openness, RolloutStatus, Target, Timestamp,
};
use phoenix_core::{ImageId, InstanceId};
use phoenix_protocol::store::Standing;
use std::collections::{BTreeMap, BTreeSet};

/// How long the fleet may be below `min_healthy` while the books show nothing wrong before that
/// counts as a silent failure. The health checker reports a broken instance within a minute and
/// again every one to two minutes, and a scheduled reconcile runs every minute; fifteen minutes is
/// many lost reports and failed invocations in a row.
pub const SILENCE: Duration = Duration::minutes(15);

/// How long a zone must have been free of shortages (every type the fleet launches refused
/// there, or the zone down) before the balance check judges the fleet: EC2's refusals are
/// remembered for `UNAVAILABLE_FOR` (3 min), and a zone that failed comes back only once EC2
/// launches there again.
pub const BALANCE_QUIET: Duration = Duration::minutes(10);

/// How long a settled fleet may keep zones more than one apart without bringing them closer: a
/// scheduled reconcile decides the next move of a rebalance within a minute, and the move (a
/// launch, its boot, hooks and health, then a scale-in with its drain) takes a few more — unless
/// events are lost and invocations crash: as long as `SILENCE` allows for a failure to be seen.
pub const BALANCE_GRACE: Duration = SILENCE;

/// What replacing one instance that reached its lifetime takes at most when nothing holds it
/// back: a pass to see it (every minute, with lost events and crashed invocations in between),
/// its replacement's launch, boot and status checks (up to 3 min), the health report, the
/// termination; instances that age together go a wave of the surge at a time, so the bound adds
/// `LIFETIME_PER_INSTANCE` for each instance of the fleet.
pub const LIFETIME_SLACK: Duration = Duration::minutes(20);
pub const LIFETIME_PER_INSTANCE: Duration = Duration::minutes(5);

/// A report set the instance back: phoenix believes it failed after it was reported, or it
/// recovered from that failure (it passed again while the breaker held repairs back) and is being
/// proven again, as a new instance is, before it counts healthy.
fn set_back_by_report(record: Option<&Instance>, vm: &Vm) -> bool {
    vm.reported && record.is_some_and(|i| i.is_failed() || i.health == Health::Unknown)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Unit {
    /// The capacity (hence `min_healthy`) went up by one: one more instance to launch and boot.
    Scale,
    /// An instance the world took: it failed, was reported failed, or vanished, and then left.
    Lost(InstanceId),
}

/// One launch decision: how many instances it asked for, the version that committed it, and the
/// version that last committed carrying it out (the decision's, or a retry's).
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub count: u32,
    pub version: u64,
    pub carried_out_at: u64,
}

/// A decrease of `max_total` and the version that committed it.
#[derive(Debug, Clone, Copy)]
struct Slack {
    version: u64,
    amount: u32,
}

#[derive(Debug, Default)]
pub struct Checker {
    lost: Vec<Unit>,
    prev_min_healthy: u32,
    prev_max_total: u32,
    slack: Vec<Slack>,
    /// When each image now quarantined was quarantined (the committing version).
    quarantined_at: BTreeMap<ImageId, u64>,
    /// Every launch decision ever committed.
    pub decided: BTreeMap<String, Decision>,
    silent_since: Option<Timestamp>,
    /// Intents queued (`Books::enqueue`) and not applied yet, by `QueuedIntent::key`.
    queued: BTreeSet<String>,
    /// Queued intents a commit applied.
    applied: BTreeSet<String>,
    /// Notifications committed in an outbox, by id, with their detail-type.
    notes_committed: BTreeMap<String, String>,
    /// Notifications that reached the bus, by id.
    notes_published: BTreeSet<String>,
    /// The fleet's definition from each version that changed it on.
    definitions: BTreeMap<u64, String>,
    /// Instances an operator protected at some time: they do not age while protected, so the
    /// lifetime bound is not theirs.
    ever_protected: BTreeSet<InstanceId>,
    /// When each zone was last short (`BALANCE_QUIET`).
    short_at: [Option<Timestamp>; ZONES.len()],
    /// Since when the fleet has been settled with zones more than one apart and no closer, and
    /// how far apart (largest minus smallest) they were then.
    unbalanced_since: Option<(Timestamp, u32)>,
    /// Time during which something held an aged instance's replacement back (see the lifetime
    /// check), as (instant, total held up to it) after each step.
    held: Vec<(Timestamp, Duration)>,
    /// Every launch EC2 made: image, definition tag, when.
    launches: Vec<(ImageId, Option<String>, Timestamp)>,
}

/// What one look at the world found (for the trace and the end-of-run report).
#[derive(Debug, Clone, Copy, Default)]
pub struct Census {
    pub healthy: u32,
    pub excused: u32,
    pub min_healthy: u32,
    pub surge_counted: u32,
    pub max_total: u32,
}

impl Checker {
    pub fn new(books: &Books) -> Self {
        let budget = books.meta().budget();
        Checker {
            // The fleet starts empty: bringing it up is the first "capacity increase".
            lost: vec![Unit::Scale; budget.min_healthy as usize],
            prev_min_healthy: budget.min_healthy,
            prev_max_total: budget.max_total,
            definitions: BTreeMap::from([(
                books.version(),
                books.meta().definition().fingerprint(),
            )]),
            ..Checker::default()
        }
    }

    /// After every successful commit, with the changes it recorded.
    pub fn on_commit(&mut self, books: &Books, changes: &[Change]) {
        let version = books.version();
        for c in changes {
            match c {
                Change::LaunchDecided { token, count, .. } => {
                    self.decided.insert(
                        token.clone(),
                        Decision {
                            count: *count,
                            version,
                            carried_out_at: version,
                        },
                    );
                }
                Change::LaunchRetried { token } => {
                    if let Some(d) = self.decided.get_mut(token) {
                        d.carried_out_at = version;
                    }
                }
                _ => {}
            }
        }
        let budget = books.meta().budget();
        if budget.min_healthy > self.prev_min_healthy {
            let more = budget.min_healthy - self.prev_min_healthy;
            self.lost.extend((0..more).map(|_| Unit::Scale));
        }
        self.prev_min_healthy = budget.min_healthy;
        if budget.max_total < self.prev_max_total {
            self.slack.push(Slack {
                version,
                amount: self.prev_max_total - budget.max_total,
            });
        }
        self.prev_max_total = budget.max_total;
        let definition = books.meta().definition().fingerprint();
        if self.definitions.values().next_back() != Some(&definition) {
            self.definitions.insert(version, definition);
        }
        let q = &books.meta().quarantined;
        self.quarantined_at.retain(|image, _| q.contains_key(image));
        for image in q.keys() {
            self.quarantined_at.entry(image.clone()).or_insert(version);
        }
    }

    /// The operator set an instance's `phoenix:protected` tag.
    pub fn on_protected(&mut self, id: &InstanceId) {
        self.ever_protected.insert(id.clone());
    }

    /// RunInstances created instances of this image and definition.
    pub fn on_launched(&mut self, image: &ImageId, definition: Option<&str>, at: Timestamp) {
        self.launches
            .push((image.clone(), definition.map(str::to_string), at));
    }

    /// Held time between `from` and the last step (`held`).
    fn held_since(&self, from: Timestamp) -> Duration {
        let Some((_, total)) = self.held.last() else {
            return Duration::zero();
        };
        let k = self.held.partition_point(|(at, _)| *at <= from);
        let before = k
            .checked_sub(1)
            .map_or(Duration::zero(), |k| self.held[k].1);
        *total - before
    }

    /// An event's intent went to the fleet's inbox. It is new there: an event is queued at most
    /// once (its record is completed by the same write, and a redelivery meets the record).
    pub fn on_enqueue(&mut self, key: &str) -> Option<String> {
        if self.applied.contains(key) || !self.queued.insert(key.to_string()) {
            return Some(format!("intent {key} queued a second time"));
        }
        None
    }

    /// A commit applied a queued intent (and deleted its inbox item): it was queued, and not
    /// applied before.
    pub fn on_dequeue(&mut self, key: &str) -> Option<String> {
        if !self.queued.remove(key) {
            return Some(if self.applied.contains(key) {
                format!("queued intent {key} applied a second time")
            } else {
                format!("intent {key} applied from the inbox but never queued")
            });
        }
        self.applied.insert(key.to_string());
        None
    }

    /// The key of event `id`'s queued intent (`QueuedIntent::key`: event time, then its id).
    pub fn queued_key_of(&self, id: &str) -> Option<String> {
        let suffix = format!("#{id}");
        self.queued
            .iter()
            .chain(&self.applied)
            .find(|k| k.ends_with(&suffix))
            .cloned()
    }

    /// Queued intents not applied yet.
    pub fn unapplied(&self) -> usize {
        self.queued.len()
    }

    /// A commit wrote these notifications to the fleet's outbox.
    pub fn on_mail(&mut self, notifications: &[Notification]) {
        for n in notifications {
            self.notes_committed
                .insert(n.id.clone(), n.detail_type.clone());
        }
    }

    /// A PutEvents call succeeded with notifications of these ids. Returns how many of them
    /// had reached the bus before (at least once: repeats are allowed).
    pub fn on_published<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) -> u64 {
        ids.into_iter()
            .filter(|id| !self.notes_published.insert(id.to_string()))
            .count() as u64
    }

    /// Notifications committed in an outbox that never reached the bus: `detail-type id` each.
    pub fn unpublished(&self) -> Vec<String> {
        self.notes_committed
            .iter()
            .filter(|(id, _)| !self.notes_published.contains(*id))
            .map(|(id, dt)| format!("{dt} {id}"))
            .collect()
    }

    /// An alive instance leaves (terminated by phoenix or by the world). `excused`: it was broken
    /// (a fault, or believed failed after a report) or the world took it; either way the slot it
    /// held was lost to the world, not given up by phoenix.
    pub fn on_gone(&mut self, id: &InstanceId, excused: bool) {
        if excused {
            self.lost.push(Unit::Lost(id.clone()));
        }
    }

    /// Whether an alive instance is, right now, excused from counting as healthy: something
    /// outside phoenix is wrong with it, or phoenix believes it failed because it was reported
    /// (`set_back_by_report`).
    pub fn excused(ec2: &Ec2, books: &Books, id: &InstanceId) -> bool {
        let Some(vm) = ec2.vms.get(id) else {
            return false;
        };
        let record = books.instance(id).filter(|i| i.is_live());
        ec2.fault(vm) || set_back_by_report(record, vm)
    }

    /// The checks on the state of the world and the books, after every step.
    pub fn check_world(
        &mut self,
        books: &Books,
        ec2: &Ec2,
        custody: &Custody,
        now: Timestamp,
    ) -> (Census, Vec<(&'static str, String)>) {
        let mut out = Vec::new();
        let meta = books.meta();
        let budget = meta.budget();

        // ---- Availability --------------------------------------------------------------------
        // healthy: alive, world-healthy, and counted healthy by phoenix (its live record says
        //   Healthy). An instance phoenix has not promoted yet does not count: phoenix does not
        //   count it either, and may remove it first (a scale-in takes unready instances first).
        // excused: alive and broken by the world, or believed failed after a report (phoenix
        //   replaces what it is told failed; a spurious report costs a slot, by design) — or
        //   recovered from that failure and not counted healthy again yet (`set_back_by_report`).
        // lost: units given by the world since the fleet was last whole: an instance that left
        //   while broken, or that the world terminated; and each increase of min_healthy (a
        //   scale-out, the first bring-up), which takes launches and boots to fill.
        // Rule: healthy + excused + lost >= min_healthy.
        // Phoenix only ever terminates an instance it counts healthy when the healthy instances
        // it keeps are at least min_healthy; each of those is, in the world, healthy, excused or
        // a lost unit (its fault or disappearance is one): phoenix promotes an instance only once
        // EC2's checks pass or a passed report arrives, so one it counts healthy that is not
        // healthy in the world has a fault. So the rule holds for a correct planner whatever the
        // faults, and fails when phoenix gives up a healthy instance too early (the
        // replace-in-place bug: terminate old before new is healthy).
        // The fleet is *whole* when its healthy instances that are not leaving reach
        // min_healthy: then the lost units are forgiven, except those of instances the books
        // still count as live (phoenix has not noticed they are gone, and may still give up a
        // healthy instance on their account).
        let mut healthy = 0u32;
        let mut excused = 0u32;
        let mut whole = 0u32;
        for vm in ec2.alive() {
            let record = books.instance(&vm.id).filter(|i| i.is_live());
            let counted = record.is_some_and(|i| i.health == Health::Healthy);
            if ec2.world_healthy(vm, now) && counted {
                healthy += 1;
                if record.is_some_and(|i| i.disposal.is_none()) {
                    whole += 1;
                }
            } else if ec2.fault(vm) || set_back_by_report(record, vm) {
                excused += 1;
            }
        }
        let lost = self.lost.len() as u32;
        if healthy + excused + lost < budget.min_healthy {
            out.push((
                "availability",
                format!(
                    "{healthy} healthy + {excused} broken by faults + {lost} lost to faults or \
                     scaling < min_healthy {} (capacity {})",
                    budget.min_healthy, meta.spec.capacity
                ),
            ));
        }
        if whole >= budget.min_healthy {
            self.lost
                .retain(|u| matches!(u, Unit::Lost(id) if books.is_live(id)));
        }

        // ---- Reported, never silent ------------------------------------------------------------
        // Below min_healthy while the books look perfect (no breaker, no launch in flight, no
        // active rollout, hourly budget not exhausted, exactly `capacity` live records, all
        // healthy and staying) is allowed only while phoenix cannot know yet (SILENCE).
        let quiet = meta.breaker.is_none()
            && meta.pending.is_empty()
            && !meta.budget_exhausted
            && meta.rollout.as_ref().is_none_or(|r| !r.status.is_active())
            && books.live().count() == meta.spec.capacity as usize
            && books.live().all(|i| i.is_healthy() && i.disposal.is_none());
        if healthy < budget.min_healthy && quiet {
            let since = *self.silent_since.get_or_insert(now);
            if now - since > SILENCE {
                out.push((
                    "silent",
                    format!(
                        "{healthy} healthy < min_healthy {} for {} min while the fleet's records show nothing wrong",
                        budget.min_healthy,
                        (now - since).num_minutes()
                    ),
                ));
                self.silent_since = Some(now);
            }
        } else {
            self.silent_since = None;
        }

        // ---- Surge ---------------------------------------------------------------------------
        // Counted: alive instances pending or running in EC2 that phoenix owns and keeps:
        // - a live record, unless its termination is decided outright (after_launch: none): the
        //   planner counts those as gone already; the deciding invocation terminates them before
        //   it launches anything, or, if it died, the next reconcile after the lease does — or,
        //   behind target groups or a terminating hook, they are out of service on their way out
        //   (deregistered, draining, held by the hook) while launches go on;
        // - no record, but the token of a pending launch: up to that launch's count. Beyond the
        //   count they are extras of a launch made twice (an endpoint that ignores the
        //   ClientToken), which the reconcile that adopts the launch terminates;
        // - not counted: instances of no decision in the books (a launch recorded as failed that
        //   EC2 did make, extras, instances buried while too new to be listed): phoenix learns of
        //   them only by seeing them, and terminates them then (checked as leaks).
        // Launch-first repairs need no allowance: the failed instance and its replacement are
        // both counted, and the planner decides the launch only within max_total.
        // Rule: counted <= max_total + slack, where slack is each decrease of max_total (a
        // scale-in) not yet absorbed: launches decided under the larger budget may still be made
        // (retried after a crash, or by an invocation still executing), and the instances they
        // bring can only be scaled in once seen. A decrease is absorbed once no launch decided
        // before it is pending and the count fits the new max_total.
        let pending: BTreeMap<&str, u32> = meta
            .pending
            .iter()
            .map(|p| (p.token.as_str(), p.count))
            .collect();
        let mut used: BTreeMap<&str, u32> = BTreeMap::new();
        let mut counted = 0u32;
        for vm in ec2.alive().filter(|vm| vm.counts_for_surge()) {
            match books.instance(&vm.id).filter(|i| i.is_live()) {
                Some(rec) => {
                    if rec
                        .disposal
                        .as_ref()
                        .is_none_or(|d| d.after_launch.is_some())
                    {
                        counted += 1;
                    }
                }
                None => {
                    let token = vm.token().unwrap_or_default();
                    if let Some(n) = pending.get(token) {
                        let u = used.entry(token).or_default();
                        if *u < *n {
                            *u += 1;
                            counted += 1;
                        }
                    }
                }
            }
        }
        let slack: u32 = self.slack.iter().map(|s| s.amount).sum();
        if counted > budget.max_total + slack {
            out.push((
                "surge",
                format!(
                    "{counted} instances pending or running > max_total {} (capacity {}{})",
                    budget.max_total,
                    meta.spec.capacity,
                    if slack > 0 {
                        format!(", +{slack} while a scale-in settles")
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        if counted <= budget.max_total {
            let decided = &self.decided;
            self.slack.retain(|s| {
                meta.pending
                    .iter()
                    .any(|p| decided.get(&p.token).is_none_or(|d| d.version < s.version))
            });
        }

        // ---- Queued intents --------------------------------------------------------------------
        // An event whose intent is in the inbox has been accepted: its record is completed (a
        // redelivery does nothing) and the intent stays in the inbox until the one commit that
        // applies it deletes it. So the inbox holds exactly the intents queued and not applied,
        // each of an event recorded as completed. (Liveness: the fleet has not converged while its
        // inbox holds any.)
        let inbox: BTreeSet<String> = books.inbox().map(|q| q.key()).collect();
        if inbox != self.queued {
            out.push((
                "inbox",
                format!(
                    "the inbox holds [{}], but the intents queued and not applied are [{}]",
                    inbox.iter().cloned().collect::<Vec<_>>().join(" "),
                    self.queued.iter().cloned().collect::<Vec<_>>().join(" ")
                ),
            ));
        }
        for q in books.inbox() {
            let id = q.cause.event_id.as_deref().unwrap_or_default();
            if books.standing(id, now) != Some(Standing::Completed) {
                out.push((
                    "inbox",
                    format!(
                        "intent {} is queued but its event's record is not completed",
                        q.key()
                    ),
                ));
            }
        }

        // ---- One decision, at most its count kept -------------------------------------------
        // An adoption is recorded under a token of its own, which keeps exactly the instances it
        // adopted (they were not launched: no decision asked for them).
        let mut per_token: BTreeMap<&str, u32> = BTreeMap::new();
        for i in books.live() {
            match custody.adopted_under(&i.token) {
                Some(adopted) if !adopted.contains(&i.id) => out.push((
                    "double-launch",
                    format!(
                        "{} is kept for adoption {}, which did not adopt it",
                        i.id, i.token
                    ),
                )),
                Some(_) => {}
                None => *per_token.entry(i.token.as_str()).or_default() += 1,
            }
        }
        for (token, n) in per_token {
            let asked = self.decided.get(token).map_or(0, |d| d.count);
            if n > asked {
                out.push((
                    "double-launch",
                    format!("{n} live instances kept for launch {token}, which asked for {asked}"),
                ));
            }
        }

        self.check_placement(books, ec2, now, excused + lost > 0, &mut out);

        (
            Census {
                healthy,
                excused: excused + lost,
                min_healthy: budget.min_healthy,
                surge_counted: counted,
                max_total: budget.max_total,
            },
            out,
        )
    }

    /// Balance and lifetime, after every step. `hurt`: instances are broken by faults, or lost to
    /// them and not yet made up.
    fn check_placement(
        &mut self,
        books: &Books,
        ec2: &Ec2,
        now: Timestamp,
        hurt: bool,
        out: &mut Vec<(&'static str, String)>,
    ) {
        let meta = books.meta();
        let policy = &meta.spec.policy;
        // A zone is short while every type the fleet launches is refused there, or it is down.
        let types = meta.spec.launch_types();
        let mut short_now = false;
        for (z, at) in self.short_at.iter_mut().enumerate() {
            let short = ec2.zones_down.contains_key(&z)
                || types
                    .iter()
                    .all(|t| ec2.short(t.as_deref().unwrap_or(INSTANCE_TYPE), z, now));
            if short {
                *at = Some(now);
                short_now = true;
            }
        }
        let recently_short = self
            .short_at
            .iter()
            .flatten()
            .any(|t| now - *t < BALANCE_QUIET);
        let closed = !matches!(policy.disruption_at(now), Openness::Open { .. });
        let hourly_spent = policy.max_replacements_per_hour.is_some_and(|limit| {
            let recent = meta
                .disruptions
                .iter()
                .filter(|t| **t + Duration::hours(1) > now)
                .count();
            recent >= limit as usize
        });
        let rollout = meta.rollout.as_ref().filter(|r| r.status.is_active());
        let launchable = !meta.quarantined.contains_key(&meta.spec.image);

        // ---- Balance -----------------------------------------------------------------------
        // Settled: no rollout under way, no breaker, every target group there, the fleet's own
        // image launchable, nothing broken by faults or lost to them, no instance protected (a
        // scale-in never takes a protected instance, so protection may keep a zone large); and
        // voluntary disruption allowed (the windows open, the hourly budget not spent): a
        // rebalance is voluntary. Launches and scale-ins may come and go: they keep the zones
        // within one (spread, and taken from the largest), and a rebalance is a launch and a
        // scale-in — so the clock runs through them, and a rebalance that never ends (launching
        // into the wrong zone, say) is caught as surely as one never begun.
        // Rule: a fleet settled, no zone short for `BALANCE_QUIET`, whose zones' alive counts
        // differ by more than one, brings them closer (the largest minus the smallest goes down)
        // within every `BALANCE_GRACE`: a rebalance moves one instance at a time.
        let settled = rollout.is_none()
            && meta.breaker.is_none()
            && meta.lb_missing.is_empty()
            && launchable
            && !closed
            && !hourly_spent
            && !hurt
            && books.live().all(|i| !i.protected && !i.is_failed())
            && ec2.alive().all(|vm| !vm.protected());
        match Self::unbalanced(ec2).filter(|_| settled && !recently_short) {
            Some(zones) => {
                let spread = Self::zone_spread(ec2);
                let (since, was) = *self.unbalanced_since.get_or_insert((now, spread));
                if spread < was {
                    self.unbalanced_since = Some((now, spread));
                } else if now - since > BALANCE_GRACE {
                    out.push((
                        "balance",
                        format!(
                            "settled for {} min with no zone short, zones still differ by more \
                             than one and came no closer: {zones}",
                            (now - since).num_minutes()
                        ),
                    ));
                    self.unbalanced_since = Some((now, spread));
                }
            }
            None => self.unbalanced_since = None,
        }

        // ---- Lifetime ----------------------------------------------------------------------
        // Held: what stops the planner from replacing an instance that reached its lifetime —
        // the windows closed, the hourly budget spent, the breaker, the fleet's image
        // quarantined, a rollout paused or stalled (it replaces old and aged alike, at its
        // pace), instances broken or lost to faults (an aged one goes only as a healthy
        // replacement covers it), a zone short.
        let held = closed
            || hourly_spent
            || meta.breaker.is_some()
            || !launchable
            || rollout.is_some_and(|r| r.status == RolloutStatus::Paused || r.stalled.is_some())
            || hurt
            || short_now;
        let total =
            self.held.last().map_or(
                Duration::zero(),
                |(at, t)| {
                    if held {
                        *t + (now - *at)
                    } else {
                        *t
                    }
                },
            );
        if self.held.last().is_none_or(|(at, _)| *at < now) {
            self.held.push((now, total));
        }
        // Rule: an instance of a fleet with a `max_instance_lifetime` L, never protected, is
        // alive at most L (from its launch; it retires within L's last tenth, `retires_at`) plus
        // `LIFETIME_SLACK`, plus `LIFETIME_PER_INSTANCE` per instance of the fleet's capacity,
        // plus the time held since it reached its retirement.
        let Some(lifetime) = meta.spec.max_instance_lifetime else {
            return;
        };
        let per_instance = LIFETIME_PER_INSTANCE * meta.spec.capacity as i32;
        for vm in ec2.alive() {
            if self.ever_protected.contains(&vm.id) {
                continue;
            }
            let Some(rec) = books.instance(&vm.id) else {
                continue;
            };
            let retires = retires_at(rec, lifetime);
            if now <= retires {
                continue;
            }
            let bound =
                lifetime.duration() + LIFETIME_SLACK + per_instance + self.held_since(retires);
            let age = now - vm.launched_at;
            if age > bound {
                out.push((
                    "lifetime",
                    format!(
                        "{} alive for {} min, beyond max_instance_lifetime {lifetime} + {} min (slack, \
                         and {} min held)",
                        vm.id,
                        age.num_minutes(),
                        (bound - lifetime.duration()).num_minutes(),
                        self.held_since(retires).num_minutes()
                    ),
                ));
                self.ever_protected.insert(vm.id.clone());
            }
        }
    }

    /// After every commit: a rollout rolls back (or quarantines its image) only for what its new
    /// instances did — failed health checks, or not healthy by the progress deadline while the
    /// image may be at fault. A rollout none of whose instances EC2 ever launched (every wave
    /// refused for capacity, say) cannot blame its image: it stalls instead. An operator's undo
    /// is not judged.
    pub fn check_rollback(&self, books: &Books, changes: &[Change]) -> Option<String> {
        let meta = books.meta();
        let r = meta.rollout.as_ref()?;
        let why = changes.iter().find_map(|c| match c {
            Change::RolloutRollingBack { rollout, reason }
                if *rollout == r.id && reason != "undone by operator" =>
            {
                Some(reason.clone())
            }
            Change::ImageQuarantined { image, reason } if *image == r.to => Some(reason.clone()),
            _ => None,
        })?;
        let definition = r.definition.as_ref().map(|d| d.to.as_str());
        let launched = self.launches.iter().any(|(image, def, at)| {
            *image == r.to
                && *at + Duration::seconds(1) >= r.started_at
                && definition.is_none_or(|d| def.as_deref() == Some(d))
        });
        (!launched).then(|| {
            format!(
                "rollout {} to {} rolls back ({why}), but EC2 never launched an instance of it",
                r.id, r.to
            )
        })
    }

    /// After every commit: no voluntary termination of a protected instance. The planner reads
    /// the `phoenix:protected` tag on every pass (`Instance::protected`, as committed with the
    /// decision); it may still terminate a protected instance that failed or that AWS retires,
    /// and carry out a termination decided before the tag was set (`… issued again`).
    pub fn check_protected(books: &Books, changes: &[Change]) -> Option<String> {
        changes.iter().find_map(|c| {
            let Change::TerminationDecided { instance, reason } = c else {
                return None;
            };
            let i = books.instance(instance)?;
            let allowed = !i.protected
                || i.is_failed()
                || i.retirement.is_some()
                || reason.ends_with("issued again)");
            (!allowed).then(|| format!("{instance} is protected, and terminated: {reason}"))
        })
    }

    /// Before RunInstances creates instances: no launch from an image quarantined for the fleet,
    /// unless the decision (or its retry) was committed before the quarantine — an invocation
    /// already executing a committed decision carries it out; everything decided from the
    /// quarantine on must respect it.
    pub fn check_launch(&self, image: &ImageId, decided_at_version: u64) -> Option<String> {
        let q = self.quarantined_at.get(image)?;
        (decided_at_version >= *q).then(|| {
            format!(
                "launched from {image}, quarantined at version {q}, by a step committed at version {decided_at_version}"
            )
        })
    }

    /// Before RunInstances creates instances: they carry the definition of the fleet as committed
    /// by the step the executor carries out — the one that decided the launch, or one that
    /// retried it (an invocation still carrying out the decision may meet a retry committed
    /// meanwhile): the fleet's definition at some version from `Decision::version` to
    /// `Decision::carried_out_at`. An instance launched from any other definition (a spec not
    /// committed, or one no step of this decision had) is made of what no decision asked for.
    pub fn check_launch_definition(
        &self,
        token: &str,
        decision: &Decision,
        tag: Option<&str>,
    ) -> Option<String> {
        let (from, at_decision) = self.definitions.range(..=decision.version).next_back()?;
        let mut allowed = vec![at_decision.as_str()];
        if decision.carried_out_at > decision.version {
            allowed.extend(
                self.definitions
                    .range(decision.version + 1..=decision.carried_out_at)
                    .map(|(_, d)| d.as_str()),
            );
        }
        (!tag.is_some_and(|t| allowed.contains(&t))).then(|| {
            format!(
                "launch {token} (decided at version {}, carried out at {}) carries definition \
                 {}, but the fleet's definition then was {} (since version {from})",
                decision.version,
                decision.carried_out_at,
                tag.unwrap_or("none"),
                allowed.join(" or ")
            )
        })
    }

    /// After every commit, with the changes it recorded and the instant it was planned at (its
    /// history entry's `at`: the `now` the planner planned with and the commit carries).
    ///
    /// No voluntary disruption outside a window. Voluntary: what phoenix chooses to take away,
    /// not what the world took — a rollout's or drift's replacement (`replaced by …`), a
    /// scale-in (`scale in to …`), a planned retirement (`retire: …` of an instance whose
    /// retirement is not urgent then) — and the start of a rollout wave (`WaveStarted`). A commit
    /// recording one while the fleet (as committed) is closed at that instant is a violation,
    /// except a rollout's replacements and waves while that rollout (as committed) is rolling back
    /// or an operator let it go on regardless (`ignore_windows`, `rollout resume --now`), and a
    /// scale-in while that rollout goes on (rolling back, or let go on: it ends only with the fleet
    /// at capacity).
    /// Never held, so never judged: repairs of failed instances, urgent retirements (the instance
    /// goes soon whatever phoenix does), a rollback's replacements (`rolled back to …`), extras of
    /// a launch made twice, instances owned by no decision, and a termination (or its
    /// deregistration) decided earlier and issued again (`… (issued again)`, `… (deregistration
    /// issued again)`: the decision was judged when it was made; carrying it out is not a new one).
    /// A target group the fleet names that does not exist (as committed: `lb_missing`) holds
    /// voluntary disruption as a closed window does: phoenix cannot see what serves.
    pub fn check_windows(books: &Books, changes: &[Change], at: Timestamp) -> Option<String> {
        let meta = books.meta();
        let policy = &meta.spec.policy;
        let scheduled = !policy.windows.is_empty() || !policy.freezes.is_empty();
        let missing = meta.lb_missing.iter().next();
        if !scheduled && missing.is_none() {
            return None;
        }
        let rollout = meta.rollout.as_ref();
        let overridden =
            rollout.is_some_and(|r| r.ignore_windows || r.status == RolloutStatus::RollingBack);
        // A rollout that goes on (rolling back, or in progress and let go on) takes its scale-in
        // with it: it ends only with the fleet at capacity.
        // (As committed: the step that scales in may also pause the rollout at a checkpoint.)
        let goes_on = rollout.is_some_and(|r| {
            r.status == RolloutStatus::RollingBack || (r.status.is_active() && r.ignore_windows)
        });
        let mut voluntary = Vec::new();
        for c in changes {
            match c {
                Change::TerminationDecided { instance, reason } => {
                    // `(issued again)`, `(deregistration issued again)`.
                    if reason.ends_with("issued again)") {
                        continue;
                    }
                    let planned_retirement = reason.starts_with("retire: ")
                        && books
                            .instance(instance)
                            .and_then(|i| i.retirement.as_ref())
                            .is_none_or(|r| !r.is_urgent(at));
                    if (reason.starts_with("replaced by ") && !overridden)
                        || (reason.starts_with("scale in to ") && !goes_on)
                        || planned_retirement
                    {
                        voluntary.push(format!("{instance} ({reason})"));
                    }
                }
                Change::WaveStarted {
                    rollout: id, wave, ..
                } => {
                    let this = rollout.filter(|r| r.id == *id);
                    if !this
                        .is_some_and(|r| r.ignore_windows || r.status == RolloutStatus::RollingBack)
                    {
                        voluntary.push(format!("wave {wave} of rollout {id}"));
                    }
                }
                _ => {}
            }
        }
        if voluntary.is_empty() {
            return None;
        }
        if let Some(arn) = missing {
            return Some(format!(
                "v{} decided {} at {at} while target group {} does not exist",
                meta.version,
                voluntary.join(", "),
                phoenix_core::model::group_name(arn)
            ));
        }
        match policy.disruption_at(at) {
            Openness::Open { .. } => None,
            closed => Some(format!(
                "v{} decided {} at {at} while the fleet is closed ({})",
                meta.version,
                voluntary.join(", "),
                closed.describe(&policy.windows)
            )),
        }
    }

    /// At the end, once everything else converged: the fleet's drift converged too. Every live
    /// instance matches the spec (`Target::matches`: image, definition, subnet) and every
    /// instance of the fleet EC2 has carries the fleet's definition — unless the last rollout was
    /// aborted (it leaves the fleet as it was, mixed if need be). And a floating launch template
    /// is known at the version EC2 resolves it to now (the next pass would see a new one and
    /// roll). `None` when so, else what drifted.
    pub fn check_drift(books: &Books, ec2: &Ec2) -> Option<String> {
        let fleet = books.meta();
        if let Some(t) = fleet
            .spec
            .launch_template
            .as_ref()
            .filter(|t| t.is_floating())
        {
            let now = ec2.describe_launch_template(t).map(|v| v.resolve(t));
            if now != fleet.template_version {
                return Some(format!(
                    "launch template {} resolves to version {} in EC2; the fleet knows version {}",
                    t.name.as_deref().or(t.id.as_deref()).unwrap_or_default(),
                    now.as_deref().unwrap_or("none"),
                    fleet.template_version.as_deref().unwrap_or("none")
                ));
            }
        }
        if fleet
            .rollout
            .as_ref()
            .is_some_and(|r| r.status == RolloutStatus::Aborted)
        {
            return None;
        }
        let target = Target::of(fleet);
        if let Some(i) = books.live().find(|i| !target.matches(i)) {
            let why: Vec<String> = target.drift(i).iter().map(ToString::to_string).collect();
            return Some(format!(
                "{} does not match the spec: {}",
                i.id,
                why.join("; ")
            ));
        }
        if let Some(vm) = ec2
            .alive()
            .find(|vm| vm.definition() != Some(target.definition.as_str()))
        {
            return Some(format!(
                "{} in EC2 carries definition {}, the fleet's is {}",
                vm.id,
                vm.definition().unwrap_or("none"),
                target.definition
            ));
        }
        None
    }

    /// The largest zone's alive instances minus the smallest's.
    fn zone_spread(ec2: &Ec2) -> u32 {
        let mut counts = [0u32; ZONES.len()];
        for vm in ec2.alive() {
            counts[vm.zone] += 1;
        }
        counts.iter().max().copied().unwrap_or(0) - counts.iter().min().copied().unwrap_or(0)
    }

    /// The fleet's alive instances per zone (every zone of the fleet, empty ones too), when the
    /// largest has more than one above the smallest: `us-east-1a 3, us-east-1b 1, …`.
    pub fn unbalanced(ec2: &Ec2) -> Option<String> {
        let mut counts = [0u32; ZONES.len()];
        for vm in ec2.alive() {
            counts[vm.zone] += 1;
        }
        let (most, least) = (counts.iter().max()?, counts.iter().min()?);
        (most - least > 1).then(|| {
            ZONES
                .iter()
                .zip(counts)
                .map(|(z, n)| format!("{z} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    /// Before an instance is terminated: if its record says it waits for a replacement's launch,
    /// that launch must have created its instances already.
    pub fn check_terminate(books: &Books, ec2: &Ec2, id: &InstanceId) -> Option<String> {
        let rec = books.instance(id)?;
        let token = rec.disposal.as_ref()?.after_launch.as_ref()?;
        (!ec2.tokens_created.contains(token)).then(|| {
            format!("{id} terminated before its replacement (launch {token}) was launched")
        })
    }

    /// After a full reconcile that ran cleanly (committed or found nothing to do, no terminate
    /// call failed): every instance it saw that the books it loaded did not record as live must now
    /// be recorded or on its way out (adopted, or terminated as an orphan or extra).
    pub fn check_leaks(books: &Books, ec2: &Ec2, seen_unowned: &[InstanceId]) -> Option<String> {
        let leaked: Vec<String> = seen_unowned
            .iter()
            .filter(|id| {
                ec2.vms.get(*id).is_some_and(|vm| vm.alive() && vm.tagged())
                    && !books.is_live(id)
                    && books.instance(id).is_none_or(|i| i.released.is_none())
            })
            .map(|id| format!("{id} ({})", ec2.vms[id].token().unwrap_or("no token")))
            .collect();
        (!leaked.is_empty()).then(|| {
            format!(
                "{} seen by a reconcile as owned by no record, and neither recorded nor terminated after it",
                leaked.join(", ")
            )
        })
    }
}
