//! Whose each instance is: phoenix's because it launched it or adopted it, given back by a
//! release, or never phoenix's (launched outside it and not adopted, or taken out of the fleet by
//! an operator). The invariants of that, checked at the calls and at the end of a run:
//! - phoenix tags (CreateTags) and terminates only instances it launched or adopted;
//! - it never terminates an instance after giving it back;
//! - by the end, every instance it adopted carries the fleet's tag, unless it is gone, given back
//!   or taken out by an operator; and every instance it gave back carries none of phoenix's tags.
//!
//! What is known here comes from the world's calls (RunInstances' new instances) and the commits'
//! changes (`Adopted`, `Released`), never from the books' own say-so.

use crate::books::Books;
use crate::ec2::Ec2;
use phoenix_core::events::Change;
use phoenix_core::InstanceId;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
pub struct Custody {
    /// Instances RunInstances created.
    launched: BTreeSet<InstanceId>,
    /// Each adoption committed (its token) and the instances it took.
    adoptions: BTreeMap<String, BTreeSet<InstanceId>>,
    /// Instances given back, with the version that first recorded it.
    released: BTreeMap<InstanceId, u64>,
    /// Instances an operator took out of the fleet by removing its tag: theirs from then on.
    taken_out: BTreeSet<InstanceId>,
}

impl Custody {
    /// RunInstances created these.
    pub fn on_launched(&mut self, ids: &[InstanceId]) {
        self.launched.extend(ids.iter().cloned());
    }

    /// An operator removed this instance's fleet tag.
    pub fn on_taken_out(&mut self, id: &InstanceId) {
        self.taken_out.insert(id.clone());
    }

    /// After every successful commit (of the version `version`), with the changes it recorded.
    pub fn on_commit(&mut self, changes: &[Change], version: u64) {
        for c in changes {
            match c {
                Change::Adopted {
                    token, instances, ..
                } => self
                    .adoptions
                    .entry(token.clone())
                    .or_default()
                    .extend(instances.iter().cloned()),
                // A pass that finds a released instance still tagged records it again: the first
                // commit is the release.
                Change::Released { instances } => {
                    for id in instances {
                        self.released.entry(id.clone()).or_insert(version);
                    }
                }
                _ => {}
            }
        }
    }

    /// An operator took it out of the fleet.
    pub fn taken_out(&self, id: &InstanceId) -> bool {
        self.taken_out.contains(id)
    }

    fn adopted(&self, id: &InstanceId) -> bool {
        self.adoptions.values().any(|ids| ids.contains(id))
    }

    /// The instances the adoption of `token` took, if `token` is an adoption's.
    pub fn adopted_under(&self, token: &str) -> Option<&BTreeSet<InstanceId>> {
        self.adoptions.get(token)
    }

    /// How many adoptions and releases there were (for the run's counters).
    pub fn counts(&self) -> (u64, u64) {
        let adopted = self.adoptions.values().map(BTreeSet::len).sum::<usize>();
        (adopted as u64, self.released.len() as u64)
    }

    /// Before CreateTags: phoenix tags only what it launched or adopted.
    pub fn check_tag(&self, id: &InstanceId) -> Option<String> {
        (!self.launched.contains(id) && !self.adopted(id))
            .then(|| format!("tags {id}, which phoenix neither launched nor adopted"))
    }

    /// When TerminateInstances takes an instance: phoenix's, and not given back.
    pub fn check_terminate(&self, id: &InstanceId) -> Option<(&'static str, String)> {
        if let Some(version) = self.released.get(id) {
            return Some((
                "release",
                format!("terminates {id}, which the fleet gave back at version {version}"),
            ));
        }
        (!self.launched.contains(id) && !self.adopted(id)).then(|| {
            (
                "foreign",
                format!("terminates {id}, which phoenix neither launched nor adopted"),
            )
        })
    }

    /// At the end: what is left of adoptions and releases not settled in EC2 — an adopted
    /// instance alive without the fleet's tag (neither given back nor taken out), a released one
    /// still carrying phoenix's tags — with the kind of violation it is if it lasts. `None` once
    /// settled.
    pub fn unsettled(&self, books: &Books, ec2: &Ec2) -> Option<(&'static str, String)> {
        for id in self.released.keys() {
            let Some(vm) = ec2.vms.get(id).filter(|vm| vm.alive()) else {
                continue;
            };
            let left: Vec<&str> = vm.phoenix_tags().collect();
            if !left.is_empty() {
                return Some((
                    "release",
                    format!("{id}, given back, still carries {}", left.join(", ")),
                ));
            }
        }
        for (token, ids) in &self.adoptions {
            for id in ids {
                if self.released.contains_key(id) || self.taken_out.contains(id) {
                    continue;
                }
                let Some(vm) = ec2.vms.get(id).filter(|vm| vm.alive()) else {
                    continue;
                };
                if !vm.tagged() {
                    let record = match books.instance(id) {
                        Some(i) if i.is_live() => "live",
                        Some(_) => "buried",
                        None => "no",
                    };
                    return Some((
                        "adoption",
                        format!(
                            "{id}, adopted by {token}, runs without the fleet's tag ({record} \
                             record)"
                        ),
                    ));
                }
            }
        }
        None
    }
}
