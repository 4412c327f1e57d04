//! The EC2 port's calls, served from the simulated EC2, with the checks of the protocol's
//! traffic that each call allows: write-ahead, the token lookup before a launch is made again,
//! the deadline's reserve, re-validation before terminating, and no termination of what still
//! serves or what its terminating hook holds (`traffic`).

use super::World;
use crate::check::Checker;
use chrono::Duration;
use phoenix_core::model::{TAG_DEFINITION, TAG_FLEET, TAG_TOKEN};
use phoenix_core::{ImageId, InstanceId};
use phoenix_protocol::error::{Error, Result};
use phoenix_protocol::ports::ec2::{Ec2Instance, InstanceStatus, Instances, Ran, RunInstances};
use phoenix_protocol::ports::DEADLINE_RESERVE;
use std::collections::BTreeMap;

fn internal_error(call: &str) -> Error {
    super::internal_error("ec2", call)
}

impl World {
    /// A request reached EC2: within the controller's call budget, counted by second of arrival,
    /// as EC2 counts its rate.
    pub fn ec2_request(&mut self) {
        let second = self.now.timestamp();
        if self.ec2_second.0 != second {
            self.ec2_second = (second, 0);
        }
        self.ec2_second.1 += 1;
        let sent = self.ec2_second.1;
        if let Some(budget) = self.ec2_budget.filter(|b| sent > *b) {
            let who = self.who();
            self.violate(
                "ec2 budget",
                format!(
                    "{who}: EC2's request {sent} within one second, over the budget of {budget}"
                ),
            );
        }
    }

    /// The first call of a command (a launch or a termination) must leave the deadline's reserve.
    fn check_reserve(&mut self, what: &str) {
        let Some(left) = self.time_left() else {
            return;
        };
        self.check_reserve_left(what, left);
    }

    /// Time left before the current invocation's deadline.
    pub(super) fn time_left(&self) -> Option<Duration> {
        let inv = self.current.and_then(|n| self.invocations.get(&n))?;
        Some(inv.deadline - self.now)
    }

    fn check_reserve_left(&mut self, what: &str, left: Duration) {
        if left < Duration::from_std(DEADLINE_RESERVE).unwrap_or_default() {
            let who = self.who();
            self.violate(
                "deadline",
                format!(
                    "{who} starts {what} with {}s left before its deadline (the reserve is {}s)",
                    left.num_seconds(),
                    DEADLINE_RESERVE.as_secs()
                ),
            );
        }
    }

    pub fn ec2_describe(&mut self, which: &Instances) -> Result<Vec<Ec2Instance>> {
        match which {
            Instances::Tagged { key, value } if key == TAG_TOKEN => {
                self.check_reserve(&format!("to carry out launch {value} again"));
                if let Some(inv) = self.invocation() {
                    inv.looked_up.insert(value.clone());
                }
            }
            // A look by id re-validates a termination (checked when the termination follows),
            // or reads one instance before judging a failure report.
            Instances::Ids(ids) => {
                let groups = self.books.meta().spec.target_groups().len();
                let left = self.time_left();
                let tagged: BTreeMap<String, bool> = ids
                    .iter()
                    .map(|id| {
                        let tagged = self
                            .ec2
                            .vms
                            .values()
                            .any(|vm| vm.id.as_str() == id && vm.tagged());
                        (id.clone(), tagged)
                    })
                    .collect();
                if let Some(inv) = self.invocation() {
                    let looks = std::mem::take(&mut inv.group_looks);
                    let began = looks.len().checked_sub(groups).filter(|_| groups > 0);
                    inv.validated = tagged;
                    inv.validated_left = began.map(|k| looks[k]).or(left);
                }
            }
            Instances::Tagged { .. } => {}
        }
        let out = if self.chaos_fault(self.service_faults.ec2_5xx) {
            Err(internal_error("DescribeInstances"))
        } else {
            self.ec2.describe_instances(which, self.now, &mut self.rng)
        };
        let who = self.who();
        match (&out, which) {
            (Err(e), _) => self.note(format!("{who} DescribeInstances fails: {e}")),
            (Ok(seen), Instances::Tagged { key, .. }) if key == TAG_FLEET => {
                self.note(format!("{who} sees {} instances", seen.len()));
                if let Some(inv) = self.invocation() {
                    inv.observed_after |= inv.met_unfinished;
                    inv.pass_refused = false;
                    inv.seen_unowned = seen
                        .iter()
                        .filter(|i| !i.state.is_gone())
                        .filter_map(|i| InstanceId::parse(&i.id).ok())
                        .filter(|id| !inv.loaded_live.contains(id))
                        .collect();
                }
            }
            _ => {}
        }
        out
    }

    pub fn ec2_status(&mut self, ids: &[String]) -> Result<Vec<InstanceStatus>> {
        if self.chaos_fault(self.service_faults.ec2_5xx) {
            return Err(internal_error("DescribeInstanceStatus"));
        }
        self.ec2.instance_status(ids, self.now, &mut self.rng)
    }

    pub fn ec2_run(&mut self, r: &RunInstances) -> Result<Ran> {
        // The decision is the `phoenix:launch` tag; the ClientToken is one attempt at it
        // (`<token>.<k>` for the `k`th offering, after EC2 refused the ones before).
        let token = r
            .tags
            .get(TAG_TOKEN)
            .cloned()
            .unwrap_or_else(|| r.client_token.clone());
        let next_offering = r.client_token != token;
        let who = self.who();
        // Write-ahead: a launch is made only for a decision committed before it.
        let Some(decision) = self.checker.decided.get(&token).copied() else {
            self.violate(
                "write-ahead",
                format!("{who} launches {token}, which no committed decision asked for"),
            );
            return Err(Error::Permanent {
                service: "ec2",
                message: "launch without a decision".into(),
            });
        };
        // A decision carried out again is first looked for by its token; only one this
        // invocation committed itself a moment ago can skip that.
        let (looked_up, fresh) = self
            .invocation()
            .map(|inv| (inv.looked_up.remove(&token), inv.decided.contains(&token)))
            .unwrap_or_default();
        // A later offering of the same call: the lookup was made before its first.
        if !looked_up && !fresh && !next_offering {
            self.violate(
                "relaunch",
                format!(
                    "{who} launches {token} again without looking for the instances it may \
                     have launched already"
                ),
            );
        }
        if !looked_up && !next_offering {
            self.check_reserve(&format!("launch {token}"));
        }
        let image = ImageId::parse(&r.image).ok();
        let (out, created) = self.ec2.run_instances(r, self.now, &mut self.rng);
        if !created.is_empty() {
            self.custody.on_launched(&created);
            self.stats.instances_launched += created.len() as u64;
            let first = self
                .books
                .meta()
                .spec
                .launch_types()
                .into_iter()
                .next()
                .flatten();
            if r.instance_type.is_some() && r.instance_type != first {
                self.stats.fallback_launches += created.len() as u64;
            }
            if let Some(problem) = image
                .as_ref()
                .and_then(|i| self.checker.check_launch(i, decision.carried_out_at))
            {
                self.violate("quarantine", format!("{token}: {problem}"));
            }
            let tag = r.tags.get(TAG_DEFINITION).map(String::as_str);
            if let Some(i) = &image {
                self.checker.on_launched(i, tag, self.now);
            }
            if let Some(problem) = self.checker.check_launch_definition(&token, &decision, tag) {
                self.violate("definition", problem);
            }
        }
        match &out {
            Ok(ran) => {
                let ids: Vec<&str> = ran.instances.iter().map(|i| i.id.as_str()).collect();
                self.note(format!(
                    "{who} RunInstances {token} x{}: {}",
                    r.count,
                    ids.join(" ")
                ));
            }
            Err(e) => {
                self.stats.launch_failures += 1;
                self.note(format!("{who} RunInstances {token} fails: {e}"));
            }
        }
        out
    }

    /// CreateTags: phoenix tags only what it launched or adopted (`Custody::check_tag`).
    pub fn ec2_create_tags(
        &mut self,
        ids: &[String],
        tags: &BTreeMap<String, String>,
    ) -> Result<()> {
        let who = self.who();
        for id in ids.iter().filter_map(|i| InstanceId::parse(i).ok()) {
            if let Some(problem) = self.custody.check_tag(&id) {
                self.violate("foreign", format!("{who} {problem}"));
            }
        }
        let tagged = self.change("ec2", "CreateTags", |w| {
            w.ec2.create_tags(ids, tags, w.now, &mut w.rng)
        })?;
        let ids: Vec<&str> = tagged.iter().map(InstanceId::as_str).collect();
        self.note(format!("{who} tags {}", ids.join(" ")));
        Ok(())
    }

    /// DeleteTags.
    pub fn ec2_delete_tags(&mut self, ids: &[String], keys: &[String]) -> Result<()> {
        let who = self.who();
        let untagged = self.change("ec2", "DeleteTags", |w| {
            w.ec2.delete_tags(ids, keys, w.now, &mut w.rng)
        })?;
        let ids: Vec<&str> = untagged.iter().map(InstanceId::as_str).collect();
        self.note(format!("{who} untags {}", ids.join(" ")));
        Ok(())
    }

    pub fn ec2_terminate(&mut self, ids: &[String]) -> Result<Option<String>> {
        let who = self.who();
        // What the invocation's re-validation saw of each id: carrying the fleet's tag, not, or
        // not looked at.
        let seen: Vec<Option<bool>> = match self.invocation() {
            Some(inv) => ids
                .iter()
                .map(|id| inv.validated.get(id).copied())
                .collect(),
            None => vec![None; ids.len()],
        };
        let validated_left = self.invocation().and_then(|inv| inv.validated_left);
        match validated_left {
            Some(left) if seen.iter().all(Option::is_some) => {
                self.check_reserve_left("a termination", left)
            }
            _ => self.check_reserve("a termination"),
        }
        let ids_parsed: Vec<InstanceId> = ids
            .iter()
            .filter_map(|i| InstanceId::parse(i).ok())
            .collect();
        for (id, seen) in ids_parsed.iter().zip(&seen) {
            let Some((alive, tagged)) = self.ec2.vms.get(id).map(|vm| (vm.alive(), vm.tagged()))
            else {
                continue;
            };
            // Terminating what the re-validation saw without the fleet's tag, or did not look
            // at, is phoenix's mistake; a tag removed between the two calls is a race IAM
            // settles (the call fails, as below).
            if alive && !tagged && *seen != Some(true) {
                self.violate(
                    "foreign",
                    format!("{who} terminates {id}, which no longer carries the fleet's tag"),
                );
            }
            if alive && tagged {
                if let Some(problem) = Checker::check_terminate(&self.books, &self.ec2, id) {
                    self.violate("ordering", problem);
                }
                let serving =
                    self.traffic
                        .check_terminate(&self.books, &self.ec2, &self.elb, id, self.now);
                if let Some((kind, problem)) = serving {
                    self.violate(kind, format!("{who}: {problem}"));
                }
            }
        }
        let excused: Vec<bool> = ids_parsed
            .iter()
            .map(|id| Checker::excused(&self.ec2, &self.books, id))
            .collect();
        // A 5xx: EC2 may or may not have acted; the caller cannot tell.
        let unanswered = self.chaos_fault(self.service_faults.ec2_5xx);
        let out = if unanswered && self.rng.chance(500) {
            Err(internal_error("TerminateInstances"))
        } else {
            self.ec2.terminate_instances(ids, self.now, &mut self.rng)
        };
        let terminated = match out {
            Ok(terminated) => terminated,
            Err(e) => {
                self.note(format!("{who} TerminateInstances fails: {e}"));
                if let Some(inv) = self.invocation() {
                    inv.terminate_failed = true;
                }
                return Err(e);
            }
        };
        self.stats.terminations += terminated.len() as u64;
        for (id, excused) in ids_parsed.iter().zip(excused) {
            if terminated.contains(id) {
                self.checker.on_gone(id, excused);
            }
        }
        for id in &terminated {
            if let Some(group) = self.autoscaling.group_of(id) {
                let problem =
                    format!("{who} terminates {id} while it is in Auto Scaling group {group}");
                self.violate("group", problem);
            }
            if let Some((kind, problem)) = self.custody.check_terminate(id) {
                self.violate(kind, format!("{who} {problem}"));
            }
        }
        let gone: Vec<&str> = terminated.iter().map(InstanceId::as_str).collect();
        self.note(format!("{who} terminates {}", gone.join(" ")));
        if unanswered {
            self.note(format!("{who} loses TerminateInstances' answer"));
            if let Some(inv) = self.invocation() {
                inv.terminate_failed = true;
            }
            return Err(internal_error("TerminateInstances"));
        }
        Ok(None)
    }
}
