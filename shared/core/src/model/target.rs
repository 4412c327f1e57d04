//! Which instances match what the fleet should be (`Target`): the spec's image, the fingerprint
//! of its launch definition, one of its subnets and (with `instance_types`) one of its types. An instance that does not match has drifted
//! and is rolled; `Drift` says why, per instance, for `status` and the history.
//!
//! What holds: an instance recorded without a definition (before phoenix kept one) counts as the
//! fleet's `legacy_definition`, or as matching while the fleet has none; an instance drifts on
//! subnets only when the subnet it runs in is no longer listed (adding a subnet rolls nothing).

use super::fleet::Fleet;
use super::instance::Instance;
use crate::ids::ImageId;
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::fmt;

/// The spec an instance must match, computed once per pass and asked per instance.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    fleet: &'a Fleet,
    pub image: &'a ImageId,
    /// The fingerprint of the fleet's launch definition.
    pub definition: String,
    /// With `instance_types`, the fingerprints of the fleet's known definitions that differ from
    /// its own in the single `instance_type` alone: an instance launched from one before the list
    /// replaced the single type matches while its type is in the list.
    same_but_type: Vec<String>,
}

/// One way an instance differs from its fleet's spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    Image {
        is: ImageId,
        spec: ImageId,
    },
    /// Launched from another definition: the fields that differ, when phoenix still knows the
    /// one it was launched from.
    Definition {
        fields: Vec<String>,
    },
    Subnet {
        is: String,
    },
    InstanceType {
        is: String,
    },
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Image { is, spec } => write!(f, "image {is}, spec says {spec}"),
            Drift::Definition { fields } if fields.is_empty() => {
                write!(f, "launched from an earlier definition")
            }
            Drift::Definition { fields } => write!(f, "{} changed", fields.join(", ")),
            Drift::Subnet { is } => write!(f, "subnet {is} is no longer the fleet's"),
            Drift::InstanceType { is } => {
                write!(f, "instance type {is} is not in the fleet's instance_types")
            }
        }
    }
}

/// As JSON: `{"kind": "image"|"definition"|"subnet", "reason": "<as displayed>", ...}` with the
/// kind's fields (`is` and `spec`; `fields`; `is`).
impl Serialize for Drift {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match self {
            Drift::Image { is, spec } => {
                map.serialize_entry("kind", "image")?;
                map.serialize_entry("is", is)?;
                map.serialize_entry("spec", spec)?;
            }
            Drift::Definition { fields } => {
                map.serialize_entry("kind", "definition")?;
                map.serialize_entry("fields", fields)?;
            }
            Drift::Subnet { is } => {
                map.serialize_entry("kind", "subnet")?;
                map.serialize_entry("is", is)?;
            }
            Drift::InstanceType { is } => {
                map.serialize_entry("kind", "instance_type")?;
                map.serialize_entry("is", is)?;
            }
        }
        map.serialize_entry("reason", &self.to_string())?;
        map.end()
    }
}

impl<'a> Target<'a> {
    pub fn of(fleet: &'a Fleet) -> Self {
        let definition = fleet.definition().fingerprint();
        let same_but_type = if fleet.spec.instance_types.is_empty() {
            Vec::new()
        } else {
            fleet
                .definitions
                .iter()
                .filter(|(f, d)| {
                    **f != definition && {
                        let mut d = (*d).clone();
                        d.instance_type = None;
                        d.fingerprint() == definition
                    }
                })
                .map(|(f, _)| f.clone())
                .collect()
        };
        Target {
            fleet,
            image: &fleet.spec.image,
            definition,
            same_but_type,
        }
    }

    /// The definition an instance counts as having been launched from (none: the fleet's).
    fn definition_of<'i>(&'i self, i: &'i Instance) -> Option<&'i str> {
        i.definition
            .as_deref()
            .or(self.fleet.legacy_definition.as_deref())
    }

    fn definition_matches(&self, i: &Instance) -> bool {
        self.definition_of(i)
            .is_none_or(|d| d == self.definition || self.same_but_type.iter().any(|f| f == d))
    }

    fn type_matches(&self, i: &Instance) -> bool {
        self.fleet.spec.allows_type(i.instance_type.as_deref())
    }

    fn subnet_matches(&self, i: &Instance) -> bool {
        let subnets = &self.fleet.spec.subnets;
        match &i.subnet {
            Some(s) => subnets.is_empty() || subnets.contains(s),
            None => true,
        }
    }

    /// The instance runs the spec's image, launched from its definition, in one of its subnets.
    pub fn matches(&self, i: &Instance) -> bool {
        i.image == *self.image
            && self.definition_matches(i)
            && self.subnet_matches(i)
            && self.type_matches(i)
    }

    /// Why the instance does not match the spec (empty: it does).
    pub fn drift(&self, i: &Instance) -> Vec<Drift> {
        let mut out = Vec::new();
        if i.image != *self.image {
            out.push(Drift::Image {
                is: i.image.clone(),
                spec: self.image.clone(),
            });
        }
        if !self.definition_matches(i) {
            let fields = self
                .definition_of(i)
                .and_then(|d| self.fleet.definitions.get(d))
                .zip(self.fleet.definitions.get(&self.definition))
                .map(|(was, now)| now.differences(was))
                .unwrap_or_default();
            out.push(Drift::Definition {
                fields: fields.into_iter().map(String::from).collect(),
            });
        }
        if !self.subnet_matches(i) {
            out.push(Drift::Subnet {
                is: i.subnet.clone().unwrap_or_default(),
            });
        }
        if !self.type_matches(i) {
            out.push(Drift::InstanceType {
                is: i.instance_type.clone().unwrap_or_default(),
            });
        }
        out
    }
}
