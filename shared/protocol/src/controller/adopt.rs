//! Fleets people already have: running instances adopted into a fleet (`adopt`), an Auto Scaling
//! group taken over (`adopt` with `Selection::Group`), instances given back (`release`).
//!
//! Each step, and what holds if the process dies right after it:
//! 1. *check* — the spec as `fleet apply` checks it; the instances selected exist, run, and are
//!    no other fleet's; a group exists, is not being refreshed, and serves only behind target
//!    groups the fleet names. Nothing written: a refusal changes nothing.
//! 2. *prepare the group* (a takeover only) — tag it `phoenix:fleet` (phoenix's IAM policy lets
//!    the functions change only groups so tagged), suspend every process, set its minimum size
//!    to 0 (so detaching may take it to 0). Crash after: the group is suspended and nothing is
//!    adopted; running the command again goes on from here (each call is idempotent).
//! 3. *commit* — the instances recorded as the fleet's (at most `MAX_ADOPTED_PER_STEP` a commit;
//!    more in as many), the takeover recorded, a rollout started for instances on another image.
//!    Crash after: the next pass tags them (`planner::adoption`), then detaches them.
//! 4. *tag* — `phoenix:fleet` and the adoption's token on each; the outcome recorded. Crash
//!    after: the next pass sees the tags and records them.
//! 5. The detaches, a batch at a time, are the reconcile passes' work (`planner::adoption`).

use super::{Apis, Controller, FleetReport};
use crate::compute::observed;
use crate::error::{Error, Result};
use crate::ports::autoscaling::{AutoScaling, Group};
use crate::ports::ec2::{Ec2Instance, Instances, MAX_FILTER_VALUES};
use crate::ports::{Deadline, Ports};
use phoenix_core::events::Cause;
use phoenix_core::model::{FleetSpec, Observed, TAG_FLEET};
use phoenix_core::planner::{self, Adoption, MAX_ADOPTED_PER_STEP};
use phoenix_core::{FleetName, InstanceId};
use serde::Serialize;
use std::collections::BTreeSet;

/// Which running instances to adopt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Those carrying every one of these tags.
    Tags(Vec<(String, String)>),
    /// These.
    Ids(Vec<InstanceId>),
    /// Every instance of this Auto Scaling group: a takeover.
    Group(String),
}

impl Selection {
    /// As recorded with each instance: `tag:app=web`, `instances`, `asg:<name>`.
    pub fn describe(&self) -> String {
        match self {
            Selection::Tags(tags) => tags
                .iter()
                .map(|(k, v)| format!("tag:{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            Selection::Ids(_) => "instances".into(),
            Selection::Group(g) => format!("asg:{g}"),
        }
    }
}

/// What an adoption did.
#[derive(Debug, Clone, Serialize)]
pub struct Adopted {
    pub fleet: FleetName,
    /// Taken into the fleet now.
    pub adopted: Vec<InstanceId>,
    /// Selected, and the fleet's already.
    pub already: Vec<InstanceId>,
    /// The group taken over, if one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The fleet's capacity: instances are launched, or scaled in, to it.
    pub capacity: u32,
    /// Adopted instances on another image than the fleet's, rolled to it.
    pub to_roll: usize,
    #[serde(skip)]
    pub reports: Vec<FleetReport>,
}

fn refuse(why: String) -> Error {
    phoenix_core::Error::invalid("adopt", why).into()
}

impl<P: Ports> Controller<P> {
    /// Takes running instances into a fleet without replacing them (`phoenix fleet adopt`); the
    /// fleet is created from `spec` or updated to it. See the module's steps.
    pub async fn adopt(&self, spec: FleetSpec, selection: &Selection) -> Result<Adopted> {
        let resolved = self.resolve_spec(&spec).await?;
        let name = spec.name.clone();
        let at = self.apis(&spec).await?;
        let group = match selection {
            Selection::Group(g) => Some(self.check_group(&at, g, &spec).await?),
            _ => None,
        };
        let found = self.select(&at, selection, group.as_ref()).await?;
        self.check_owners(&name, &found).await?;
        let found: Vec<Observed> = found
            .into_iter()
            .filter_map(|i| observed(i, None))
            .collect();
        let already: BTreeSet<InstanceId> = match self.store.load_fleet(&name).await {
            Ok(f) => found
                .iter()
                .filter(|o| f.instances.get(&o.id).is_some_and(|i| i.is_live()))
                .map(|o| o.id.clone())
                .collect(),
            Err(Error::NotFound(_)) => BTreeSet::new(),
            Err(e) => return Err(e),
        };
        // The planner refuses instances that do not run: checked before the group is touched.
        if let Some(o) = found
            .iter()
            .find(|o| o.state != phoenix_core::model::Lifecycle::Running)
        {
            return Err(refuse(format!(
                "{} is {}: only running instances are adopted",
                o.id,
                o.state.as_str()
            )));
        }
        if let Some(g) = &group {
            self.prepare_group(&at, g, &name).await?;
        }
        let from = selection.describe();
        let cause = Cause::internal("FleetAdopted");
        let mut reports = Vec::new();
        for chunk in found.chunks(MAX_ADOPTED_PER_STEP) {
            let adoption = Adoption {
                found: chunk,
                from: &from,
                group: group.as_ref().map(|g| g.name.as_str()),
            };
            reports.push(self.adopt_part(&spec, &resolved, adoption, &cause).await?);
        }
        let adopted: Vec<InstanceId> = found
            .iter()
            .map(|o| o.id.clone())
            .filter(|id| !already.contains(id))
            .collect();
        let to_roll = found
            .iter()
            .filter(|o| !already.contains(&o.id) && o.image.as_ref() != Some(&spec.image))
            .count();
        Ok(Adopted {
            fleet: name,
            adopted,
            already: already.into_iter().collect(),
            group: group.map(|g| g.name),
            capacity: spec.capacity,
            to_roll,
            reports,
        })
    }

    /// One commit of an adoption, then its `Tag` command carried out and recorded.
    async fn adopt_part(
        &self,
        spec: &FleetSpec,
        resolved: &planner::Resolved,
        adoption: Adoption<'_>,
        cause: &Cause,
    ) -> Result<FleetReport> {
        for attempt in 0..super::MAX_CONFLICTS {
            let now = self.now();
            let before = match self.store.load_fleet(&spec.name).await {
                Ok(f) => Some(f),
                Err(Error::NotFound(_)) => None,
                Err(e) => return Err(e),
            };
            let step = planner::adopt(
                before.as_ref(),
                spec.clone(),
                resolved.clone(),
                adoption,
                now,
            )?;
            let base = before.unwrap_or_else(|| step.fleet.clone());
            match self.store.commit(&base, &step, cause, None, now).await {
                Ok(committed) => {
                    self.announce(&committed, &step.changes).await;
                    return Box::pin(self.execute(
                        committed,
                        step,
                        cause,
                        None,
                        Deadline::NONE,
                        None,
                    ))
                    .await;
                }
                Err(Error::Conflict(_)) => self.backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(spec.name.to_string()))
    }

    /// The instances a selection names, as EC2 reports them: each id must exist; tags must
    /// match at least one; a group's must all be in service.
    async fn select(
        &self,
        at: &Apis<P>,
        selection: &Selection,
        group: Option<&Group>,
    ) -> Result<Vec<Ec2Instance>> {
        let compute = &at.compute;
        let by_ids = |ids: Vec<String>| async move {
            let mut out = Vec::new();
            for chunk in ids.chunks(MAX_FILTER_VALUES) {
                out.extend(
                    compute
                        .list(&Instances::Ids(chunk.to_vec()), Deadline::NONE)
                        .await?,
                );
            }
            Ok::<_, Error>(out)
        };
        let found = match (selection, group) {
            (Selection::Tags(tags), _) => {
                let Some((key, value)) = tags.first() else {
                    return Err(refuse("no tag to select instances by".into()));
                };
                let mut found = compute
                    .list(
                        &Instances::Tagged {
                            key: key.clone(),
                            value: value.clone(),
                        },
                        Deadline::NONE,
                    )
                    .await?;
                found.retain(|i| tags.iter().all(|(k, v)| i.tags.get(k) == Some(v)));
                if found.is_empty() {
                    return Err(Error::NotFound(format!(
                        "no instance carries {}",
                        selection.describe()
                    )));
                }
                found
            }
            (Selection::Ids(ids), _) => {
                let wanted: Vec<String> = ids.iter().map(ToString::to_string).collect();
                let found = by_ids(wanted.clone()).await?;
                if let Some(missing) = wanted.iter().find(|w| !found.iter().any(|i| i.id == **w)) {
                    return Err(Error::NotFound(format!(
                        "instance {missing} does not exist"
                    )));
                }
                found
            }
            (Selection::Group(_), Some(g)) => {
                by_ids(g.instances.iter().map(|m| m.id.clone()).collect()).await?
            }
            (Selection::Group(name), None) => {
                return Err(Error::NotFound(format!("Auto Scaling group {name}")))
            }
        };
        let mut seen = BTreeSet::new();
        Ok(found
            .into_iter()
            .filter(|i| seen.insert(i.id.clone()))
            .collect())
    }

    /// Refuses instances another fleet owns: by their `phoenix:fleet` tag, or by another fleet's
    /// record of them.
    async fn check_owners(&self, name: &FleetName, found: &[Ec2Instance]) -> Result<()> {
        let mut refused = Vec::new();
        for i in found {
            if let Some(other) = i.tags.get(TAG_FLEET).filter(|f| *f != name.as_str()) {
                refused.push(format!("{} is fleet {other}'s", i.id));
                continue;
            }
            let Ok(id) = InstanceId::parse(&i.id) else {
                continue;
            };
            match self.store.load_for_instance(&id).await {
                Ok(f)
                    if f.spec.name != *name
                        && f.instances.get(&id).is_some_and(|r| r.is_live()) =>
                {
                    refused.push(format!("{} is fleet {}'s", i.id, f.spec.name))
                }
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(refuse(format!(
                "{}; `phoenix fleet release` gives instances back",
                refused.join("; ")
            )))
        }
    }

    /// A group a fleet may take over: it exists, no instance refresh is under way, every
    /// instance is in service, no other fleet is taking it over, the budget lets an instance be
    /// out of service while it moves, and every target group it serves behind is one the fleet
    /// names (detaching takes an instance out of the group's
    /// target groups; only the fleet's are registered again). Classic load balancers are
    /// refused: phoenix does not register with them.
    async fn check_group(&self, at: &Apis<P>, name: &str, spec: &FleetSpec) -> Result<Group> {
        let Some(group) = at.autoscaling.describe_group(name).await? else {
            return Err(Error::NotFound(format!(
                "Auto Scaling group {name} does not exist"
            )));
        };
        if let Some(other) = group
            .tags
            .get(TAG_FLEET)
            .filter(|f| *f != spec.name.as_str())
        {
            return Err(refuse(format!(
                "Auto Scaling group {name} is being taken over by fleet {other}"
            )));
        }
        if at.autoscaling.refresh_active(name).await? {
            return Err(refuse(format!(
                "Auto Scaling group {name} has an instance refresh under way; wait for it to \
                 end or cancel it first"
            )));
        }
        if let Some(m) = group.instances.iter().find(|m| m.lifecycle != "InService") {
            return Err(refuse(format!(
                "instance {} of Auto Scaling group {name} is {}; only groups whose instances are \
                 all InService are taken over",
                m.id, m.lifecycle
            )));
        }
        if !group.load_balancers.is_empty() {
            return Err(refuse(format!(
                "Auto Scaling group {name} serves behind Classic Load Balancers ({}); phoenix \
                 registers instances with target groups only",
                group.load_balancers.join(", ")
            )));
        }
        // A detached instance is out of service until the fleet's groups report it healthy
        // again: a budget that lets none be unavailable would never detach one.
        let budget = spec.policy.budget(spec.capacity);
        if !spec.target_groups().is_empty() && budget.min_healthy >= spec.capacity {
            return Err(refuse(format!(
                "policy.max_unavailable lets no instance be out of service, and each instance of \
                 Auto Scaling group {name} is, from its detach until the fleet's target groups \
                 report it healthy: set max_unavailable to 1 or more (or a percentage) for the \
                 takeover"
            )));
        }
        let named: BTreeSet<&str> = spec
            .target_groups()
            .iter()
            .map(|g| g.arn.as_str())
            .collect();
        let unnamed: Vec<&str> = group
            .target_groups
            .iter()
            .map(String::as_str)
            .filter(|g| !named.contains(g))
            .collect();
        if !unnamed.is_empty() {
            return Err(refuse(format!(
                "Auto Scaling group {name} serves behind {}, which the fleet file does not name: \
                 detached instances would stop serving there. Add them to \
                 load_balancing.target_groups",
                unnamed.join(", ")
            )));
        }
        Ok(group)
    }

    /// Step 2: the group tagged as the fleet's, its processes suspended, its minimum size 0.
    async fn prepare_group(&self, at: &Apis<P>, group: &Group, fleet: &FleetName) -> Result<()> {
        at.autoscaling
            .tag_group(&group.name, TAG_FLEET, fleet.as_str())
            .await?;
        at.autoscaling.suspend_processes(&group.name).await?;
        if group.min > 0 {
            at.autoscaling.set_min_size(&group.name, 0).await?;
        }
        Ok(())
    }

    /// Gives every instance of a fleet back (`phoenix fleet release`): recorded as released and
    /// the capacity set to 0 in one commit, then phoenix's tags removed. The fleet's record and
    /// history stay. Returns the instances released.
    pub async fn release(&self, name: &FleetName) -> Result<(Vec<InstanceId>, FleetReport)> {
        let cause = Cause::internal("FleetReleased");
        for attempt in 0..super::MAX_CONFLICTS {
            let fleet = self.store.load_fleet(name).await?;
            let now = self.now();
            let step = planner::release(&fleet, now)?;
            let ids: Vec<InstanceId> = fleet.live_instances().map(|i| i.id.clone()).collect();
            match self.store.commit(&fleet, &step, &cause, None, now).await {
                Ok(committed) => {
                    self.announce(&committed, &step.changes).await;
                    let report =
                        Box::pin(self.execute(committed, step, &cause, None, Deadline::NONE, None))
                            .await?;
                    return Ok((ids, report));
                }
                Err(Error::Conflict(_)) => self.backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(name.to_string()))
    }
}
