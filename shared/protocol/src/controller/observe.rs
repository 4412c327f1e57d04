//! What a pass over a fleet reads of the world before it plans (`Seen`): the instances EC2 lists
//! with the fleet's tag, what its target groups report of them and which groups are missing, and
//! the version its launch template resolves to if it floats; and the digest of all that, which
//! the schedule's quick look compares with a settled fleet's (`store::Quiet`).

use super::digest::Fnv1a;
use super::{Apis, Controller};
use crate::error::{Error, Result};
use crate::ports::{Deadline, Ports};
use phoenix_core::model::{Fleet, Observed};
use std::hash::{Hash, Hasher};
use tracing::warn;

/// What one pass saw.
pub(super) struct Seen {
    pub observed: Vec<Observed>,
    /// Target groups of the spec that do not exist (none: the fleet has no groups to look at).
    pub missing: Option<Vec<(String, String)>>,
    /// The launch template's version now, if it floats and exists.
    pub template: Option<String>,
}

impl Seen {
    /// A digest of everything the planner reads here, independent of the order EC2 lists
    /// instances in. 64 bits of FNV-1a: two different views that collide (about one chance in
    /// 2^64) cost a full pass deferred until the quiet runs out, no more.
    pub fn digest(&self) -> String {
        let mut observed: Vec<&Observed> = self.observed.iter().collect();
        observed.sort_by(|a, b| a.id.cmp(&b.id));
        let mut h = Fnv1a::default();
        observed.hash(&mut h);
        self.missing.hash(&mut h);
        self.template.hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

impl<P: Ports> Controller<P> {
    /// What the fleet's EC2 instances, target groups and launch template say now; status checks
    /// only of the instances `checks` names (`Compute::describe_fleet`).
    pub(super) async fn observe(
        &self,
        at: &Apis<P>,
        fleet: &Fleet,
        checks: impl Fn(&str) -> bool,
        deadline: Deadline,
    ) -> Result<Seen> {
        let name = &fleet.spec.name;
        let mut observed = at.compute.describe_fleet(name, checks, deadline).await?;
        let missing = self.observe_targets(at, fleet, &mut observed).await?;
        let template = self.template_version(at, fleet, deadline).await?;
        Ok(Seen {
            observed,
            missing,
            template,
        })
    }

    /// What the fleet's target groups report about its instances, put next to what EC2 reports;
    /// and which groups do not exist (none: the fleet has no groups to look at).
    async fn observe_targets(
        &self,
        at: &Apis<P>,
        fleet: &Fleet,
        observed: &mut [Observed],
    ) -> Result<Option<Vec<(String, String)>>> {
        if fleet.spec.target_groups().is_empty() {
            return Ok((!fleet.lb_missing.is_empty()).then(Vec::new));
        }
        let mut seen = at.targets.observe(&fleet.spec).await?;
        for o in observed.iter_mut() {
            o.targets = seen.by_instance.remove(o.id.as_str()).unwrap_or_default();
        }
        Ok(Some(seen.missing))
    }

    /// The version the fleet's launch template resolves to now, if it floats (`$Latest`,
    /// `$Default`, no version). A template that no longer exists leaves the fleet as it is: its
    /// launches fail and say why.
    async fn template_version(
        &self,
        at: &Apis<P>,
        fleet: &Fleet,
        deadline: Deadline,
    ) -> Result<Option<String>> {
        let Some(t) = fleet
            .spec
            .launch_template
            .as_ref()
            .filter(|t| t.is_floating())
        else {
            return Ok(None);
        };
        match at.compute.resolve_template(t, deadline).await {
            Ok(v) => Ok(Some(v)),
            Err(Error::NotFound(why)) => {
                warn!(fleet = %fleet.spec.name, %why, "launch template not found");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}
