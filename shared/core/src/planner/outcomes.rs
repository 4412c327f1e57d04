//! Folding what EC2 answered into the fleet: instances launched become records, a launch EC2
//! refused is given up, instances terminated become tombstones (with an `InstanceReplaced` naming
//! their replacements when they waited for one).
//!
//! What holds: a step's outcomes are recorded in parts (`outcome_parts`) that each write at most
//! `MAX_TOUCHED_PER_STEP` instance records, one transaction each; instances found for a launch
//! beyond the count it asked for (a double launch) belong to no decision and are terminated.

use super::rollout::track_rollout;
use super::step::{Launched, Outcome, Step};
use super::tx::{Tx, MAX_TOUCHED_PER_STEP};
use crate::events::Change;
use crate::ids::InstanceId;
use crate::model::{Fleet, Health, Instance, Timestamp};

impl Tx {
    /// Adds instances found for a pending launch and retires the pending record.
    /// `tried`: how many of its offerings EC2 refused before the one that launched (none: not
    /// known, for instances found by their tag; then the first offering of their type and zone).
    pub(super) fn adopt_launch(
        &mut self,
        token: &str,
        found: &[Launched],
        request_ids: &[String],
        tried: Option<usize>,
    ) {
        let Some(pos) = self.fleet.pending.iter().position(|p| p.token == token) else {
            return;
        };
        let pending = self.fleet.pending.remove(pos);
        let mut ids = Vec::new();
        let market = |l: &Launched| match tried {
            Some(k) => pending.offerings.get(k).is_some_and(|o| o.spot),
            None => pending
                .offerings
                .iter()
                .find(|o| o.instance_type == l.instance_type && o.zone == l.zone)
                .is_some_and(|o| o.spot),
        };
        for l in found.iter().take(pending.count as usize) {
            if self.fleet.instances.get(&l.id).is_some_and(|i| i.is_live()) {
                continue;
            }
            self.fleet.instances.insert(
                l.id.clone(),
                Instance {
                    id: l.id.clone(),
                    image: pending.image.clone(),
                    launched_at: l.launched_at.unwrap_or(self.now),
                    state: l.state,
                    health: Health::Unknown,
                    signals: Default::default(),
                    token: token.to_string(),
                    zone: l.zone.clone(),
                    instance_type: l.instance_type.clone(),
                    disposal: None,
                    terminated_at: None,
                    taints: Vec::new(),
                    retirement: None,
                    replacement_for: pending.replacement_for.clone(),
                    definition: l.definition.clone(),
                    subnet: l.subnet.clone(),
                    launch_hook: None,
                    protected: false,
                    spot: market(l),
                    adopted: None,
                    released: None,
                },
            );
            self.touched.insert(l.id.clone());
            self.fleet.live += 1;
            ids.push(l.id.clone());
        }
        if let Some(wave) = self.fleet.rollout.as_mut().and_then(|r| {
            r.waves
                .iter_mut()
                .find(|w| w.tokens.iter().any(|t| t == token))
        }) {
            wave.launched.extend(ids.iter().cloned());
        }
        self.changes.push(Change::Launched {
            token: token.to_string(),
            instances: ids.clone(),
            request_ids: request_ids.to_vec(),
        });
        for id in &ids {
            self.start_launch_hook(id);
        }
        // A double launch (an emulator that ignores ClientToken, or a lost race) leaves extras:
        // they belong to no decision, so they go.
        for extra in found.iter().skip(pending.count as usize) {
            self.changes.push(Change::TerminationDecided {
                instance: extra.id.clone(),
                reason: format!("launched twice for decision {token}"),
            });
            self.terminate_now.push(extra.id.clone());
        }
    }
}

/// Folds what the executor got back from EC2 into the fleet, as one step.
pub fn record_outcomes(fleet: &Fleet, outcomes: &[Outcome], now: Timestamp) -> Step {
    record_outcome_part(fleet, outcomes, 0..outcomes.len(), now)
}

/// How many instance records recording `outcome` writes.
fn outcome_writes(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Launched { instances, .. } => instances.len(),
        Outcome::Terminated { instances, .. } => instances.len(),
        Outcome::Deregistered { instances, .. } => instances.len(),
        Outcome::Tagged { instances, .. }
        | Outcome::Untagged { instances }
        | Outcome::Detached { instances, .. }
        | Outcome::DetachFailed { instances, .. } => instances.len(),
        Outcome::LaunchFailed { .. }
        | Outcome::TagFailed { .. }
        | Outcome::UntagFailed { .. }
        | Outcome::TerminateFailed { .. }
        | Outcome::Registered { .. }
        | Outcome::RegisterFailed { .. }
        | Outcome::DeregisterFailed { .. } => 0,
    }
}

/// Splits a step's outcomes, in order, into parts that each write at most
/// `MAX_TOUCHED_PER_STEP` instance records, so that each part is one transaction: a wave that
/// launches 50 instances and terminates the 50 they replace records its 100 outcomes in two.
/// One outcome is never split (a step launches and terminates at most that many at a time).
pub fn outcome_parts(outcomes: &[Outcome]) -> Vec<std::ops::Range<usize>> {
    let mut parts = Vec::new();
    let (mut start, mut writes) = (0, 0);
    for (k, outcome) in outcomes.iter().enumerate() {
        let w = outcome_writes(outcome);
        if k > start && writes + w > MAX_TOUCHED_PER_STEP {
            parts.push(start..k);
            (start, writes) = (k, 0);
        }
        writes += w;
    }
    if start < outcomes.len() {
        parts.push(start..outcomes.len());
    }
    parts
}

/// Folds `outcomes[part]` into the fleet. The whole of `outcomes` names the instances that
/// replaced the ones terminated here when they were launched in another part.
pub fn record_outcome_part(
    fleet: &Fleet,
    outcomes: &[Outcome],
    part: std::ops::Range<usize>,
    now: Timestamp,
) -> Step {
    let mut tx = Tx::new(fleet, now);
    for outcome in &outcomes[part] {
        match outcome {
            Outcome::Launched {
                token,
                instances,
                request_ids,
                refused,
            } => {
                tx.note_refusals(token, refused, true);
                tx.adopt_launch(token, instances, request_ids, Some(refused.len()))
            }
            Outcome::LaunchFailed {
                token,
                error,
                refused,
            } => {
                tx.note_refusals(token, refused, false);
                tx.drop_pending(token, error)
            }
            Outcome::Terminated {
                instances,
                request_ids,
            } => {
                for id in instances {
                    let replaced = tx.fleet.instances.get(id).and_then(|i| {
                        let d = i.disposal.as_ref()?;
                        let token = d.after_launch.as_ref()?;
                        let by: Vec<InstanceId> = outcomes
                            .iter()
                            .filter_map(|o| match o {
                                Outcome::Launched {
                                    token: t,
                                    instances,
                                    ..
                                } if t == token => Some(instances.iter().map(|l| l.id.clone())),
                                _ => None,
                            })
                            .flatten()
                            .collect();
                        Some(Change::InstanceReplaced {
                            instance: id.clone(),
                            by,
                            reason: d.reason.clone(),
                        })
                    });
                    tx.bury(id);
                    tx.changes.extend(replaced);
                }
                tx.changes.push(Change::Terminated {
                    instances: instances.clone(),
                    request_ids: request_ids.clone(),
                });
            }
            Outcome::TerminateFailed { instances, error } => {
                tx.changes.push(Change::TerminationFailed {
                    instances: instances.clone(),
                    error: error.clone(),
                });
            }
            Outcome::Registered {
                instances,
                lands_by,
                request_ids,
            } => {
                tx.registration_over(instances, *lands_by);
                tx.changes.push(Change::Registered {
                    instances: instances.clone(),
                    request_ids: request_ids.clone(),
                })
            }
            Outcome::RegisterFailed {
                instances,
                lands_by,
                error,
            } => {
                tx.registration_over(instances, *lands_by);
                tx.changes.push(Change::RegistrationFailed {
                    instances: instances.clone(),
                    error: error.clone(),
                })
            }
            Outcome::Deregistered {
                instances, delay, ..
            } => tx.deregistered(instances, *delay),
            Outcome::DeregisterFailed { instances, error } => {
                tx.changes.push(Change::DeregistrationFailed {
                    instances: instances.clone(),
                    error: error.clone(),
                })
            }
            Outcome::Tagged { instances, gone } => tx.tagged(instances, gone),
            // Asked again once the request's lease runs out.
            Outcome::TagFailed { instances, error } => tx.changes.push(Change::TagFailed {
                instances: instances.clone(),
                error: error.clone(),
            }),
            Outcome::Untagged { instances } => tx.untagged(instances),
            Outcome::UntagFailed { instances, error } => tx.changes.push(Change::TagFailed {
                instances: instances.clone(),
                error: format!("removing phoenix's tags: {error}"),
            }),
            Outcome::Detached {
                group,
                instances,
                request_ids,
            } => tx.detached(group, instances, request_ids),
            Outcome::DetachFailed {
                group,
                instances,
                error,
            } => tx.detach_failed(group, instances, error),
        }
    }
    // The launches above may have completed a wave or the rollout.
    if fleet.complete {
        track_rollout(&mut tx);
    }
    tx.finish()
}
