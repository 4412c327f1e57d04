//! What an instance is made of besides its image: its launch definition — instance type, launch
//! template (and the version it resolved to), security groups, instance profile, key, user data,
//! tags. Each instance records the fingerprint of the definition it was launched from; when the
//! fleet file changes any of these, instances whose fingerprint differs have *drifted* and are
//! rolled like a new image rolls them (Karpenter's drift, Auto Scaling's instance refresh).
//!
//! What holds: the fingerprint depends on the definition alone, never on the order of lists or on
//! fields that do not change the instance (the policy, capacity, selectors, windows); subnets are
//! not in it — an instance drifts on subnets only when the subnet it runs in is no longer the
//! fleet's, so adding a subnet rolls nothing.

use super::spec::{FleetSpec, LaunchTemplateRef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<LaunchTemplateRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

impl Definition {
    /// The definition a spec launches from; a launch template named by `$Latest`, `$Default` or
    /// no version at all counts as the version it resolved to (`resolved`), when known.
    pub fn of(spec: &FleetSpec, resolved: Option<&str>) -> Definition {
        let mut security_groups = spec.security_groups.clone();
        security_groups.sort();
        security_groups.dedup();
        let launch_template = spec.launch_template.clone().map(|mut t| {
            if t.is_floating() {
                if let Some(v) = resolved {
                    t.version = Some(v.to_string());
                }
            }
            t
        });
        Definition {
            instance_type: spec.instance_type.clone(),
            launch_template,
            security_groups,
            instance_profile: spec.instance_profile.clone(),
            key_name: spec.key_name.clone(),
            user_data: spec.user_data.clone(),
            tags: spec.tags.clone(),
        }
    }

    /// A short, stable fingerprint (FNV-1a over the canonical JSON: maps and sorted lists).
    pub fn fingerprint(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{hash:016x}")
    }

    /// The fields that differ from `other`, by their fleet-file names.
    pub fn differences(&self, other: &Definition) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.instance_type != other.instance_type {
            out.push("instance_type");
        }
        if self.launch_template != other.launch_template {
            out.push("launch_template");
        }
        if self.security_groups != other.security_groups {
            out.push("security_groups");
        }
        if self.instance_profile != other.instance_profile {
            out.push("instance_profile");
        }
        if self.key_name != other.key_name {
            out.push("key_name");
        }
        if self.user_data != other.user_data {
            out.push("user_data");
        }
        if self.tags != other.tags {
            out.push("tags");
        }
        out
    }

    /// Puts this definition's fields back into a spec (a rollback to the previous definition).
    /// A launch template goes back to the version it had resolved to.
    pub fn restore_into(&self, spec: &mut FleetSpec) {
        spec.instance_type = self.instance_type.clone();
        spec.launch_template = self.launch_template.clone();
        spec.security_groups = self.security_groups.clone();
        spec.instance_profile = self.instance_profile.clone();
        spec.key_name = self.key_name.clone();
        spec.user_data = self.user_data.clone();
        spec.tags = self.tags.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> FleetSpec {
        FleetSpec::from_yaml(&format!(
            "name: web\nimage: ami-0000000a\ncapacity: 2\ninstance_type: t3.micro\n{extra}"
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn what_changes_the_instance_changes_the_fingerprint_and_nothing_else_does() {
        let base = Definition::of(&spec(""), None);
        let same = [
            "policy: {max_surge: 3}\n",
            "subnets: [subnet-a, subnet-b]\n",
        ];
        for extra in same {
            let s = spec(extra);
            assert_eq!(
                Definition::of(&s, None).fingerprint(),
                base.fingerprint(),
                "{extra}"
            );
        }
        let a = Definition::of(&spec("security_groups: [sg-1, sg-2]\n"), None);
        let b = Definition::of(&spec("security_groups: [sg-2, sg-1]\n"), None);
        assert_eq!(a.fingerprint(), b.fingerprint(), "order does not matter");
        let changed = Definition::of(&spec("user_data: \"#!/bin/sh\"\ntags: {team: x}\n"), None);
        assert_ne!(changed.fingerprint(), base.fingerprint());
        assert_eq!(changed.differences(&base), ["user_data", "tags"]);
    }

    #[test]
    fn a_floating_template_version_counts_as_what_it_resolved_to() {
        let s = spec("launch_template: {name: web}\n");
        let v3 = Definition::of(&s, Some("3"));
        let v4 = Definition::of(&s, Some("4"));
        assert_ne!(v3.fingerprint(), v4.fingerprint());
        assert_eq!(v4.differences(&v3), ["launch_template"]);
        let pinned = spec("launch_template: {name: web, version: \"3\"}\n");
        assert_eq!(
            Definition::of(&pinned, Some("9")).fingerprint(),
            v3.fingerprint()
        );
    }
}
