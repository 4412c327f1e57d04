//! The invariants of serving traffic — target groups and lifecycle hooks — with the bookkeeping
//! they need: the hook rounds phoenix began (as committed), when each round's notification first
//! reached the bus, and the answers delivered to phoenix. Checked where the call takes effect
//! (TerminateInstances, RegisterTargets, a commit) and at convergence.
//!
//! - *drain*: no TerminateInstances of an instance EC2 runs while a target group lists it
//!   (registered, or deregistered and still within the group's deregistration delay); and no
//!   drain ended because "no group lists it" while one does — a group deleted for now included,
//!   as it listed the instance when phoenix last could read it (phoenix cannot know a group it
//!   cannot read lists nothing). (AWS taking an instance back at a known time, a Spot
//!   interruption, would be exempt; the simulator does not model it.)
//! - *hook*: with a terminating hook, no running instance phoenix recorded is terminated before
//!   its `InstanceTerminating` reached the bus and then was answered or timed out; with a
//!   launching hook, no instance phoenix launched is registered with a target group, or counted
//!   healthy in a committed fleet record, before its launching hook ended CONTINUE (answered so,
//!   or timed out with CONTINUE as its default).
//! - *serving*: with target groups, no instance that stays is counted healthy in a committed
//!   fleet record before every group reported it healthy since it was registered; at
//!   convergence, every live running instance counted healthy is registered with every group,
//!   and no group has registered an instance of the fleet that is not one of those; nothing is
//!   left draining then (no instance is on its way out: `converged`).
//!
//! Instances phoenix never recorded (orphans, extras of a launch made twice) are terminated at
//! once by design: they belong to no decision, were never registered, and no hook was begun for
//! them; the hook check exempts them (the drain check needs no exemption: nothing registers them).

use crate::books::Books;
use crate::ec2::Ec2;
use crate::elb::Elb;
use phoenix_core::events::Change;
use phoenix_core::model::{group_name, Health, HookKind, HookResult, Lifecycle, Timestamp};
use phoenix_core::InstanceId;
use std::collections::BTreeMap;

/// One lifecycle hook round phoenix began for an instance.
#[derive(Debug, Clone)]
struct Round {
    /// The instant of the step that began it.
    started: Timestamp,
    /// `timeout_at`, as phoenix recorded it (what its notification carries).
    until: Timestamp,
    /// When its notification first reached the bus.
    published: Option<Timestamp>,
}

#[derive(Debug, Default)]
pub struct Traffic {
    /// By instance and hook: the rounds begun, oldest first.
    rounds: BTreeMap<(InstanceId, HookKind), Vec<Round>>,
    /// By instance and hook: the answers delivered to phoenix (an invocation started with one),
    /// when and with what.
    answers: BTreeMap<(InstanceId, HookKind), Vec<(Timestamp, HookResult)>>,
    /// When the last pass that read the target groups and committed began reading them.
    groups_read: Option<Timestamp>,
}

fn since(a: Timestamp, b: Timestamp) -> i64 {
    (a - b).num_seconds()
}

impl Traffic {
    /// A commit went through, with these changes, planned at `at`.
    pub fn on_commit(&mut self, changes: &[Change], at: Timestamp) {
        for c in changes {
            if let Change::LifecycleHookStarted {
                instance,
                hook,
                until,
            } = c
            {
                self.rounds
                    .entry((instance.clone(), *hook))
                    .or_default()
                    .push(Round {
                        started: at,
                        until: *until,
                        published: None,
                    });
            }
        }
    }

    /// A pass that began reading the target groups at `at` committed.
    pub fn on_groups_read(&mut self, at: Timestamp) {
        self.groups_read = self.groups_read.max(Some(at));
    }

    /// A hook's notification reached the bus (the first time counts).
    pub fn on_published(
        &mut self,
        instance: &InstanceId,
        hook: HookKind,
        until: Timestamp,
        now: Timestamp,
    ) {
        let rounds = self.rounds.entry((instance.clone(), hook)).or_default();
        if let Some(r) = rounds
            .iter_mut()
            .rev()
            .find(|r| r.until == until && r.published.is_none())
        {
            r.published = Some(now);
        }
    }

    /// An answer to a hook was delivered to phoenix.
    pub fn on_delivered(
        &mut self,
        instance: &InstanceId,
        hook: HookKind,
        result: HookResult,
        now: Timestamp,
    ) {
        self.answers
            .entry((instance.clone(), hook))
            .or_default()
            .push((now, result));
    }

    fn answered_since(&self, id: &InstanceId, hook: HookKind, t: Timestamp) -> bool {
        self.answers
            .get(&(id.clone(), hook))
            .is_some_and(|a| a.iter().any(|(at, _)| *at >= t))
    }

    /// Whether the launching hook of the recorded instance `id` ended CONTINUE by `at`: `None`
    /// if so (or the fleet has no launching hook, or phoenix adopted the instance: a launching
    /// hook is for what phoenix launches, and an adopted one served before it was taken), else
    /// why not.
    fn launch_hook_open(&self, books: &Books, id: &InstanceId, at: Timestamp) -> Option<String> {
        let h = books.meta().spec.hooks.launching?;
        if books.instance(id).is_some_and(|i| i.adopted.is_some()) {
            return None;
        }
        let Some(round) = self
            .rounds
            .get(&(id.clone(), HookKind::Launching))
            .and_then(|r| r.first())
        else {
            return Some("no launching hook was begun for it".into());
        };
        let continued = self
            .answers
            .get(&(id.clone(), HookKind::Launching))
            .is_some_and(|a| {
                a.iter()
                    .any(|(t, r)| *r == HookResult::Continue && *t >= round.started)
            });
        let timed_out = at >= round.started + h.timeout.duration();
        let timed_out_continue = timed_out && h.default_result == HookResult::Continue;
        (!continued && !timed_out_continue).then(|| {
            format!(
                "its launching hook, begun {}s before (timeout {}s, default {}), was not answered \
                 CONTINUE{}",
                since(at, round.started),
                h.timeout.0,
                h.default_result.as_str(),
                if timed_out {
                    " and timed out to ABANDON"
                } else {
                    " and has not timed out"
                }
            )
        })
    }

    /// Before TerminateInstances: `drain`, then `hook`, for one instance of the call.
    pub fn check_terminate(
        &self,
        books: &Books,
        ec2: &Ec2,
        elb: &Elb,
        id: &InstanceId,
        now: Timestamp,
    ) -> Option<(&'static str, String)> {
        // Only an instance that runs serves, and only one that runs is held by the hook (a
        // stopped one is repaired as it is).
        let vm = ec2.vms.get(id)?;
        if vm.state != Lifecycle::Running {
            return None;
        }
        if let Some((arn, until)) = elb.listing(id.as_str(), now, false).into_iter().next() {
            let how = match until {
                Some(t) => format!("draining for {}s more", since(t, now)),
                None => "registered".into(),
            };
            return Some((
                "drain",
                format!(
                    "{id} is terminated, running, while target group {} lists it ({how})",
                    group_name(&arn)
                ),
            ));
        }
        let h = books.meta().spec.hooks.terminating?;
        // (Exempt: instances phoenix never recorded; see the module's comment. And instances
        // that never came into service — their launching hook did not end CONTINUE: ABANDON, or
        // still waiting when they were to go — which skip the terminating hook.)
        if !books.instance(id)?.launch_hook_passed() {
            return None;
        }
        let rounds = self
            .rounds
            .get(&(id.clone(), HookKind::Terminating))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let done = rounds.iter().any(|r| {
            r.published.is_some_and(|p| {
                self.answered_since(id, HookKind::Terminating, p)
                    || now >= r.started + h.timeout.duration()
            })
        });
        if done {
            return None;
        }
        let why = match rounds.last() {
            None => "no terminating hook was begun for it".to_string(),
            Some(r) => match r.published {
                None => format!(
                    "its InstanceTerminating (begun {}s before) never reached the bus",
                    since(now, r.started)
                ),
                Some(p) => format!(
                    "its InstanceTerminating, published {}s before, was not answered and has not \
                     timed out ({}s)",
                    since(now, p),
                    h.timeout.0
                ),
            },
        };
        Some(("hook", format!("{id} is terminated, running, while {why}")))
    }

    /// Before RegisterTargets of one instance: its launching hook ended CONTINUE.
    pub fn check_register(
        &self,
        books: &Books,
        id: &InstanceId,
        now: Timestamp,
    ) -> Option<(&'static str, String)> {
        let why = self.launch_hook_open(books, id, now)?;
        Some(("hook", format!("{id} is registered while {why}")))
    }

    /// After a commit planned at `at` (the books as committed, the world at `now`): every
    /// instance it counted healthy passed its launching hook (`hook`) and, if it stays, every
    /// target group reported it healthy (`serving`); and every drain it ended because no group
    /// lists the instance any more ended with no group listing it (`drain`).
    pub fn check_commit(
        &self,
        books: &Books,
        ec2: &Ec2,
        elb: &Elb,
        changes: &[Change],
        at: Timestamp,
        now: Timestamp,
    ) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let version = books.version();
        let spec = &books.meta().spec;
        for c in changes {
            match c {
                Change::HealthChanged {
                    instance,
                    health: Health::Healthy,
                } => {
                    if let Some(why) = self.launch_hook_open(books, instance, at) {
                        out.push((
                            "hook",
                            format!("v{version} counts {instance} healthy while {why}"),
                        ));
                    }
                    // A leaving instance's health counts for nothing (the planner keeps only
                    // those that stay), and its registrations may be drained and gone; one EC2
                    // no longer runs serves nowhere, and AWS deregistered it if the world
                    // terminated it (what the world took is the availability check's).
                    let stays = books
                        .instance(instance)
                        .is_some_and(|i| i.disposal.is_none());
                    let runs = ec2
                        .vms
                        .get(instance)
                        .is_some_and(|vm| vm.state == Lifecycle::Running);
                    if !stays || !runs {
                        continue;
                    }
                    for g in spec.target_groups() {
                        // A group that does not exist reports nothing; one made again since the
                        // last committed pass began reading the groups (or at that instant) has
                        // not been seen back by phoenix (this commit's pass included).
                        let Some(group) = elb.groups.get(&g.arn) else {
                            continue;
                        };
                        let unseen = group
                            .restored_at
                            .is_some_and(|t| self.groups_read.is_none_or(|read| read <= t));
                        if unseen {
                            continue;
                        }
                        let why = match group.targets.get(instance.as_str()) {
                            None => "does not list it",
                            Some(r) if !r.reported_healthy => {
                                "has not reported it healthy since it was registered"
                            }
                            Some(_) => continue,
                        };
                        out.push((
                            "serving",
                            format!(
                                "v{version} counts {instance} healthy while target group {} {why}",
                                g.name()
                            ),
                        ));
                    }
                }
                Change::Drained { instance, how } if how.starts_with("no target group lists") => {
                    // What a group that exists lists as registered was registered after the pass
                    // read it (a registration decided before the termination, carried out late):
                    // the next pass deregisters it again, and TerminateInstances is checked.
                    let early = elb
                        .listing(instance.as_str(), now, true)
                        .into_iter()
                        .find(|(arn, until)| until.is_some() || elb.deleted.contains_key(arn));
                    if let Some((arn, until)) = early {
                        let deleted = if elb.deleted.contains_key(&arn) {
                            " (deleted for now)"
                        } else {
                            ""
                        };
                        out.push((
                            "drain",
                            format!(
                                "v{version} ends {instance}'s drain as no target group lists it, \
                                 but {}{deleted} does ({})",
                                group_name(&arn),
                                match until {
                                    Some(t) => format!("draining for {}s more", since(t, now)),
                                    None => "registered".into(),
                                }
                            ),
                        ));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// At convergence: every live running instance the books count healthy is registered with
    /// every group that exists, and every instance a group has registered is one of those (what
    /// drains ends by itself). `None` when so, else what is not.
    pub fn check_serving(books: &Books, ec2: &Ec2, elb: &Elb) -> Option<String> {
        let spec = &books.meta().spec;
        let groups: Vec<_> = spec
            .target_groups()
            .iter()
            .filter_map(|g| elb.groups.get(&g.arn))
            .collect();
        for i in books.live().filter(|i| i.is_healthy()) {
            if !ec2
                .vms
                .get(&i.id)
                .is_some_and(|vm| vm.state == Lifecycle::Running)
            {
                continue;
            }
            for g in &groups {
                let registered = g
                    .targets
                    .get(i.id.as_str())
                    .is_some_and(|r| r.draining_until.is_none());
                if !registered {
                    return Some(format!(
                        "{} counts healthy but is not registered with target group {}",
                        i.id,
                        group_name(&g.arn)
                    ));
                }
            }
        }
        for g in &groups {
            let registered = g.targets.iter().filter(|(_, r)| r.draining_until.is_none());
            for (id, _) in registered {
                let Ok(id) = InstanceId::parse(id) else {
                    continue;
                };
                // An instance an operator took out of the fleet (untagged) is theirs now, with
                // whatever serves it.
                if ec2.vms.get(&id).is_some_and(|vm| !vm.tagged()) {
                    continue;
                }
                let serves = books
                    .instance(&id)
                    .is_some_and(|i| i.is_live() && i.is_healthy() && i.disposal.is_none());
                if !serves {
                    return Some(format!(
                        "target group {} has {id} registered, which is not a healthy instance \
                         the fleet keeps",
                        group_name(&g.arn)
                    ));
                }
            }
        }
        None
    }
}
