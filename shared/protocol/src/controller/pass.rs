//! Passes over a whole fleet: the notifications left in its outbox and its inbox first, then the
//! event's intent (if any) and a reconcile against what EC2 reports; after lost races, the intent
//! goes to the inbox instead.

use super::{Controller, FleetOutcome, FleetReport, QUEUE_AFTER_CONFLICTS};
use crate::budget;
use crate::error::{Error, Result};
use crate::ports::{Deadline, Ports};
use crate::store::{EventKey, EventRecord, Mail};
use phoenix_core::events::{Cause, Intent, QueuedIntent};
use phoenix_core::model::{Fleet, Health, Timestamp};
use phoenix_core::planner::{targets_observed, template_resolved, Step};
use phoenix_core::FleetName;
use std::collections::BTreeSet;
use tracing::{info, warn};

/// What one pass over a fleet did (`reconcile_pass`).
enum Pass {
    /// What the pass was for is done (or was done before: a duplicate).
    Done(FleetReport),
    /// It applied an intent from the fleet's inbox; what it was for is still to do.
    AppliedQueued(FleetReport),
    /// Its own intent is in the inbox now; the fleet is still to reconcile.
    QueuedOwn,
}

impl<P: Ports> Controller<P> {
    /// `reconcile_fleet` within `deadline`: passes over the fleet (`reconcile_pass`) until one
    /// does what this call is for. A loop, not recursion: each pass holds several calls' state,
    /// and a long inbox recursed deep enough to overflow a worker thread's stack. `looked`: the
    /// fleet record as just read (`Store::look`), which the first pass need not read again.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn reconcile_within(
        &self,
        name: &FleetName,
        intent: Option<&Intent>,
        event_time: Timestamp,
        cause: &Cause,
        key: Option<&EventKey>,
        deadline: Deadline,
        mut looked: Option<Fleet>,
    ) -> Result<FleetReport> {
        let (mut intent, mut key) = (intent, intent.and(key));
        let mut done: Option<FleetReport> = None;
        let mut queued_own = false;
        loop {
            // Once its intent is queued, the invocation tries the contended fleet only briefly:
            // the intent is safe, and any later pass over the fleet (the schedule's, each minute)
            // applies it; retrying until the deadline held a worker for up to a minute.
            let attempts = if queued_own {
                QUEUE_AFTER_CONFLICTS
            } else {
                Self::conflict_attempts(deadline)
            };
            let pass = Box::pin(self.reconcile_pass(
                name,
                intent,
                event_time,
                cause,
                key,
                attempts,
                deadline,
                looked.take(),
            ))
            .await;
            match pass {
                Ok(Pass::Done(r)) => return Ok(FleetReport::absorbed(done, r)),
                Ok(Pass::AppliedQueued(r)) => done = Some(FleetReport::absorbed(done, r)),
                Ok(Pass::QueuedOwn) => {
                    info!(fleet = %name, "intent queued after lost races");
                    (intent, key, queued_own) = (None, None, true);
                }
                // Queued, the intent is safe: a reconcile that fails now is in the report, and
                // the schedule's reconcile applies it.
                Err(e) if queued_own => {
                    warn!(fleet = %name, error = %e, "reconcile after queueing the intent failed");
                    let mut r =
                        done.unwrap_or_else(|| FleetReport::empty(name, FleetOutcome::Queued));
                    r.failures.push(e.to_string());
                    return Ok(r);
                }
                // Other events' queued intents were applied, this call's own work failed: an
                // intent not yet recorded fails the call (the event is delivered again).
                Err(e) => match done {
                    Some(mut r) if intent.is_none() => {
                        r.failures.push(e.to_string());
                        return Ok(r);
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    /// One pass over the fleet: the oldest queued intent if the inbox holds any (then the caller
    /// passes again), else `intent` and a reconcile against EC2 — or, after lost races, `intent`
    /// put in the inbox. Retries lost races itself, up to `attempts` in all.
    #[allow(clippy::too_many_arguments)]
    async fn reconcile_pass(
        &self,
        name: &FleetName,
        intent: Option<&Intent>,
        event_time: Timestamp,
        cause: &Cause,
        key: Option<&EventKey>,
        attempts: usize,
        deadline: Deadline,
        mut looked: Option<Fleet>,
    ) -> Result<Pass> {
        for attempt in 0..attempts {
            // On a busy fleet, short instance events keep winning the race against a plan that
            // also read EC2. Past a few lost races the intent — what must not be lost — goes to
            // the fleet's inbox, a write no race can fail, and the fleet is reconciled after it.
            // One write, so made even within the deadline's reserve. (Not whenever the inbox
            // holds intents: then every fleet-wide event would drain it, all racing for its first
            // item, and intents would wait longer.)
            if let (Some(intent), Some(key)) = (intent, key) {
                if attempt >= QUEUE_AFTER_CONFLICTS {
                    return self
                        .queue(name, intent, event_time, cause, key, deadline)
                        .await;
                }
            }
            // Too little time left to plan (the queued intents before it took it, or slow
            // calls): the intent waits in the inbox rather than failing the invocation, which
            // Lambda would retry only twice.
            if let Err(e) = self.check_time(deadline, "plan a change") {
                return match (intent, key) {
                    (Some(intent), Some(key)) => {
                        self.queue(name, intent, event_time, cause, key, deadline)
                            .await
                    }
                    _ => Err(e),
                };
            }
            let (fleet, outbox) = match looked.take() {
                Some(record) => self.store.load_rest(record).await?,
                None => self.store.load_fleet_and_outbox(name).await?,
            };
            let outbox_empty = outbox.is_empty();
            // What a crash or a failed PutEvents left in the outbox goes first, once per pass —
            // a lifecycle hook's on every attempt (a race lost may have begun one): its timeout
            // runs from its commit, so a pass that cannot announce it does not plan.
            let left = match attempt {
                0 => outbox,
                _ => outbox.into_iter().filter(Mail::holds_hook).collect(),
            };
            if !self.send_left(name, left).await {
                return Err(Error::Transient {
                    service: "eventbridge",
                    message: "a lifecycle hook's notification could not be published; the pass \
                              waits for it"
                        .into(),
                });
            }
            // Queued intents go first, one per commit, each recorded with its own event as the
            // cause; what this pass was for follows once they are applied.
            let queued = fleet.inbox.first();
            let (this_cause, this_key) = match queued {
                Some(q) => (&q.cause, None),
                None => (cause, key),
            };
            let at = self.apis(&fleet.spec).await?;
            // Status checks only of instances not yet counted healthy: the planner reads no
            // other's.
            let unproven: BTreeSet<&str> = fleet
                .live_instances()
                .filter(|i| i.health == Health::Unknown)
                .map(|i| i.id.as_str())
                .collect();
            let observed = self
                .observe(&at, &fleet, |id| unproven.contains(id), deadline)
                .await;
            let seen = match (observed, queued, intent, key) {
                (Ok(seen), ..) => seen,
                // EC2's rate (phoenix's budget of it, or the account's) is spent: the intent,
                // which needs no EC2 call to be kept, waits in the inbox rather than failing.
                (Err(Error::Throttled { service, .. }), None, Some(intent), Some(key))
                    if service == "ec2" || service == budget::SERVICE =>
                {
                    return self
                        .queue(name, intent, event_time, cause, key, deadline)
                        .await;
                }
                (Err(e), ..) => return Err(e),
            };
            let now = self.now();
            let step = match (queued, intent) {
                (Some(q), _) => self.planner.apply_queued(&fleet, q, now),
                (None, Some(i)) => match self.planner.apply_intent(&fleet, i, event_time, now) {
                    Ok(step) => step,
                    Err(e) => {
                        // A redelivery may no longer apply (a delta below zero, say): it is a
                        // duplicate, not bad input.
                        if let Some(key) = key {
                            if let Err(seen) = self.store.check_event(key, now).await {
                                return self
                                    .already_handled(
                                        name, &fleet, seen, event_time, cause, deadline,
                                    )
                                    .await
                                    .map(Pass::Done);
                            }
                        }
                        return Err(e.into());
                    }
                },
                (None, None) => Step::unchanged(&fleet),
            };
            // A floating launch template's new version is drift, seen here as the scheduled pass
            // comes by (or at once, when CloudTrail reports the new version).
            let step = match &seen.template {
                Some(version) => step.then(|f| template_resolved(f, version, now)),
                None => step,
            };
            // Which target groups exist, recorded before the pass plans on them.
            let step = match &seen.missing {
                Some(missing) => step.then(|f| targets_observed(f, missing, now)),
                None => step,
            };
            let step = self.planner.reconcile(step, &seen.observed, now);
            // (A queued intent is always committed: its commit deletes it from the inbox.)
            if step.is_noop() && queued.is_none() {
                if intent.is_none() && outbox_empty {
                    self.settle(&fleet, &seen, now).await;
                }
                return Ok(Pass::Done(FleetReport::of(
                    FleetOutcome::Unchanged,
                    &fleet,
                    Vec::new(),
                )));
            }
            // Nothing changes but why: only the event's record is written.
            if let (None, Some(why)) = (queued, step.ignored_only(&fleet)) {
                return match key {
                    Some(key) => match self.store.record_unchanged(name, key, &why, now).await {
                        Ok(()) => Ok(Pass::Done(FleetReport::of(
                            FleetOutcome::Unchanged,
                            &fleet,
                            step.changes,
                        ))),
                        Err(seen) if seen.is_seen_before() => self
                            .already_handled(name, &fleet, seen, event_time, cause, deadline)
                            .await
                            .map(Pass::Done),
                        Err(e) => Err(e),
                    },
                    None => Ok(Pass::Done(FleetReport::of(
                        FleetOutcome::Unchanged,
                        &fleet,
                        step.changes,
                    ))),
                };
            }
            // Commands follow: the event stays in progress until they are recorded.
            let in_progress = !step.commands.is_empty();
            let record = match queued {
                Some(q) => Some(EventRecord::Dequeue(q)),
                None => key.map(|key| EventRecord::Claim {
                    key,
                    in_progress_until: in_progress.then(|| self.in_progress_until(deadline, now)),
                }),
            };
            let ran = self.act_before_deciding(&fleet, &step, deadline).await;
            match self
                .store
                .commit(&fleet, &step, this_cause, record, now)
                .await
            {
                Ok(committed) => {
                    self.announce(&committed, &step.changes).await;
                    let claimed = this_key.filter(|_| in_progress);
                    let done =
                        Box::pin(self.execute(committed, step, this_cause, claimed, deadline, ran))
                            .await?;
                    return Ok(match queued {
                        Some(_) => Pass::AppliedQueued(done),
                        None => Pass::Done(done),
                    });
                }
                Err(Error::Conflict(_)) => self.backoff(attempt).await,
                Err(seen) if seen.is_seen_before() => {
                    return self
                        .already_handled(name, &fleet, seen, event_time, cause, deadline)
                        .await
                        .map(Pass::Done)
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(name.to_string()))
    }

    /// Puts an event's intent in the fleet's inbox instead of acting on it now (`why`): a later
    /// pass over the fleet applies it.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn queue_for_later(
        &self,
        name: &FleetName,
        intent: &Intent,
        event_time: Timestamp,
        cause: &Cause,
        key: &EventKey,
        deadline: Deadline,
        why: Error,
    ) -> Result<FleetReport> {
        info!(fleet = %name, reason = %why, "intent queued for a later pass");
        match self
            .queue(name, intent, event_time, cause, key, deadline)
            .await?
        {
            Pass::Done(report) => Ok(report),
            Pass::AppliedQueued(report) => Ok(report),
            Pass::QueuedOwn => {
                Ok(FleetReport::empty(name, FleetOutcome::Queued)
                    .with_failures(vec![why.to_string()]))
            }
        }
    }

    /// Puts the intent in the fleet's inbox, which completes its event's record.
    async fn queue(
        &self,
        name: &FleetName,
        intent: &Intent,
        event_time: Timestamp,
        cause: &Cause,
        key: &EventKey,
        deadline: Deadline,
    ) -> Result<Pass> {
        let queued = QueuedIntent {
            intent: intent.clone(),
            event_time,
            cause: cause.clone(),
        };
        match self.store.enqueue(name, &queued, key, self.now()).await {
            Ok(()) => Ok(Pass::QueuedOwn),
            Err(seen) if seen.is_seen_before() => {
                let fleet = self.store.load_partial(name, &[]).await?;
                self.already_handled(name, &fleet, seen, event_time, cause, deadline)
                    .await
                    .map(Pass::Done)
            }
            Err(e) => Err(e),
        }
    }

    /// A delivery of an event that has a record already (`seen`, from the store): completed or in
    /// the hands of a live invocation — return without acting; applied by an invocation whose
    /// time ran out — reconcile the fleet to finish its work, without applying the intent again.
    pub(super) async fn already_handled(
        &self,
        name: &FleetName,
        fleet: &Fleet,
        seen: Error,
        event_time: Timestamp,
        cause: &Cause,
        deadline: Deadline,
    ) -> Result<FleetReport> {
        match seen {
            Error::Duplicate(_) => {
                info!(fleet = %name, "duplicate event; handled before");
                Ok(FleetReport::of(FleetOutcome::Duplicate, fleet, Vec::new()))
            }
            Error::InFlight(_) => {
                info!(fleet = %name, "duplicate event; being handled by another invocation");
                Ok(FleetReport::of(FleetOutcome::InFlight, fleet, Vec::new()))
            }
            Error::Unfinished(_) => {
                info!(fleet = %name, "duplicate of an unfinished event; reconciling without it");
                let pass = Box::pin(Box::pin(
                    self.reconcile_within(name, None, event_time, cause, None, deadline, None),
                ))
                .await;
                let mut r = match pass {
                    Ok(r) => r,
                    // phoenix's EC2 call budget is spent, or the invocation's time (the queued
                    // intents before it took it): the intent was applied and its decisions are
                    // recorded, and the fleet's next pass finishes them. Failing the delivery
                    // would only have it retried into the same storm until it is dead-lettered.
                    Err(
                        e @ (Error::Throttled {
                            service: budget::SERVICE,
                            ..
                        }
                        | Error::Deadline(_)),
                    ) => FleetReport::of(FleetOutcome::Duplicate, fleet, Vec::new())
                        .with_failures(vec![e.to_string()]),
                    Err(e) => return Err(e),
                };
                r.outcome = FleetOutcome::Duplicate;
                Ok(r)
            }
            other => Err(other),
        }
    }
}
