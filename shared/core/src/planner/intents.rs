//! What operators and events ask of a fleet: a new fleet (`create_fleet`), a fleet file applied
//! over one (`update_spec`), an event's intent (`apply_intent`), or an intent that waited in the
//! fleet's inbox (`apply_queued`).
//!
//! What holds: EventBridge does not order deliveries, so an image event, or a scale event naming
//! a capacity, older than the last change of that field changes nothing (compared by whole
//! seconds); an image quarantined for the fleet is refused, with how to clear it; an event about
//! an instance that is not the fleet's is an error, and one about an instance already replaced is
//! recorded as ignored.

use super::notices;
use super::rollout::control;
use super::step::Step;
use super::tx::Tx;
use crate::error::{Error, Result};
use crate::events::{Change, Intent, QueuedIntent, ScaleTarget};
use crate::ids::{ImageId, InstanceId};
use crate::model::{Definition, Fleet, FleetSpec, Health, Lifecycle, Timestamp, MAX_CAPACITY};
use std::collections::{BTreeMap, BTreeSet};

/// A new fleet, as `phoenix fleet apply` creates it, its launch template (when named by
/// `$Latest`, `$Default` or no version) resolved to `template_version`. Instances come with the
/// first reconcile.
pub fn create_fleet(
    spec: FleetSpec,
    resolved: impl Into<Resolved>,
    now: Timestamp,
) -> Result<Step> {
    let Resolved {
        template_version,
        zones,
    } = resolved.into();
    spec.validate()?;
    let changes = vec![Change::FleetCreated {
        image: spec.image.clone(),
        capacity: spec.capacity,
    }];
    let mut fleet = Fleet::new(spec, now);
    fleet.template_version = floating(&fleet.spec, template_version);
    fleet.zones = zones;
    let definition = fleet.definition();
    fleet
        .definitions
        .insert(definition.fingerprint(), definition);
    Ok(Step {
        fleet,
        changes,
        commands: Vec::new(),
        touched: BTreeSet::new(),
    })
}

/// What `phoenix fleet apply` looked up for a spec before planning it: the version its launch
/// template resolves to now (kept only when it floats), and the availability zone of each of its
/// subnets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub template_version: Option<String>,
    pub zones: BTreeMap<String, String>,
}

impl From<Option<String>> for Resolved {
    fn from(template_version: Option<String>) -> Self {
        Resolved {
            template_version,
            zones: BTreeMap::new(),
        }
    }
}

/// The resolved version, kept only for a launch template that floats.
fn floating(spec: &FleetSpec, version: Option<String>) -> Option<String> {
    version.filter(|_| {
        spec.launch_template
            .as_ref()
            .is_some_and(|t| t.is_floating())
    })
}

/// The reason an image may not be launched for this fleet, if it is quarantined.
fn refusal(fleet: &Fleet, image: &ImageId) -> Option<String> {
    fleet.quarantined.get(image).map(|q| {
        format!(
            "{image} is quarantined for fleet {} since rollout {} failed ({}); clear it with `phoenix image clear-quarantine {} {image}`",
            fleet.spec.name, q.rollout, q.reason, fleet.spec.name
        )
    })
}

/// A fleet file applied over an existing fleet, its launch template (when floating) resolved to
/// `template_version`: a change to what instances are made of — image, launch definition, a
/// subnet instances run in taken away — starts one rollout; a new capacity scales; policy and
/// the other fields apply from now on and roll nothing.
pub fn update_spec(
    fleet: &Fleet,
    spec: FleetSpec,
    resolved: impl Into<Resolved>,
    now: Timestamp,
) -> Result<Step> {
    let Resolved {
        template_version,
        zones,
    } = resolved.into();
    spec.validate()?;
    if spec.name != fleet.spec.name {
        return Err(Error::invalid(
            "name",
            format!("{} is not fleet {}", spec.name, fleet.spec.name),
        ));
    }
    // Its instances live where it was made; the role and session may change.
    let (was, is) = (fleet.spec.location(), spec.location());
    let account_id =
        |l: &crate::model::Location| l.account.as_ref().map(|a| a.account_id().to_string());
    if account_id(&was) != account_id(&is) || was.region != is.region {
        return Err(Error::invalid(
            "account",
            format!(
                "fleet {} lives in {}; a fleet file cannot move it to {} (its instances are \
                 there): make a new fleet there",
                fleet.spec.name,
                was.describe(),
                is.describe()
            ),
        ));
    }
    // Nothing rolls onto a quarantined image: not a new image, nor a new definition on the
    // fleet's own (a rollout that could launch nothing, and wait for ever).
    let redefined = Definition::of(&spec, floating(&spec, template_version.clone()).as_deref())
        .fingerprint()
        != fleet.definition().fingerprint();
    if spec.image != fleet.spec.image || redefined {
        if let Some(reason) = refusal(fleet, &spec.image) {
            return Err(Error::invalid("image", reason));
        }
    }
    let mut tx = Tx::new(fleet, now);
    let old = fleet.spec.clone();
    let before = fleet.definition();
    if spec.image != old.image {
        tx.changes.push(Change::ImageChanged {
            from: old.image.clone(),
            to: spec.image.clone(),
        });
        tx.fleet.image_set_at = now;
    }
    if spec.capacity != old.capacity {
        tx.changes.push(Change::CapacityChanged {
            from: old.capacity,
            to: spec.capacity,
        });
        tx.fleet.capacity_set_at = now;
    }
    let mut fields = Vec::new();
    let json_old = serde_json::to_value(&old).unwrap_or_default();
    let json_new = serde_json::to_value(&spec).unwrap_or_default();
    if let (Some(a), Some(b)) = (json_old.as_object(), json_new.as_object()) {
        for key in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
            if key != "image" && key != "capacity" && a.get(key) != b.get(key) {
                fields.push(key.clone());
            }
        }
    }
    let template_changed = tx.fleet.template_version != floating(&spec, template_version.clone());
    if !fields.is_empty() {
        tx.changes.push(Change::FleetUpdated { fields });
    } else if template_changed {
        tx.changes.push(Change::FleetUpdated {
            fields: vec!["launch_template".into()],
        });
    }
    tx.fleet.template_version = floating(&spec, template_version);
    // Zones looked up now, over those known of subnets still listed.
    tx.fleet.zones.retain(|s, _| spec.subnets.contains(s));
    tx.fleet.zones.extend(zones);
    tx.fleet.spec = spec;
    tx.roll_if_changed(old.image, before, old.subnets);
    if tx.changes.is_empty() {
        tx.ignore("fleet file is unchanged");
    }
    Ok(tx.finish())
}

/// The fleet's floating launch template (`$Latest`, `$Default`, no version) resolves to
/// `version` now. A new version is drift: instances launched from the old one roll, as for a new
/// image. The first version phoenix learns for a fleet recorded before it kept one is the one
/// its instances are taken to run.
pub fn template_resolved(fleet: &Fleet, version: &str, now: Timestamp) -> Step {
    let mut tx = Tx::new(fleet, now);
    let Some(template) = fleet
        .spec
        .launch_template
        .as_ref()
        .filter(|t| t.is_floating())
    else {
        return tx.finish();
    };
    // A new version waits while the fleet's image is quarantined: nothing could roll onto it.
    if fleet.template_version.as_deref() == Some(version)
        || fleet.quarantined.contains_key(&fleet.spec.image)
    {
        return tx.finish();
    }
    let name = template
        .name
        .clone()
        .or_else(|| template.id.clone())
        .unwrap_or_default();
    tx.changes.push(Change::TemplateVersionChanged {
        template: name,
        from: fleet.template_version.clone(),
        to: version.to_string(),
    });
    let before = fleet.definition();
    tx.fleet.template_version = Some(version.to_string());
    if fleet.template_version.is_none() {
        let after = tx.fleet.definition();
        tx.fleet
            .legacy_definition
            .get_or_insert(after.fingerprint());
        tx.fleet.definitions.insert(after.fingerprint(), after);
        return tx.finish();
    }
    let image = fleet.spec.image.clone();
    tx.roll_if_changed(image, before, fleet.spec.subnets.clone());
    tx.finish()
}

/// Whether an event is older than a change already applied. EventBridge stamps events to the
/// second, so the comparison is by whole seconds: within one second, the later delivery wins.
fn older(event_time: Timestamp, applied_at: Timestamp) -> bool {
    event_time.timestamp() < applied_at.timestamp()
}

fn not_member(fleet: &Fleet, instance: &InstanceId) -> Error {
    Error::invalid(
        "instance",
        format!("{instance} is not an instance of fleet {}", fleet.spec.name),
    )
}

/// Applies an intent from the fleet's inbox (`QueuedIntent`). One that no longer applies when
/// its turn comes (a delta that would now take the capacity below zero, say) was accepted when
/// it was queued, so it is recorded as ignored, with why, rather than refused.
pub fn apply_queued(fleet: &Fleet, queued: &QueuedIntent, now: Timestamp) -> Step {
    apply_intent(fleet, &queued.intent, queued.event_time, now).unwrap_or_else(|e| {
        let mut tx = Tx::new(fleet, now);
        tx.ignore(format!("queued {}: {e}", queued.cause.detail_type));
        tx.finish()
    })
}

/// Applies what an event asks. `event_time` orders events that EventBridge may deliver out of
/// order; `fleet` holds at least the instance an instance-scoped event names.
pub fn apply_intent(
    fleet: &Fleet,
    intent: &Intent,
    event_time: Timestamp,
    now: Timestamp,
) -> Result<Step> {
    let mut tx = Tx::new(fleet, now);
    match intent {
        Intent::ImageReady { image, .. } => {
            if *image == fleet.spec.image {
                tx.ignore(format!("{image} is already the fleet's image"));
                // A newer announcement of the current image still outdates older announcements
                // of other images that may yet be delivered.
                tx.fleet.image_set_at = tx.fleet.image_set_at.max(event_time);
            } else if older(event_time, fleet.image_set_at) {
                tx.ignore(format!(
                    "event of {event_time} is older than the image change of {}",
                    fleet.image_set_at
                ));
            } else if let Some(reason) = refusal(fleet, image) {
                tx.changes.push(Change::ImageRefused {
                    image: image.clone(),
                    reason,
                });
            } else {
                let from = fleet.spec.image.clone();
                tx.changes.push(Change::ImageChanged {
                    from: from.clone(),
                    to: image.clone(),
                });
                tx.fleet.spec.image = image.clone();
                tx.fleet.image_set_at = event_time;
                tx.roll_if_changed(from, fleet.definition(), fleet.spec.subnets.clone());
            }
        }
        Intent::Scale { target, .. } => {
            let current = fleet.spec.capacity;
            let desired = match *target {
                ScaleTarget::Desired(n) => {
                    if older(event_time, fleet.capacity_set_at) {
                        tx.ignore(format!(
                            "event of {event_time} is older than the capacity change of {}",
                            fleet.capacity_set_at
                        ));
                        return Ok(tx.finish());
                    }
                    n
                }
                ScaleTarget::Delta(d) => {
                    let n = i64::from(current) + d;
                    if n < 0 || n > i64::from(MAX_CAPACITY) {
                        return Err(Error::invalid(
                            "capacity",
                            format!("delta {d} on capacity {current} gives {n}, outside 0..={MAX_CAPACITY}"),
                        ));
                    }
                    n as u32
                }
            };
            if desired == current {
                tx.ignore(format!("capacity is already {current}"));
                // As for images: a newer request for the current capacity outdates older ones.
                tx.fleet.capacity_set_at = tx.fleet.capacity_set_at.max(event_time);
            } else {
                tx.changes.push(Change::CapacityChanged {
                    from: current,
                    to: desired,
                });
                tx.fleet.spec.capacity = desired;
                tx.fleet.capacity_set_at = tx.fleet.capacity_set_at.max(event_time);
            }
        }
        Intent::HealthCheckFailed { instance, reason } => match fleet.instances.get(instance) {
            None => return Err(not_member(fleet, instance)),
            Some(i) if !i.is_live() => tx.ignore(format!("{instance} was already replaced")),
            Some(i) if i.disposal.is_some() => {
                tx.ignore(format!("{instance} is already being replaced"))
            }
            Some(i) if i.is_failed() => tx.ignore(format!("{instance} already failed")),
            Some(i) => {
                // EC2 reported its host impaired at the last look: the failure is the host's,
                // not the image's.
                let health = if i.signals.host_impaired {
                    Health::broken(format!("{reason} (EC2 reports its host impaired)"))
                } else if matches!(i.state, Lifecycle::Stopping | Lifecycle::Stopped) {
                    Health::broken(format!("{reason} (the instance is {})", i.state.as_str()))
                } else {
                    Health::failed(reason.clone())
                };
                tx.set_health(instance, health);
                // A new-image instance failing sends the rollout back first, so that its
                // replacement comes from the previous image.
                tx.health_gate();
                tx.repair(instance);
            }
        },
        Intent::HealthCheckPassed { instance } => match fleet.instances.get(instance) {
            None => return Err(not_member(fleet, instance)),
            Some(i) if !i.is_live() => tx.ignore(format!("{instance} was already replaced")),
            // While the breaker holds repairs back, the failures were probably one shared cause (a
            // zone outage, a dependency): an instance that passes again has recovered.
            Some(i) if i.is_failed() && fleet.breaker.is_some() && i.disposal.is_none() => {
                tx.recover(instance);
            }
            Some(i) if i.is_failed() => tx.ignore(format!(
                "{instance} failed earlier; a failed instance is never trusted again"
            )),
            // Passed before, but not healthy yet (its warmup was not over, EC2's checks were
            // still to come): counted healthy now if the rest holds.
            Some(i) if i.signals.passed => {
                tx.promote(instance);
                if tx.changes.is_empty() {
                    tx.ignore(format!("{instance} already passed"));
                }
            }
            Some(_) => {
                if let Some(i) = tx.instance_mut(instance) {
                    i.signals.passed = true;
                }
                tx.promote(instance);
                if tx.changes.is_empty() {
                    // Recorded even when the instance is not healthy yet (warmup, or EC2's
                    // checks still to come): the signal must not be lost.
                    tx.ignore(format!("{instance} passed; counted healthy once the policy's other conditions hold"));
                }
            }
        },
        Intent::LifecycleActionCompleted {
            instance,
            hook,
            result,
        } => match fleet.instances.get(instance) {
            None => return Err(not_member(fleet, instance)),
            Some(_) => tx.lifecycle_completed(instance, *hook, *result),
        },
        Intent::RolloutControl { action, .. } => control(&mut tx, *action),
        Intent::ClearQuarantine { image, .. } => {
            if tx.fleet.quarantined.remove(image).is_some() {
                tx.changes.push(Change::ImageReleased {
                    image: image.clone(),
                });
            } else {
                tx.ignore(format!(
                    "{image} is not quarantined for fleet {}",
                    fleet.spec.name
                ));
            }
        }
        Intent::Notice { instances, notice } => {
            for id in instances {
                notices::apply(&mut tx, id, notice);
            }
        }
        Intent::Reconcile { .. } => {}
    }
    Ok(tx.finish())
}
