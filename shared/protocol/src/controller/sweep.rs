//! The schedule's pass over one fleet (`sweep`): a quick look first, the full pass only when it
//! finds something to do; and a pass that decided nothing recording the fleet as quiet (`settle`).
//!
//! A quick look reads the fleet record with its outbox (one query) and whether the inbox holds an
//! intent (one key), then what EC2 and the target groups report (`Controller::observe`, without
//! status checks: a quiet fleet has no instance not yet counted healthy). It ends there if the
//! record is quiet (`store::Quiet`: recorded for this version, not run out), nothing waits in the
//! outbox or the inbox, and the digest of what is reported is the quiet's. Otherwise the full
//! pass follows, with the record already read.
//!
//! What holds: a quick look writes nothing, so dying at any point of it leaves nothing to do. It
//! ends without a full pass only where a full pass would decide nothing (`planner::quiet_until`):
//! same record, same reports, before any timer of the planner falls due. Events act at once as
//! ever; only the schedule looks quickly.

use super::observe::Seen;
use super::{Controller, FleetOutcome, FleetReport};
use crate::error::Result;
use crate::ports::{Deadline, Ports};
use crate::store::Quiet;
use crate::variant::Variant;
use phoenix_core::events::Cause;
use phoenix_core::model::{Fleet, Timestamp};
use phoenix_core::planner::quiet_until;
use phoenix_core::FleetName;
use tracing::{debug, warn};

impl<P: Ports> Controller<P> {
    /// The schedule's pass over `name`: nothing more than a look if the fleet is quiet and
    /// nothing it looked at changed; the full pass (`reconcile_within`) otherwise.
    pub(super) async fn sweep(
        &self,
        name: &FleetName,
        event_time: Timestamp,
        cause: &Cause,
        deadline: Deadline,
    ) -> Result<FleetReport> {
        let look = self.store.look(name).await?;
        if let Some(quiet) = look.quiet_at(self.now()) {
            if look.outbox.is_empty() && !self.store.has_queued(name).await? {
                let at = self.apis(&look.fleet.spec).await?;
                let seen = self.observe(&at, &look.fleet, |_| false, deadline).await?;
                if seen.digest() == quiet.digest || self.variant == Variant::QuietBlind {
                    debug!(fleet = %name, "quiet: nothing reported changed");
                    return Ok(FleetReport::of(
                        FleetOutcome::Quiet,
                        &look.fleet,
                        Vec::new(),
                    ));
                }
            }
        }
        Box::pin(self.reconcile_within(
            name,
            None,
            event_time,
            cause,
            None,
            deadline,
            Some(look.fleet),
        ))
        .await
    }

    /// After a pass over the whole fleet that decided nothing, with nothing in its outbox:
    /// records it quiet until the planner would act (if it would not act at once). Best effort:
    /// a fleet not recorded quiet is passed over in full next time, as before.
    pub(super) async fn settle(&self, fleet: &Fleet, seen: &Seen, now: Timestamp) {
        let Some(until) = quiet_until(fleet, &seen.observed, now) else {
            return;
        };
        let quiet = Quiet {
            version: fleet.version,
            digest: seen.digest(),
            until,
        };
        if let Err(e) = self.store.mark_quiet(&fleet.spec.name, &quiet).await {
            warn!(fleet = %fleet.spec.name, error = %e, "could not record the fleet as quiet");
        }
    }
}
