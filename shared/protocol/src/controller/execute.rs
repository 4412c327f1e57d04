//! Carrying out a committed step (the executor) and recording what came of it. Only here does the
//! protocol act on EC2; the planner only returns commands.

use super::{Apis, Controller, FleetOutcome, FleetReport};
use crate::error::{Error, Result};
use crate::ports::bus::{Bus, OutgoingEvent};
use crate::ports::{AutoScaling, Deadline, Ports};
use crate::store::{EventKey, EventRecord, Mail};
use crate::variant::Variant;
use phoenix_core::events::{Cause, Change};
use phoenix_core::model::{Fleet, Seconds, MAX_DETACH_IDS};
use phoenix_core::planner::{self, Command, Outcome, Step};
use phoenix_core::{FleetName, InstanceId};
use std::collections::BTreeSet;
use tracing::{info, warn};

/// The executor's order: registrations (first, as each must start soon after its decision),
/// tags, detaches, terminations and deregistrations already covered by healthy replacements, then
/// launches, then the deregistrations and terminations that wait for a launch (carried out only
/// if it succeeded).
pub fn executor_order(commands: &[Command]) -> Vec<&Command> {
    let (first, rest): (Vec<&Command>, Vec<&Command>) = commands.iter().partition(|c| {
        matches!(
            c,
            Command::Terminate {
                after_launch: None,
                ..
            } | Command::Deregister {
                after_launch: None,
                ..
            } | Command::Register { .. }
                | Command::Tag { .. }
                | Command::Untag { .. }
                | Command::Detach { .. }
        )
    });
    let (launches, after): (Vec<&Command>, Vec<&Command>) = rest
        .into_iter()
        .partition(|c| matches!(c, Command::Launch { .. }));
    first.into_iter().chain(launches).chain(after).collect()
}

/// What carrying out a step's commands came to.
#[derive(Debug, Default)]
pub(super) struct Ran {
    pub outcomes: Vec<Outcome>,
    /// AWS calls that failed; the next reconcile retries them.
    pub failures: Vec<String>,
    /// Commands not started (time short) or whose outcome is unknown: their decisions stay as
    /// committed, and the next reconcile finishes them once their lease runs out.
    pub unsettled: usize,
}

impl Ran {
    /// A call that failed: logged and kept for the report. Its error, for the outcome.
    fn failed(&mut self, fleet: &FleetName, what: &str, e: &Error) -> String {
        warn!(fleet = %fleet, error = %e, "{what} failed");
        self.failures.push(format!("{what}: {e}"));
        e.to_string()
    }
}

/// A command that waits for a launch that did not succeed: not carried out (the instance keeps
/// serving; the next pass decides again).
fn launch_failed(after_launch: &Option<String>, launched_ok: &BTreeSet<String>) -> bool {
    after_launch
        .as_ref()
        .is_some_and(|t| !launched_ok.contains(t))
}

impl<P: Ports> Controller<P> {
    /// Publishes the notifications the commit that made `fleet` wrote to its outbox
    /// (`RolloutStarted`, `WaveHealthy`, `RolloutRollingBack`, `ReplacementHalted`, ...: the
    /// transitions users route to chat or paging), then removes them from the outbox (`send`).
    pub(super) async fn announce(&self, fleet: &Fleet, changes: &[Change]) {
        if let Some(mail) = Mail::of(fleet, changes, self.now()) {
            self.send(&fleet.spec.name, &[mail]).await;
        }
    }

    /// Publishes what a crash or a failed PutEvents left in the fleet's outbox, once the
    /// invocation that committed it has had its time to (`Mail::due`; a lifecycle hook's at
    /// once). A pass over the whole fleet calls it with the outbox its load read. Whether every
    /// lifecycle hook's notification in it reached the bus: a pass that could not publish one
    /// does not plan (the hook's timeout runs, and must not end it unannounced).
    pub(super) async fn send_left(&self, name: &FleetName, outbox: Vec<Mail>) -> bool {
        if self.variant == Variant::PublishOnlyAfterCommit {
            return true;
        }
        let now = self.now();
        let due: Vec<Mail> = outbox.into_iter().filter(|m| m.due(now)).collect();
        if due.is_empty() {
            return true;
        }
        info!(fleet = %name, commits = due.len(), "publishing notifications left in the outbox");
        let hooks = due.iter().any(Mail::holds_hook);
        self.send(name, &due).await || !hooks
    }

    /// Publishes these commits' notifications, then removes them from the outbox; whether they
    /// reached the bus. Best effort, and never a reason to fail the invocation by itself: a
    /// PutEvents that fails leaves them in the outbox for a later pass; a removal that fails has
    /// them published again then, with the same ids.
    async fn send(&self, name: &FleetName, mail: &[Mail]) -> bool {
        let events: Vec<OutgoingEvent> = mail
            .iter()
            .flat_map(|m| &m.notifications)
            .map(|n| OutgoingEvent {
                detail_type: n.detail_type.clone(),
                detail: n.detail.clone(),
                resources: Vec::new(),
            })
            .collect();
        let versions: Vec<u64> = mail.iter().map(|m| m.version).collect();
        let remove_first = self.variant == Variant::RemoveBeforePublish;
        if remove_first {
            if let Err(e) = self.store.remove_mail(name, &versions).await {
                warn!(fleet = %name, error = %e, "could not remove notifications from the outbox");
                return false;
            }
        }
        if let Err(e) = self.bus.publish(&events).await {
            warn!(
                fleet = %name,
                error = %e,
                "could not publish {} notifications; the outbox keeps them for the next pass",
                events.len()
            );
            return false;
        }
        if !remove_first {
            if let Err(e) = self.store.remove_mail(name, &versions).await {
                warn!(
                    fleet = %name,
                    error = %e,
                    "published {} notifications but could not remove them from the outbox; the \
                     next pass publishes them again",
                    events.len()
                );
            }
        }
        true
    }

    /// Carries out a committed step's commands (unless `ran` already did: the deliberate bug of
    /// acting before deciding) and records what came of them. `claimed`: the event whose record
    /// this invocation holds `INPROGRESS`, marked `COMPLETED` with the outcomes once every
    /// command has a known outcome.
    pub(super) async fn execute(
        &self,
        mut fleet: Fleet,
        step: Step,
        cause: &Cause,
        claimed: Option<&EventKey>,
        deadline: Deadline,
        ran: Option<Ran>,
    ) -> Result<FleetReport> {
        let ran = match ran {
            Some(ran) => ran,
            None => self.run(&fleet, &step, deadline).await,
        };
        let Ran {
            outcomes,
            failures,
            unsettled,
        } = ran;
        let mut changes = step.changes;
        if outcomes.is_empty() {
            return Ok(
                FleetReport::of(FleetOutcome::Changed, &fleet, changes).with_failures(failures)
            );
        }
        let involved: Vec<InstanceId> = fleet.instances.keys().cloned().collect();
        // The event is completed with the last part: until then a crash leaves it in progress,
        // and the next reconcile finishes what the other parts did not record.
        let completes = claimed
            .filter(|_| unsettled == 0)
            .map(EventRecord::Complete);
        let parts = planner::outcome_parts(&outcomes);
        let last = parts.len() - 1;
        for (k, part) in parts.into_iter().enumerate() {
            let event = completes.filter(|_| k == last);
            let (committed, recorded) = self
                .record_part(fleet, &involved, &outcomes, part, cause, event, deadline)
                .await?;
            changes.extend(recorded);
            fleet = committed;
        }
        Ok(FleetReport::of(FleetOutcome::Changed, &fleet, changes).with_failures(failures))
    }

    /// Nothing, as the protocol is: commands are carried out only once their decision is
    /// committed (write-ahead). The deliberate bug `Variant::ActBeforeDeciding` carries them out
    /// here, before the commit.
    pub(super) async fn act_before_deciding(
        &self,
        fleet: &Fleet,
        step: &Step,
        deadline: Deadline,
    ) -> Option<Ran> {
        if self.variant != Variant::ActBeforeDeciding {
            return None;
        }
        Some(self.run(fleet, step, deadline).await)
    }

    /// Carries out a step's commands, in the executor's order, starting none with less than the
    /// deadline's reserve left.
    pub(super) async fn run(&self, fleet: &Fleet, step: &Step, deadline: Deadline) -> Ran {
        let name = &fleet.spec.name;
        let mut ran = Ran::default();
        // The fleet's account and region out of reach: nothing is carried out; the decisions
        // stay as committed, and the next pass finishes them once their lease runs out.
        let at = match self.apis(&fleet.spec).await {
            Ok(at) => at,
            Err(e) => {
                ran.failed(name, "reach the fleet's account", &e);
                ran.unsettled = step.commands.len();
                return ran;
            }
        };
        let mut deferred = false;
        let mut launched_ok = BTreeSet::new();
        // Decisions this invocation committed just now (not ones carried out again).
        let fresh: BTreeSet<&String> = step
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::LaunchDecided { token, .. } => Some(token),
                _ => None,
            })
            .collect();
        for cmd in executor_order(&step.commands) {
            if self.time_short(deadline) {
                if !deferred {
                    deferred = true;
                    ran.failures.push(
                        "deferred: the invocation's time is short; the next reconcile carries \
                         out the rest"
                            .to_string(),
                    );
                }
                ran.unsettled += 1;
                continue;
            }
            match cmd {
                Command::Launch {
                    token,
                    image,
                    count,
                    offerings,
                } => match at
                    .compute
                    .launch(
                        fleet,
                        token,
                        image,
                        *count,
                        offerings,
                        fresh.contains(token),
                        deadline,
                    )
                    .await
                {
                    Ok(out) if !out.instances.is_empty() => {
                        launched_ok.insert(token.clone());
                        ran.outcomes.push(Outcome::Launched {
                            token: token.clone(),
                            instances: out.instances,
                            request_ids: out.request_id.into_iter().collect(),
                            refused: out.refused,
                        });
                    }
                    Ok(out) => {
                        let error = match out.refused.last() {
                            Some(r) => format!("no capacity for any offering: {}", r.error),
                            None => "EC2 launched nothing".into(),
                        };
                        ran.failures.push(format!("launch {token}: {error}"));
                        ran.outcomes.push(Outcome::LaunchFailed {
                            token: token.clone(),
                            error,
                            refused: out.refused,
                        });
                    }
                    // A timeout, a lost connection or a 5xx may hide a launch that happened: the
                    // decision stays pending (not failed), so the next reconcile adopts what
                    // carries its token, or launches again with the same ClientToken once the
                    // lease runs out. Recording it as failed would drop the decision and reap the
                    // instance as an orphan.
                    Err(e @ Error::Transient { .. }) => {
                        warn!(fleet = %name, %token, error = %e, "launch outcome unknown");
                        ran.failures
                            .push(format!("launch {token} (outcome unknown): {e}"));
                        ran.unsettled += 1;
                    }
                    Err(e) => {
                        warn!(fleet = %name, %token, error = %e, "launch failed");
                        ran.failures.push(format!("launch {token}: {e}"));
                        ran.outcomes.push(Outcome::LaunchFailed {
                            token: token.clone(),
                            error: e.to_string(),
                            refused: Vec::new(),
                        });
                    }
                },
                Command::Tag { instances } => {
                    match at.compute.tag_adopted(fleet, instances, deadline).await {
                        Ok(gone) => ran.outcomes.push(Outcome::Tagged {
                            instances: instances.clone(),
                            gone,
                        }),
                        Err(e) => {
                            let error = ran.failed(name, "tag", &e);
                            ran.outcomes.push(Outcome::TagFailed {
                                instances: instances.clone(),
                                error,
                            });
                        }
                    }
                }
                Command::Untag { instances } => match at.compute.untag(instances, deadline).await {
                    Ok(()) => ran.outcomes.push(Outcome::Untagged {
                        instances: instances.clone(),
                    }),
                    Err(e) => {
                        let error = ran.failed(name, "untag", &e);
                        ran.outcomes.push(Outcome::UntagFailed {
                            instances: instances.clone(),
                            error,
                        });
                    }
                },
                Command::Detach { group, instances } => {
                    self.detach(&at, name, group, instances, &mut ran).await;
                }
                Command::Register {
                    instances,
                    start_by,
                    lands_by,
                } => {
                    // Started late, a registration could land after its lease, when a drain no
                    // longer waits for it: not started, and a later pass decides it again.
                    if self.now() > *start_by {
                        let error = "not started in time after its decision; a later pass \
                                     registers them"
                            .to_string();
                        ran.failures.push(format!("register: {error}"));
                        ran.outcomes.push(Outcome::RegisterFailed {
                            instances: instances.clone(),
                            lands_by: *lands_by,
                            error,
                        });
                        continue;
                    }
                    match at.targets.register(&fleet.spec, instances).await {
                        Ok(request_ids) => ran.outcomes.push(Outcome::Registered {
                            instances: instances.clone(),
                            lands_by: *lands_by,
                            request_ids,
                        }),
                        // A timeout or a 5xx may hide a registration that lands later: no
                        // outcome, so the fleet record keeps waiting for it until its lease
                        // runs out; then a later pass registers them if they are not.
                        Err(e @ Error::Transient { .. }) => {
                            ran.failed(name, "register (outcome unknown)", &e);
                        }
                        Err(e) => {
                            let error = ran.failed(name, "register", &e);
                            ran.outcomes.push(Outcome::RegisterFailed {
                                instances: instances.clone(),
                                lands_by: *lands_by,
                                error,
                            });
                        }
                    }
                }
                Command::Deregister {
                    instances,
                    after_launch,
                } => {
                    if launch_failed(after_launch, &launched_ok) {
                        continue;
                    }
                    if self.variant == Variant::SkipDrain {
                        self.skip_drain(&at, name, instances, &mut ran, deadline)
                            .await;
                        continue;
                    }
                    match at.targets.deregister(&fleet.spec, instances).await {
                        Ok(out) => ran.outcomes.push(Outcome::Deregistered {
                            instances: instances.clone(),
                            delay: Seconds(out.delay),
                            request_ids: out.request_ids,
                        }),
                        Err(e) => {
                            let error = ran.failed(name, "deregister", &e);
                            ran.outcomes.push(Outcome::DeregisterFailed {
                                instances: instances.clone(),
                                error,
                            });
                        }
                    }
                }
                Command::Terminate {
                    instances,
                    after_launch,
                } => {
                    if launch_failed(after_launch, &launched_ok) {
                        continue;
                    }
                    // Never terminated while a target group lists it: one that did not drain (it
                    // was not running when its termination was decided) is deregistered just
                    // before. One that drained is not listed, nor can it be again: no
                    // registration is decided for an instance on its way out, and its drain
                    // waited for those decided before (the pass that ended it saw none listed).
                    let undrained: Vec<InstanceId> = instances
                        .iter()
                        .filter(|i| {
                            !fleet
                                .instances
                                .get(i)
                                .and_then(|x| x.disposal.as_ref())
                                .is_some_and(|d| d.drained)
                        })
                        .cloned()
                        .collect();
                    let deregistered =
                        match fleet.spec.target_groups().is_empty() || undrained.is_empty() {
                            true => Ok(Default::default()),
                            false => at.targets.deregister(&fleet.spec, &undrained).await,
                        };
                    if let Err(e) = deregistered {
                        let error = ran.failed(name, "deregister before terminate", &e);
                        ran.outcomes.push(Outcome::TerminateFailed {
                            instances: instances.clone(),
                            error,
                        });
                        continue;
                    }
                    match at.compute.terminate(name, instances, deadline).await {
                        Ok(out) => {
                            let gone = out.gone;
                            let kept: Vec<InstanceId> = instances
                                .iter()
                                .filter(|i| !gone.contains(i))
                                .cloned()
                                .collect();
                            if !kept.is_empty() {
                                ran.outcomes.push(Outcome::TerminateFailed {
                                    instances: kept,
                                    error: "not tagged with this fleet in EC2; left alone".into(),
                                });
                            }
                            ran.outcomes.push(Outcome::Terminated {
                                instances: gone,
                                request_ids: out.request_ids,
                            });
                        }
                        Err(e) => {
                            let error = ran.failed(name, "terminate", &e);
                            ran.outcomes.push(Outcome::TerminateFailed {
                                instances: instances.clone(),
                                error,
                            });
                        }
                    }
                }
            }
        }
        ran
    }

    /// Detaches instances from their Auto Scaling group, `MAX_DETACH_IDS` per call, the group's
    /// desired capacity decremented with each so it launches nothing in their place. Instances
    /// no longer in the group are out of it: success, as "already gone" is for a delete.
    async fn detach(
        &self,
        at: &Apis<P>,
        name: &FleetName,
        group: &str,
        ids: &[InstanceId],
        ran: &mut Ran,
    ) {
        // A batch fails whole if one of its instances is no longer in the group: then each is
        // asked alone, and only those the group does not hold count as out of it.
        let batches = ids.chunks(MAX_DETACH_IDS).map(<[InstanceId]>::to_vec);
        let mut queue: std::collections::VecDeque<Vec<InstanceId>> = batches.collect();
        while let Some(chunk) = queue.pop_front() {
            let text: Vec<String> = chunk.iter().map(ToString::to_string).collect();
            match at.autoscaling.detach_instances(group, &text).await {
                Ok(request) => ran.outcomes.push(Outcome::Detached {
                    group: group.to_string(),
                    instances: chunk,
                    request_ids: request.into_iter().collect(),
                }),
                Err(Error::NotFound(_)) if chunk.len() > 1 => {
                    queue.extend(chunk.into_iter().map(|id| vec![id]));
                }
                Err(Error::NotFound(why)) => {
                    info!(fleet = %name, group, %why, "instance already out of the group");
                    ran.outcomes.push(Outcome::Detached {
                        group: group.to_string(),
                        instances: chunk,
                        request_ids: Vec::new(),
                    })
                }
                Err(e) => {
                    let error = ran.failed(name, "detach", &e);
                    ran.outcomes.push(Outcome::DetachFailed {
                        group: group.to_string(),
                        instances: chunk,
                        error,
                    });
                }
            }
        }
    }

    /// Nothing, as the protocol is: an instance leaves its target groups and drains before it is
    /// terminated. The deliberate bug `Variant::SkipDrain` terminates it here, where it should be
    /// deregistered.
    async fn skip_drain(
        &self,
        at: &Apis<P>,
        name: &FleetName,
        instances: &[InstanceId],
        ran: &mut Ran,
        deadline: Deadline,
    ) {
        match at.compute.terminate(name, instances, deadline).await {
            Ok(out) => ran.outcomes.push(Outcome::Terminated {
                instances: out.gone,
                request_ids: out.request_ids,
            }),
            Err(e) => {
                ran.failures.push(format!("terminate: {e}"));
                ran.outcomes.push(Outcome::TerminateFailed {
                    instances: instances.to_vec(),
                    error: e.to_string(),
                });
            }
        }
    }

    /// Commits one part of a step's outcomes (`planner::outcome_parts`). Recording outcomes is
    /// what the deadline's reserve is kept for: retried until the deadline itself (an unrecorded
    /// launch is adopted by the next reconcile anyway). Returns the fleet as committed and the
    /// changes recorded.
    #[allow(clippy::too_many_arguments)]
    async fn record_part(
        &self,
        mut fleet: Fleet,
        involved: &[InstanceId],
        outcomes: &[Outcome],
        part: std::ops::Range<usize>,
        cause: &Cause,
        event: Option<EventRecord<'_>>,
        deadline: Deadline,
    ) -> Result<(Fleet, Vec<Change>)> {
        let name = fleet.spec.name.clone();
        for attempt in 0..Self::conflict_attempts(deadline) {
            let now = self.now();
            if deadline.is_past(now) {
                break;
            }
            let record = self
                .planner
                .record_outcome_part(&fleet, outcomes, part.clone(), now);
            match self.store.commit(&fleet, &record, cause, event, now).await {
                Ok(committed) => {
                    self.announce(&committed, &record.changes).await;
                    return Ok((committed, record.changes));
                }
                Err(Error::Conflict(_)) => {
                    self.backoff(attempt).await;
                    fleet = if fleet.complete {
                        self.store.load_fleet(&name).await?
                    } else {
                        self.store.load_partial(&name, involved).await?
                    };
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(name.to_string()))
    }
}
