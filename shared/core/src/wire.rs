//! The details of the events phoenix publishes, as types: what subscribers (chat, paging) may
//! rely on. `events::notifications` writes them (each detail with its `notification_id`, the
//! same in every copy published); a test here checks that every detail it writes is exactly one
//! of these types, and that `schemas/` holds the JSON Schema generated from them and
//! from the details phoenix accepts (`events`), with an example payload of each under
//! `tests/fixtures/phoenix/` that the schema admits.
//!
//! Regenerate the schemas after changing a type: `PHOENIX_UPDATE_SCHEMAS=1 cargo test --workspace
//! schemas_match`.

use crate::model::Timestamp;
use serde::{Deserialize, Serialize};

/// `RolloutStarted`: a fleet started moving to a new image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RolloutStarted {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub rollout: u64,
    /// The image it moves from (none for a fleet without one).
    pub from: Option<String>,
    /// The image it moves to: the same as `from` when only the launch definition changes.
    pub to: String,
    /// The launch definition's fields it changes (`instance_type`, `launch_template`, ...);
    /// absent when only the image changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

/// `WaveStarted`: a rollout launched a wave of new-image instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct WaveStarted {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub rollout: u64,
    pub wave: u32,
    pub launches: u32,
}

/// `WaveHealthy`: every instance of a wave is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct WaveHealthy {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub rollout: u64,
    pub wave: u32,
}

/// `CheckpointReached`: a rollout paused at a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CheckpointReached {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub rollout: u64,
    pub percent: u32,
    /// When it resumes by itself; none: on `phoenix rollout resume`.
    pub until: Option<Timestamp>,
}

/// `RolloutSucceeded`: every instance runs the new image, healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RolloutSucceeded {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub rollout: u64,
}

/// `RolloutRollingBack`: the new image failed its health gate; going back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RolloutRollingBack {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub rollout: u64,
    pub reason: String,
}

/// `RolloutStalled`: the rollout has not moved on within its progress deadline, for a reason
/// that is not the image's; it waits, naming what it waits on. Nothing is rolled back or
/// quarantined: the operator resumes (after fixing the cause), aborts or undoes it, or reports
/// the instances it waits on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RolloutStalled {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub rollout: u64,
    pub reason: String,
    pub waiting_on: Vec<String>,
}

/// `RolloutRolledBack`: every instance is back on the previous image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RolloutRolledBack {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub rollout: u64,
}

/// `InstanceReplaced`: an instance was replaced by new ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct InstanceReplaced {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub instance: String,
    pub by: Vec<String>,
    pub reason: String,
}

/// `ReplacementHalted`: the mass-failure breaker stopped repairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ReplacementHalted {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub unhealthy: u32,
    pub capacity: u32,
    /// What the unhealthy instances share, if something stands out.
    pub shared_attribute: Option<String>,
    /// The figures behind it: which instances, over what window, against what threshold.
    pub reason: String,
}

/// `ImageQuarantined`: an image failed a rollout and is refused for the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ImageQuarantined {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub image: String,
    pub reason: String,
}

/// `ImageRejected`: the fleet's admission gate refused an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ImageRejected {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub image: String,
    pub reason: String,
}

/// `InstanceLaunching`: a new instance waits on the fleet's launching hook. Answer with
/// `LifecycleActionCompleted` (`phoenix lifecycle complete`) before `timeout_at`, or the hook's
/// default result applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct InstanceLaunching {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub instance: String,
    /// `launching`.
    pub hook: String,
    pub timeout_at: Timestamp,
}

/// `InstanceTerminating`: a drained instance waits on the fleet's terminating hook before it is
/// terminated. Answer with `LifecycleActionCompleted` before `timeout_at`, or it is terminated
/// then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct InstanceTerminating {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub instance: String,
    /// `terminating`.
    pub hook: String,
    pub timeout_at: Timestamp,
}

/// `TargetGroupMissing`: a target group the fleet names does not exist. phoenix takes away no
/// instance that may serve until it is back or removed from the fleet file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TargetGroupMissing {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    pub target_group: String,
    pub reason: String,
}

/// `CapacityUnavailable`: EC2 had no capacity for any offering (instance type in a zone) a launch
/// could try. Nothing was launched; the fleet waits (a rollout neither rolls back nor quarantines
/// for it) and tries again from `retry_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CapacityUnavailable {
    pub fleet: String,
    /// The same in every copy of this notification (phoenix publishes at least once): drop a
    /// repeat by it.
    pub notification_id: String,
    /// The offerings tried, in order, as `<type> in <zone>`.
    pub tried: Vec<String>,
    /// What EC2 answered the last.
    pub reason: String,
    pub retry_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{self, Change, Intent};
    use crate::ids::{FleetName, ImageId, InstanceId};
    use schemars::{schema_for, JsonSchema};
    use serde::de::DeserializeOwned;
    use serde_json::{json, Map, Value};
    use std::path::PathBuf;

    /// Inbound (phoenix accepts) and published (phoenix sends) events: (detail-type, schema).
    fn schemas() -> Vec<(&'static str, bool, Value)> {
        fn s<T: JsonSchema>() -> Value {
            serde_json::to_value(schema_for!(T)).unwrap()
        }
        vec![
            ("ImageReady", true, s::<events::ImageReadyDetail>()),
            ("HealthCheckFailed", true, s::<events::HealthFailedDetail>()),
            ("HealthCheckPassed", true, s::<events::HealthPassedDetail>()),
            ("ScaleRequested", true, s::<events::ScaleDetail>()),
            ("ReconcileRequested", true, s::<events::ReconcileDetail>()),
            ("RolloutControl", true, s::<events::ControlDetail>()),
            (
                "LifecycleActionCompleted",
                true,
                s::<events::LifecycleDetail>(),
            ),
            ("RolloutStarted", false, s::<RolloutStarted>()),
            ("WaveStarted", false, s::<WaveStarted>()),
            ("WaveHealthy", false, s::<WaveHealthy>()),
            ("CheckpointReached", false, s::<CheckpointReached>()),
            ("RolloutSucceeded", false, s::<RolloutSucceeded>()),
            ("RolloutRollingBack", false, s::<RolloutRollingBack>()),
            ("RolloutRolledBack", false, s::<RolloutRolledBack>()),
            ("RolloutStalled", false, s::<RolloutStalled>()),
            ("InstanceReplaced", false, s::<InstanceReplaced>()),
            ("ReplacementHalted", false, s::<ReplacementHalted>()),
            ("ImageQuarantined", false, s::<ImageQuarantined>()),
            ("ImageRejected", false, s::<ImageRejected>()),
            ("InstanceLaunching", false, s::<InstanceLaunching>()),
            ("InstanceTerminating", false, s::<InstanceTerminating>()),
            ("TargetGroupMissing", false, s::<TargetGroupMissing>()),
            ("CapacityUnavailable", false, s::<CapacityUnavailable>()),
        ]
    }

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[test]
    fn schemas_match_the_types() {
        let dir = repo().join("schemas");
        let update = std::env::var_os("PHOENIX_UPDATE_SCHEMAS").is_some();
        let mut stale = Vec::new();
        for (name, _, schema) in schemas() {
            let path = dir.join(format!("{name}.schema.json"));
            let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "schemas differ from the types (PHOENIX_UPDATE_SCHEMAS=1 regenerates them): {stale:?}"
        );
        // And no schema of an event that no longer exists.
        let names: Vec<String> = schemas()
            .iter()
            .map(|(n, _, _)| format!("{n}.schema.json"))
            .collect();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().file_name().to_string_lossy().to_string();
            assert!(
                !file.ends_with(".schema.json") || names.contains(&file),
                "{file}"
            );
        }
    }

    /// Every detail `published` writes is exactly its type: nothing missing, nothing extra.
    #[test]
    fn every_published_detail_is_its_type() {
        fn exact<T: Serialize + DeserializeOwned>(detail: &Value) {
            let typed: T =
                serde_json::from_value(detail.clone()).unwrap_or_else(|e| panic!("{detail}: {e}"));
            assert_eq!(&serde_json::to_value(typed).unwrap(), detail);
        }
        let i = |n: u32| InstanceId::parse(&format!("i-{n:08x}")).unwrap();
        let a = |n: u32| ImageId::parse(&format!("ami-{n:08x}")).unwrap();
        let changes = vec![
            Change::RolloutStarted {
                rollout: 1,
                from: Some(a(1)),
                to: a(2),
                changed: Vec::new(),
            },
            Change::RolloutStarted {
                rollout: 2,
                from: Some(a(2)),
                to: a(2),
                changed: vec!["instance_type".into()],
            },
            Change::WaveStarted {
                rollout: 1,
                wave: 1,
                launches: 2,
            },
            Change::WaveHealthy {
                rollout: 1,
                wave: 1,
            },
            Change::CheckpointReached {
                rollout: 1,
                percent: 50,
                until: Some("2030-01-01T00:10:00Z".parse().unwrap()),
            },
            Change::CheckpointReached {
                rollout: 1,
                percent: 80,
                until: None,
            },
            Change::RolloutSucceeded { rollout: 1 },
            Change::RolloutRollingBack {
                rollout: 1,
                reason: "wave 1 failed".into(),
            },
            Change::RolloutRolledBack { rollout: 1 },
            Change::RolloutStalled {
                rollout: 1,
                reason: "wave 2 has not been healthy".into(),
                waiting_on: vec!["i-00000001 (no passed health report)".into()],
            },
            Change::InstanceReplaced {
                instance: i(1),
                by: vec![i(2)],
                reason: "503".into(),
            },
            Change::ReplacementHalted {
                unhealthy: 3,
                capacity: 8,
                shared: Some("zone us-east-1a".into()),
                reason: "3 of 8 instances unhealthy at once".into(),
            },
            Change::ImageQuarantined {
                image: a(2),
                reason: "failed".into(),
            },
            Change::ImageRejected {
                image: a(3),
                reason: "untagged".into(),
            },
            Change::LifecycleHookStarted {
                instance: i(3),
                hook: crate::lifecycle::HookKind::Launching,
                until: "2030-01-01T01:00:00Z".parse().unwrap(),
            },
            Change::LifecycleHookStarted {
                instance: i(1),
                hook: crate::lifecycle::HookKind::Terminating,
                until: "2030-01-01T00:05:00Z".parse().unwrap(),
            },
            Change::TargetGroupMissing {
                group: "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef".into(),
                reason: "TargetGroupNotFound".into(),
            },
            Change::CapacityUnavailable {
                token: "web-sx1abc-7-0".into(),
                tried: vec!["m7g.large in us-east-1a".into(), "m6g.large in us-east-1b".into()],
                reason: "InsufficientInstanceCapacity".into(),
                until: "2030-01-01T00:03:00Z".parse().unwrap(),
            },
        ];
        let out = events::notifications(&FleetName::parse("web").unwrap(), "sx1abc", 7, &changes);
        assert_eq!(out.len(), changes.len());
        let mut kinds: Vec<&str> = Vec::new();
        for (n, note) in out.iter().enumerate() {
            let (dt, detail) = (note.detail_type.as_str(), &note.detail);
            assert_eq!(note.id, format!("web-sx1abc-7-{n}"));
            assert_eq!(detail["notification_id"], note.id.as_str());
            kinds.push(dt);
            match dt {
                "RolloutStarted" => exact::<RolloutStarted>(detail),
                "WaveStarted" => exact::<WaveStarted>(detail),
                "WaveHealthy" => exact::<WaveHealthy>(detail),
                "CheckpointReached" => exact::<CheckpointReached>(detail),
                "RolloutSucceeded" => exact::<RolloutSucceeded>(detail),
                "RolloutRollingBack" => exact::<RolloutRollingBack>(detail),
                "RolloutRolledBack" => exact::<RolloutRolledBack>(detail),
                "RolloutStalled" => exact::<RolloutStalled>(detail),
                "InstanceReplaced" => exact::<InstanceReplaced>(detail),
                "ReplacementHalted" => exact::<ReplacementHalted>(detail),
                "ImageQuarantined" => exact::<ImageQuarantined>(detail),
                "ImageRejected" => exact::<ImageRejected>(detail),
                "InstanceLaunching" => exact::<InstanceLaunching>(detail),
                "InstanceTerminating" => exact::<InstanceTerminating>(detail),
                "TargetGroupMissing" => exact::<TargetGroupMissing>(detail),
                "CapacityUnavailable" => exact::<CapacityUnavailable>(detail),
                other => panic!("{other} has no type in crate::wire"),
            }
        }
        let published: Vec<&str> = schemas()
            .into_iter()
            .filter(|(_, inbound, _)| !inbound)
            .map(|(n, _, _)| n)
            .collect();
        for name in published {
            assert!(kinds.contains(&name), "{name} is never published");
        }
    }

    /// The example of each event (`tests/fixtures/phoenix/`) is admitted by its schema, and
    /// phoenix reads it (inbound) or it is exactly its type (published).
    #[test]
    fn every_example_payload_fits_its_schema() {
        let dir = repo().join("tests/fixtures/phoenix");
        for (name, inbound, schema) in schemas() {
            let path = dir.join(format!("{name}.json"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let event: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(event["source"], "phoenix", "{name}");
            assert_eq!(event["detail-type"], name, "{name}");
            let detail = &event["detail"];
            if let Err(why) = validate(&schema, &schema, detail) {
                panic!("{name}: the example does not fit the schema: {why}");
            }
            if inbound {
                Intent::from_detail(name, detail).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        // A detail that is not an object, or lacks a required field, does not fit.
        let image_ready = &schemas()[0].2;
        assert!(validate(image_ready, image_ready, &json!({"fleet": "web"})).is_err());
        assert!(validate(image_ready, image_ready, &json!("web")).is_err());
        let started = &schemas()[6].2;
        let extra =
            json!({"fleet": "web", "rollout": 1, "from": null, "to": "ami-12345678", "x": 1});
        assert!(validate(started, started, &extra).is_err());
    }

    /// The part of JSON Schema that schemars writes for these types: `type`, `properties`,
    /// `required`, `additionalProperties`, `enum`, `const`, `oneOf`/`anyOf`, `items`, `minimum`,
    /// `maximum` and local `$ref`s.
    fn validate(root: &Value, schema: &Value, v: &Value) -> Result<(), String> {
        let Some(s) = schema.as_object() else {
            return match schema {
                Value::Bool(false) => Err("nothing is allowed here".into()),
                _ => Ok(()),
            };
        };
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let path = r.trim_start_matches("#/");
            let target = path
                .split('/')
                .try_fold(root, |at, key| at.get(key))
                .ok_or(format!("unresolved {r}"))?;
            validate(root, target, v)?;
        }
        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                other => other.as_str().into_iter().collect(),
            };
            let fits = |t: &str| match t {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                "null" => v.is_null(),
                _ => false,
            };
            if !types.iter().any(|t| fits(t)) {
                return Err(format!("{v} is not {types:?}"));
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                return Err(format!("{v} is not one of {e:?}"));
            }
        }
        if let Some(c) = s.get("const") {
            if c != v {
                return Err(format!("{v} is not {c}"));
            }
        }
        if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
            if v.as_f64().is_some_and(|n| n < min) {
                return Err(format!("{v} < {min}"));
            }
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
            if v.as_f64().is_some_and(|n| n > max) {
                return Err(format!("{v} > {max}"));
            }
        }
        for (key, all) in [("oneOf", false), ("anyOf", false), ("allOf", true)] {
            if let Some(options) = s.get(key).and_then(Value::as_array) {
                let ok = options
                    .iter()
                    .filter(|o| validate(root, o, v).is_ok())
                    .count();
                let fits = match key {
                    "oneOf" => ok == 1,
                    _ if all => ok == options.len(),
                    _ => ok >= 1,
                };
                if !fits {
                    return Err(format!("{v} fits {ok} of the {key} options"));
                }
            }
        }
        if let (Some(items), Some(values)) = (s.get("items"), v.as_array()) {
            for item in values {
                validate(root, items, item)?;
            }
        }
        if let Some(obj) = v.as_object() {
            let empty = Map::new();
            let props = s
                .get("properties")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            for req in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let req = req.as_str().unwrap_or_default();
                if !obj.contains_key(req) {
                    return Err(format!("missing {req}"));
                }
            }
            for (k, val) in obj {
                match props.get(k) {
                    Some(p) => validate(root, p, val).map_err(|e| format!("{k}: {e}"))?,
                    None => {
                        if let Some(extra) = s.get("additionalProperties") {
                            validate(root, extra, val).map_err(|e| format!("{k}: {e}"))?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
