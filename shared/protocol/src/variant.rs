//! Deliberate bugs in the protocol, one at a time, for the simulator to prove that its invariants
//! catch each (as FoundationDB's simulator does with its injected bugs). Every one is a plausible
//! mistake in the code it names. Production always runs `Variant::Real`: nothing outside the
//! simulator's tests sets another.

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Variant {
    /// The protocol as it is.
    #[default]
    Real,
    /// `compute`: a launch decision carried out again (its lease ran out) calls RunInstances
    /// without first looking for instances that carry its token.
    RelaunchBlind,
    /// `controller`: commands are carried out before their decision is committed (outcomes
    /// recorded before the write-ahead decision).
    ActBeforeDeciding,
    /// `store`: an event record still `INPROGRESS` past its owner's deadline is taken as
    /// `COMPLETED`, so its redelivery returns without finishing the work.
    LapsedAsCompleted,
    /// `store`: the commit applying a queued intent leaves it in the inbox (applied again by the
    /// next pass).
    KeepQueued,
    /// `controller`: new work is started however close the invocation is to its deadline.
    IgnoreDeadlineReserve,
    /// `compute`: instances are terminated without re-validating that EC2 still shows them with
    /// the fleet's tag.
    TerminateUnchecked,
    /// `controller`: a commit's outbox item is removed before its notifications are published,
    /// so a crash or a failed PutEvents between the two loses them.
    RemoveBeforePublish,
    /// `controller`: notifications are published right after their commit only, never from the
    /// outbox: what a crash or a failed PutEvents leaves there is never published (the protocol
    /// before the outbox).
    PublishOnlyAfterCommit,
    /// `controller`: an instance to be deregistered from the fleet's target groups (to drain) is
    /// terminated at once instead, still registered.
    SkipDrain,
    /// `compute`: EC2 requests are sent without the call budget's admission.
    NoCallBudget,
    /// `controller`: the schedule's quick look takes a quiet fleet as unchanged without comparing
    /// what EC2 reports with its digest.
    QuietBlind,
}

impl Variant {
    pub const ALL: [Variant; 12] = [
        Variant::Real,
        Variant::RelaunchBlind,
        Variant::ActBeforeDeciding,
        Variant::LapsedAsCompleted,
        Variant::KeepQueued,
        Variant::IgnoreDeadlineReserve,
        Variant::TerminateUnchecked,
        Variant::RemoveBeforePublish,
        Variant::PublishOnlyAfterCommit,
        Variant::SkipDrain,
        Variant::NoCallBudget,
        Variant::QuietBlind,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Real => "real",
            Variant::RelaunchBlind => "relaunch-blind",
            Variant::ActBeforeDeciding => "act-before-deciding",
            Variant::LapsedAsCompleted => "lapsed-as-completed",
            Variant::KeepQueued => "keep-queued",
            Variant::IgnoreDeadlineReserve => "ignore-deadline-reserve",
            Variant::TerminateUnchecked => "terminate-unchecked",
            Variant::RemoveBeforePublish => "remove-before-publish",
            Variant::PublishOnlyAfterCommit => "publish-only-after-commit",
            Variant::SkipDrain => "skip-drain",
            Variant::NoCallBudget => "no-call-budget",
            Variant::QuietBlind => "quiet-blind",
        }
    }

    pub fn parse(s: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == s)
    }
}
