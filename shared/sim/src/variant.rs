//! The planner the simulator drives: the real one, or a deliberately broken variant of it (a
//! wrapper that rewrites the real planner's steps). The broken ones exist to prove that the
//! invariants can fail: each breaks one promise, and the simulator must catch it.

use phoenix_core::events::{Change, Intent, QueuedIntent};
use phoenix_core::model::{Disposal, Fleet, Observed, RolloutStatus, Timestamp};
use phoenix_core::planner::{self, Command, Outcome, Step};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `phoenix_core::planner` as it is.
    Real,
    /// Terminations that should wait for their replacement's launch are issued at once.
    DropAfterLaunch,
    /// Every launch of a rollout wave also terminates as many healthy old instances at once
    /// (replace in place, not surge-then-drain).
    ReplaceInPlace,
    /// Launches use a quarantined image when the fleet has one.
    LaunchQuarantined,
    /// Every fresh launch decision launches one instance more than the surge allows.
    SurgeBlind,
    /// Health-check failures are ignored (recorded as such): failures stay silent.
    IgnoreHealthFailures,
}

impl Variant {
    pub const ALL: [Variant; 6] = [
        Variant::Real,
        Variant::DropAfterLaunch,
        Variant::ReplaceInPlace,
        Variant::LaunchQuarantined,
        Variant::SurgeBlind,
        Variant::IgnoreHealthFailures,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Real => "real",
            Variant::DropAfterLaunch => "drop-after-launch",
            Variant::ReplaceInPlace => "replace-in-place",
            Variant::LaunchQuarantined => "launch-quarantined",
            Variant::SurgeBlind => "surge-blind",
            Variant::IgnoreHealthFailures => "ignore-health-failures",
        }
    }

    pub fn parse(s: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == s)
    }

    /// What the controller plans for a fleet-wide event: the intent (if any), then a reconcile.
    pub fn plan_fleet(
        self,
        fleet: &Fleet,
        intent: Option<&Intent>,
        event_time: Timestamp,
        observed: &[Observed],
        now: Timestamp,
    ) -> phoenix_core::Result<Step> {
        let step = match intent {
            Some(i) => self.intent(fleet, i, event_time, now)?,
            None => Step::unchanged(fleet),
        }
        .then(|f| planner::reconcile(f, observed, now));
        Ok(self.rewrite(step))
    }

    /// What the controller plans for a fleet-wide pass that finds an intent in the fleet's inbox:
    /// that intent (never refused: one that no longer applies is recorded as ignored), then a
    /// reconcile. The pass's own intent waits for the next pass.
    pub fn plan_queued(
        self,
        fleet: &Fleet,
        queued: &QueuedIntent,
        observed: &[Observed],
        now: Timestamp,
    ) -> Step {
        let step = planner::apply_queued(fleet, queued, now)
            .then(|f| planner::reconcile(f, observed, now));
        self.rewrite(step)
    }

    /// What the controller plans for an instance-scoped event.
    pub fn plan_instance(
        self,
        fleet: &Fleet,
        intent: &Intent,
        event_time: Timestamp,
        now: Timestamp,
    ) -> phoenix_core::Result<Step> {
        Ok(self.rewrite(self.intent(fleet, intent, event_time, now)?))
    }

    /// Records `outcomes[part]` (one of `planner::outcome_parts`).
    pub fn record(
        self,
        fleet: &Fleet,
        outcomes: &[Outcome],
        part: std::ops::Range<usize>,
        now: Timestamp,
    ) -> Step {
        self.rewrite(planner::record_outcome_part(fleet, outcomes, part, now))
    }

    fn intent(
        self,
        fleet: &Fleet,
        intent: &Intent,
        event_time: Timestamp,
        now: Timestamp,
    ) -> phoenix_core::Result<Step> {
        if self == Variant::IgnoreHealthFailures {
            if let Intent::HealthCheckFailed { instance, .. } = intent {
                let mut step = Step::unchanged(fleet);
                step.changes.push(Change::Ignored {
                    reason: format!("{instance}: failure ignored"),
                });
                return Ok(step);
            }
        }
        planner::apply_intent(fleet, intent, event_time, now)
    }

    fn rewrite(self, mut step: Step) -> Step {
        match self {
            Variant::Real | Variant::IgnoreHealthFailures => {}
            Variant::DropAfterLaunch => {
                for c in &mut step.commands {
                    if let Command::Terminate { after_launch, .. } = c {
                        *after_launch = None;
                    }
                }
            }
            Variant::ReplaceInPlace => replace_in_place(&mut step),
            Variant::LaunchQuarantined => {
                if let Some(bad) = step.fleet.quarantined.keys().next().cloned() {
                    for c in &mut step.commands {
                        if let Command::Launch { token, image, .. } = c {
                            *image = bad.clone();
                            if let Some(p) =
                                step.fleet.pending.iter_mut().find(|p| p.token == *token)
                            {
                                p.image = bad.clone();
                            }
                        }
                    }
                }
            }
            Variant::SurgeBlind => {
                let fresh: Vec<String> = step
                    .changes
                    .iter()
                    .filter_map(|c| match c {
                        Change::LaunchDecided { token, .. } => Some(token.clone()),
                        _ => None,
                    })
                    .collect();
                for c in &mut step.commands {
                    if let Command::Launch { token, count, .. } = c {
                        if fresh.contains(token) {
                            *count += 1;
                            if let Some(p) =
                                step.fleet.pending.iter_mut().find(|p| p.token == *token)
                            {
                                p.count += 1;
                            }
                        }
                    }
                }
                for c in &mut step.changes {
                    if let Change::LaunchDecided { count, .. } = c {
                        *count += 1;
                    }
                }
            }
        }
        step
    }
}

/// For each instance a rollout wave launches, one healthy old-image instance goes at once.
fn replace_in_place(step: &mut Step) {
    let rolling = step
        .fleet
        .rollout
        .as_ref()
        .is_some_and(|r| r.status == RolloutStatus::InProgress);
    if !rolling || !step.fleet.complete {
        return;
    }
    let target = step.fleet.spec.image.clone();
    let launching: u32 = step
        .commands
        .iter()
        .map(|c| match c {
            Command::Launch { image, count, .. } if *image == target => *count,
            _ => 0,
        })
        .sum();
    let victims: Vec<_> = step
        .fleet
        .live_instances()
        .filter(|i| i.image != target && i.disposal.is_none() && i.is_healthy())
        .take(launching as usize)
        .map(|i| i.id.clone())
        .collect();
    if victims.is_empty() {
        return;
    }
    let now = step
        .fleet
        .pending
        .iter()
        .map(|p| p.decided_at)
        .max()
        .unwrap_or(step.fleet.created_at);
    for id in &victims {
        if let Some(i) = step.fleet.instances.get_mut(id) {
            i.disposal = Some(Disposal {
                reason: "replaced in place".into(),
                decided_at: now,
                after_launch: None,
            });
        }
        step.touched.insert(id.clone());
        step.changes.push(Change::TerminationDecided {
            instance: id.clone(),
            reason: "replaced in place".into(),
        });
    }
    step.commands.insert(
        0,
        Command::Terminate {
            instances: victims,
            after_launch: None,
        },
    );
}
