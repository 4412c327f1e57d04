//! Events about one instance: read only that instance and its fleet's record, so the work does
//! not grow with the fleet.

use super::{Controller, FleetOutcome, FleetReport, QUEUE_AFTER_CONFLICTS};
use crate::budget;
use crate::error::{Error, Result};
use crate::ports::{Deadline, Ports};
use crate::store::{EventKey, EventRecord};
use phoenix_core::events::{Cause, Change, Intent};
use phoenix_core::model::{Fleet, Timestamp};
use phoenix_core::planner::{self, Step};
use phoenix_core::InstanceId;

impl<P: Ports> Controller<P> {
    /// Applies an instance's intent (a health report) to its fleet's record and that instance.
    pub(super) async fn instance_event(
        &self,
        id: &InstanceId,
        intent: &Intent,
        event_time: Timestamp,
        cause: &Cause,
        key: &EventKey,
        deadline: Deadline,
    ) -> Result<FleetReport> {
        let mut name = None;
        for attempt in 0..Self::conflict_attempts(deadline) {
            // A report that keeps losing the race for its fleet (a zone failing: every
            // instance's at once), or that its lost races left too little time to plan, goes to
            // the fleet's inbox, as a fleet-wide intent does, rather than failing until it is
            // dead-lettered.
            let mut why = self.check_time(deadline, "plan a change").err();
            if let Some(name) = name.as_ref() {
                if why.is_none() && attempt >= QUEUE_AFTER_CONFLICTS {
                    why = Some(Error::Conflict(format!(
                        "lost {attempt} races for {id}'s fleet"
                    )));
                }
                if let Some(why) = why {
                    return self
                        .queue_for_later(name, intent, event_time, cause, key, deadline, why)
                        .await;
                }
            } else if let Some(e) = why {
                return Err(e);
            }
            let fleet = self.store.load_for_instance(id).await?;
            name = Some(fleet.spec.name.clone());
            // A failure report about a rollout's new instance may send the rollout back: first
            // a look at what EC2 says of it, so that a failure of the instance alone (stopped,
            // its host impaired) is not taken for the image's.
            let seen = match self.judges_image(&fleet, id, intent) {
                true => {
                    let at = self.apis(&fleet.spec).await?;
                    match at.compute.describe_instance(id, deadline).await {
                        Ok(seen) => seen,
                        // EC2's rate is spent: the report waits in the fleet's inbox.
                        Err(e @ Error::Throttled { service, .. })
                            if service == "ec2" || service == budget::SERVICE =>
                        {
                            return self
                                .queue_for_later(
                                    &fleet.spec.name,
                                    intent,
                                    event_time,
                                    cause,
                                    key,
                                    deadline,
                                    e,
                                )
                                .await;
                        }
                        Err(e) => return Err(e),
                    }
                }
                false => None,
            };
            let now = self.now();
            let observed = match &seen {
                Some(o) => self.planner.observe_instance(&fleet, o, now),
                None => Step::unchanged(&fleet),
            };
            let planned =
                observed.then_result(|f| self.planner.apply_intent(f, intent, event_time, now));
            let step = match planned {
                Ok(step) => step,
                Err(e) => {
                    if let Err(seen) = self.store.check_event(key, now).await {
                        let name = fleet.spec.name.clone();
                        return self
                            .already_handled(&name, &fleet, seen, event_time, cause, deadline)
                            .await;
                    }
                    return Err(e.into());
                }
            };
            // Nothing changes but why: only the event's record is written.
            if let Some(why) = step.ignored_only(&fleet) {
                let name = fleet.spec.name.clone();
                return match self.store.record_unchanged(&name, key, &why, now).await {
                    Ok(()) => Ok(FleetReport::of(
                        FleetOutcome::Unchanged,
                        &fleet,
                        step.changes,
                    )),
                    Err(seen) if seen.is_seen_before() => {
                        self.already_handled(&name, &fleet, seen, event_time, cause, deadline)
                            .await
                    }
                    Err(e) => Err(e),
                };
            }
            let in_progress = !step.commands.is_empty();
            let record = EventRecord::Claim {
                key,
                in_progress_until: in_progress.then(|| self.in_progress_until(deadline, now)),
            };
            let ran = self.act_before_deciding(&fleet, &step, deadline).await;
            match self
                .store
                .commit(&fleet, &step, cause, Some(record), now)
                .await
            {
                Ok(committed) => {
                    self.announce(&committed, &step.changes).await;
                    let needs_fleet = step
                        .changes
                        .iter()
                        .any(|c| matches!(c, Change::RepairDeferred { .. }))
                        || self.completes_wave(&committed, &step.changes).await?;
                    let name = committed.spec.name.clone();
                    let claimed = in_progress.then_some(key);
                    let mut done =
                        Box::pin(self.execute(committed, step, cause, claimed, deadline, ran))
                            .await?;
                    if needs_fleet {
                        // The breaker decides on the whole fleet (and names what the failures
                        // share), and a wave made healthy lets the next one start: reconcile the
                        // fleet now rather than at the next schedule.
                        // The event's work is recorded: a pass that fails now is the next
                        // one's to do, not a reason to deliver the event again.
                        match self
                            .reconcile_within(&name, None, event_time, cause, None, deadline, None)
                            .await
                        {
                            Ok(full) => done.absorb(full),
                            Err(e) => done.failures.push(e.to_string()),
                        }
                    }
                    return Ok(done);
                }
                Err(seen) if seen.is_seen_before() => {
                    let name = fleet.spec.name.clone();
                    return self
                        .already_handled(&name, &fleet, seen, event_time, cause, deadline)
                        .await;
                }
                Err(Error::Conflict(_)) => self.backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(id.to_string()))
    }

    /// Whether a report is a failure of an instance of the rollout in progress, on its new image:
    /// the health gate will judge the image by it.
    fn judges_image(&self, fleet: &Fleet, id: &InstanceId, intent: &Intent) -> bool {
        let Some(r) = fleet.rollout.as_ref().filter(|r| r.status.is_active()) else {
            return false;
        };
        matches!(intent, Intent::HealthCheckFailed { .. })
            && fleet
                .instances
                .get(id)
                .is_some_and(|i| i.image == r.to && i.is_live())
    }

    /// Whether an instance event may have made the rollout's current wave healthy (see
    /// `planner::wave_to_recheck`): then the fleet is reconciled at once.
    async fn completes_wave(&self, fleet: &Fleet, changes: &[Change]) -> Result<bool> {
        let Some(wave) = planner::wave_to_recheck(fleet, changes) else {
            return Ok(false);
        };
        let members = self.store.load_partial(&fleet.spec.name, wave).await?;
        Ok(planner::wave_healthy(&members))
    }
}
