//! What a fleet should be: its spec (`FleetSpec`), as a fleet file writes it, and the rollout
//! policy inside it (`RolloutPolicy`: surge, unavailability, health signal, canary, checkpoints,
//! breaker, hourly budget, windows and freezes), resolved against a capacity into a `Budget`.
//!
//! What holds: a spec that enters through `from_yaml`, `create_fleet` or `update_spec` has passed
//! `validate`: capacity within bounds, an instance type or a launch template, checkpoints rising
//! between 1 and 99 %, windows and freezes that parse (`schedule`), no reserved tag keys. Events
//! change only its image and its capacity, each checked on its own. Omitted policy fields take the
//! defaults written next to them.

use super::budgets::ReasonBudgets;
use super::images::{Admission, ImageSelector};
use super::instance::Signals;
use super::location::{Account, Location};
use super::placement::Purchase;
use super::position::locate;
use super::schedule::{disruption_at, Freeze, Openness, Window};
use super::traffic::{Hooks, LoadBalancing, TargetGroupRef};
use crate::error::{Error, Result};
use crate::ids::{FleetName, ImageId};
use crate::notice::{MaintenanceWindow, TaintMode};
use crate::quantity::{validate_capacity, Quantity, Rounding};
use crate::time::{Seconds, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most instance types a fleet may fall back on (Auto Scaling's mixed instances take 40; fewer
/// keeps a launch's tries, types × zones, within one invocation).
pub const MAX_INSTANCE_TYPES: usize = 10;

/// The shortest `max_instance_lifetime` (Auto Scaling's is a day; an hour lets short-lived test
/// fleets use it).
pub const MIN_LIFETIME: Seconds = Seconds(3600);

/// One signal that counts a freshly launched instance as healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthSignal {
    /// EC2 reports the instance running with both status checks `ok`.
    Ec2,
    /// A `HealthCheckPassed` event names the instance (an application-level check).
    Event,
    /// Every target group of the fleet reports it `healthy` (and, once it has been, a group
    /// reporting it `unhealthy` fails it, as Auto Scaling's ELB health check does).
    Elb,
}

/// The signals that must all be given before a new instance counts as healthy. Written as one
/// (`ec2`), a list (`[ec2, elb]`), or `both` (ec2 and event). Default `ec2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HealthCheckForm", into = "HealthCheckForm")]
pub struct HealthCheck {
    pub ec2: bool,
    pub event: bool,
    pub elb: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum HealthCheckForm {
    One(String),
    List(Vec<HealthSignal>),
}

impl TryFrom<HealthCheckForm> for HealthCheck {
    type Error = String;
    fn try_from(form: HealthCheckForm) -> std::result::Result<Self, String> {
        let signals = match form {
            HealthCheckForm::One(s) if s == "both" => vec![HealthSignal::Ec2, HealthSignal::Event],
            HealthCheckForm::One(s) => vec![match s.as_str() {
                "ec2" => HealthSignal::Ec2,
                "event" => HealthSignal::Event,
                "elb" => HealthSignal::Elb,
                other => {
                    return Err(format!(
                        "unknown health signal {other:?}: give ec2, event, elb, both, or a list"
                    ))
                }
            }],
            HealthCheckForm::List(v) => v,
        };
        if signals.is_empty() {
            return Err("name at least one health signal".into());
        }
        Ok(HealthCheck {
            ec2: signals.contains(&HealthSignal::Ec2),
            event: signals.contains(&HealthSignal::Event),
            elb: signals.contains(&HealthSignal::Elb),
        })
    }
}

impl From<HealthCheck> for HealthCheckForm {
    fn from(h: HealthCheck) -> Self {
        match (h.ec2, h.event, h.elb) {
            (true, false, false) => HealthCheckForm::One("ec2".into()),
            (false, true, false) => HealthCheckForm::One("event".into()),
            (true, true, false) => HealthCheckForm::One("both".into()),
            _ => HealthCheckForm::List(h.signals()),
        }
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck::EC2
    }
}

impl HealthCheck {
    pub const EC2: HealthCheck = HealthCheck {
        ec2: true,
        event: false,
        elb: false,
    };
    pub const EVENT: HealthCheck = HealthCheck {
        ec2: false,
        event: true,
        elb: false,
    };
    pub const BOTH: HealthCheck = HealthCheck {
        ec2: true,
        event: true,
        elb: false,
    };

    pub fn signals(self) -> Vec<HealthSignal> {
        [
            (self.ec2, HealthSignal::Ec2),
            (self.event, HealthSignal::Event),
            (self.elb, HealthSignal::Elb),
        ]
        .into_iter()
        .filter_map(|(on, s)| on.then_some(s))
        .collect()
    }

    /// Whether the signals an instance has received satisfy this policy.
    pub fn satisfied_by(self, signals: Signals) -> bool {
        (!self.ec2 || signals.ec2_ok)
            && (!self.event || signals.passed)
            && (!self.elb || signals.elb_ok)
    }
}

impl std::fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .signals()
            .into_iter()
            .map(|s| match s {
                HealthSignal::Ec2 => "ec2",
                HealthSignal::Event => "event",
                HealthSignal::Elb => "elb",
            })
            .collect();
        f.write_str(&names.join("+"))
    }
}

/// How replacements proceed. Percentages are of the fleet's capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPolicy {
    /// How many instances above capacity may exist while replacing (rounded up). Default 1.
    #[serde(default = "default_surge")]
    pub max_surge: Quantity,
    /// How many instances below capacity may be unavailable while replacing (rounded down). Default 0.
    #[serde(default = "default_unavailable")]
    pub max_unavailable: Quantity,
    /// What makes a new instance count as healthy. Default `ec2`. With target groups, an
    /// instance counts only once every group reports it healthy, whatever this names.
    #[serde(default)]
    pub health_check: HealthCheck,
    /// Grace after launch before an instance can count as healthy. Default 0s.
    #[serde(default, skip_serializing_if = "Seconds::is_zero")]
    pub warmup: Seconds,
    /// Size of the first wave of a rollout (count or % of capacity). Default: none (the first
    /// wave is as large as `max_surge` allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Quantity>,
    /// How long the canary must stay healthy before the rest follows. Default 0s.
    #[serde(default, skip_serializing_if = "Seconds::is_zero")]
    pub bake: Seconds,
    /// Pause points, in % of capacity replaced, each with a pause (a duration, or until
    /// `phoenix rollout resume` when none is given). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<Checkpoint>,
    /// A wave must be healthy within this time, or the rollout rolls back when the image is to
    /// blame and stalls (waits, and says on what) when it is not. Default 10m.
    #[serde(default = "default_deadline")]
    pub progress_deadline: Seconds,
    /// How many of a rollout's new instances must fail in a way that may be the image's fault
    /// (count, or % of the current wave, rounded up) before the health gate sends it back.
    /// Failures of an instance alone (its host, a stop by AWS) never count. Default 1.
    #[serde(default = "default_rollback_after", skip_serializing_if = "is_one")]
    pub rollback_after: Quantity,
    /// Roll back automatically when the new image fails its health gate. Default true.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
    /// Most instances taken away per hour, for every reason together (rollout waves, repairs,
    /// scale-in). Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replacements_per_hour: Option<u32>,
    /// Mass-failure breaker.
    #[serde(default)]
    pub breaker: BreakerPolicy,
    /// Voluntary disruption (replacing instances that are not failing) happens only inside one of
    /// these. Default: none, at any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
    /// Never voluntary disruption inside one of these, whatever the windows say. Default: none.
    #[serde(default, alias = "freeze", skip_serializing_if = "Vec::is_empty")]
    pub freezes: Vec<Freeze>,
    /// Tighter budgets for replacements by reason (rollout, drift, scale-in), inside the overall
    /// one. Default: none.
    #[serde(default, skip_serializing_if = "ReasonBudgets::is_empty")]
    pub budgets: ReasonBudgets,
}

fn default_deadline() -> Seconds {
    Seconds(600)
}
fn default_rollback_after() -> Quantity {
    Quantity::Count(1)
}
fn is_one(q: &Quantity) -> bool {
    *q == Quantity::Count(1)
}
fn default_true() -> bool {
    true
}

/// A pause point of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// % of capacity on the new image, healthy, at which to pause (1-99).
    pub percent: u32,
    /// How long to pause; none: until `phoenix rollout resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Seconds>,
}

/// When to stop replacing unhealthy instances because the cause is probably shared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Trip when more than this % of capacity is unhealthy at once (and at least 2). Default 20.
    #[serde(default = "default_breaker")]
    pub unhealthy_percent: u32,
    /// Failures this recent count as "at once", even if already replaced. Default 10m.
    #[serde(default = "default_breaker_window")]
    pub window: Seconds,
}

fn default_breaker_window() -> Seconds {
    Seconds(600)
}

fn default_breaker() -> u32 {
    20
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            unhealthy_percent: default_breaker(),
            window: default_breaker_window(),
        }
    }
}

fn default_surge() -> Quantity {
    Quantity::Count(1)
}
fn default_unavailable() -> Quantity {
    Quantity::Count(0)
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            max_surge: default_surge(),
            max_unavailable: default_unavailable(),
            health_check: HealthCheck::EC2,
            warmup: Seconds(0),
            canary: None,
            bake: Seconds(0),
            checkpoints: Vec::new(),
            progress_deadline: default_deadline(),
            rollback_after: default_rollback_after(),
            auto_rollback: true,
            max_replacements_per_hour: None,
            breaker: BreakerPolicy::default(),
            windows: Vec::new(),
            freezes: Vec::new(),
            budgets: ReasonBudgets::default(),
        }
    }
}

/// The disruption budget resolved against a capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Budget {
    /// Most instances that may exist at once (capacity + surge).
    pub max_total: u32,
    /// Fewest healthy instances that must remain (capacity - unavailable).
    pub min_healthy: u32,
}

impl RolloutPolicy {
    pub fn budget(&self, capacity: u32) -> Budget {
        let mut surge = self.max_surge.resolve(capacity, Rounding::Up);
        let unavailable = self
            .max_unavailable
            .resolve(capacity, Rounding::Down)
            .min(capacity);
        // Both zero would forbid every replacement; like Kubernetes, allow one surge instead.
        if surge == 0 && unavailable == 0 {
            surge = 1;
        }
        Budget {
            max_total: capacity.saturating_add(surge),
            min_healthy: capacity - unavailable,
        }
    }

    /// Whether voluntary disruption is allowed at `now` under this policy's windows and freezes,
    /// and until when (`schedule::disruption_at`).
    pub fn disruption_at(&self, now: Timestamp) -> Openness {
        disruption_at(&self.windows, &self.freezes, now)
    }
}

/// A launch template to launch from instead of (or in addition to) the fleet's own fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchTemplateRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl LaunchTemplateRef {
    /// Named by `$Latest`, `$Default` or no version: which version it launches changes as the
    /// template changes, so phoenix resolves it to a number (and a new one is drift).
    pub fn is_floating(&self) -> bool {
        matches!(
            self.version.as_deref(),
            None | Some("$Latest") | Some("$Default")
        )
    }
}

/// What a fleet should be. Written by `phoenix fleet apply`; changed by events (image, capacity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    pub name: FleetName,
    /// The approved image every instance should run.
    pub image: ImageId,
    #[serde(deserialize_with = "capacity_from_any")]
    pub capacity: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Instance types by preference, the list form of `instance_type`: a launch EC2 refuses for
    /// capacity tries the next type in the same zone, then the other zones. Which of them an
    /// instance runs is not part of its definition: changing the list rolls only instances of a
    /// type taken out of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_types: Vec<String>,
    /// Subnets, one or more per availability zone: launches keep the zones within one instance
    /// of each other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<LaunchTemplateRef>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Passed to the instances at launch (EC2 user data, as text; phoenix encodes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default)]
    pub policy: RolloutPolicy,
    /// Follow new images AWS announces (AMI available, Image Builder build finished) that match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_selector: Option<ImageSelector>,
    /// Which images the fleet accepts at all, whoever announces them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<Admission>,
    /// When planned replacements (scheduled maintenance) may happen, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// What an in-place change to an instance (CloudTrail) does: off, record or replace (default).
    #[serde(default, skip_serializing_if = "crate::notice::TaintMode::is_default")]
    pub taint: TaintMode,
    /// The target groups every instance is registered with, and drained from before it goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    /// Lifecycle hooks: phoenix waits for `LifecycleActionCompleted` (or the timeout) after a
    /// launch and before a termination.
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
    /// No instance lives longer: one that reaches it is replaced (launch first, under the
    /// disruption budget and the windows), at a point in its last tenth drawn from its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instance_lifetime: Option<Seconds>,
    /// On-Demand and Spot: `{on_demand_base, spot_percent}` (none: all On-Demand). Spot
    /// launches take the fleet's types in the order of fewest recent interruptions, and fall back
    /// to On-Demand when Spot has no capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purchase: Option<Purchase>,
    /// The account the fleet lives in and the role phoenix assumes there (none: phoenix's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Account>,
    /// The region the fleet lives in (none: phoenix's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// Capacities arrive as JSON numbers from users; read them wide so `-1` and `1e9` get our own
/// message instead of serde's "expected u32".
fn capacity_from_any<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    validate_capacity(v).map_err(serde::de::Error::custom)
}

impl FleetSpec {
    /// Where the fleet lives.
    pub fn location(&self) -> Location {
        Location {
            account: self.account.clone(),
            region: self.region.clone(),
        }
    }

    /// Checks what serde cannot: cross-field rules and reserved tag keys.
    pub fn validate(&self) -> Result<()> {
        validate_capacity(i64::from(self.capacity))?;
        self.location().validate()?;
        if self.instance_type.is_none()
            && self.instance_types.is_empty()
            && self.launch_template.is_none()
        {
            return Err(Error::invalid(
                "instance_type",
                "required unless instance_types or a launch_template is given",
            ));
        }
        if self.instance_type.is_some() && !self.instance_types.is_empty() {
            return Err(Error::invalid(
                "instance_types",
                "give instance_type (one) or instance_types (a list by preference), not both",
            ));
        }
        if self.instance_types.len() > MAX_INSTANCE_TYPES {
            return Err(Error::invalid(
                "instance_types",
                format!(
                    "{} types; at most {MAX_INSTANCE_TYPES}",
                    self.instance_types.len()
                ),
            ));
        }
        for (k, t) in self
            .instance_type
            .iter()
            .chain(&self.instance_types)
            .enumerate()
        {
            let field = if self.instance_types.is_empty() {
                "instance_type"
            } else {
                "instance_types"
            };
            let ok = t.split_once('.').is_some_and(|(family, size)| {
                !family.is_empty()
                    && !size.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            });
            if !ok {
                return Err(Error::invalid(
                    field,
                    format!("{t:?} is not an EC2 instance type like \"t3.micro\""),
                ));
            }
            if self.instance_types[..k.min(self.instance_types.len())].contains(t) {
                return Err(Error::invalid(field, format!("{t} is listed twice")));
            }
        }
        if let Some(p) = &self.purchase {
            if p.spot_percent > 100 {
                return Err(Error::invalid(
                    "purchase.spot_percent",
                    format!("{}% is more than 100", p.spot_percent),
                ));
            }
        }
        if let Some(l) = self.max_instance_lifetime {
            if l < MIN_LIFETIME {
                return Err(Error::invalid(
                    "max_instance_lifetime",
                    format!("{l} is shorter than the shortest allowed, {MIN_LIFETIME}"),
                ));
            }
        }
        if let Some(lt) = &self.launch_template {
            if lt.id.is_some() == lt.name.is_some() {
                return Err(Error::invalid(
                    "launch_template",
                    "give exactly one of id or name",
                ));
            }
        }
        // EC2 takes at most 16 KB of user data, base64-encoded.
        if let Some(u) = &self.user_data {
            if u.len().div_ceil(3) * 4 > 16 * 1024 {
                return Err(Error::invalid(
                    "user_data",
                    format!(
                        "{} bytes are more than EC2's 16 KB once base64-encoded",
                        u.len()
                    ),
                ));
            }
        }
        let p = &self.policy;
        let mut last = 0;
        for c in &p.checkpoints {
            if c.percent == 0 || c.percent >= 100 || c.percent <= last {
                return Err(Error::invalid(
                    "policy.checkpoints",
                    format!(
                        "{}% must be between 1 and 99 and larger than the one before",
                        c.percent
                    ),
                ));
            }
            last = c.percent;
        }
        if p.breaker.unhealthy_percent == 0 || p.breaker.unhealthy_percent > 100 {
            return Err(Error::invalid(
                "policy.breaker.unhealthy_percent",
                "must be between 1 and 100",
            ));
        }
        if p.progress_deadline.is_zero() {
            return Err(Error::invalid(
                "policy.progress_deadline",
                "must be more than 0s",
            ));
        }
        if p.max_replacements_per_hour == Some(0) {
            return Err(Error::invalid(
                "policy.max_replacements_per_hour",
                "0 would forbid every replacement; leave it out for no limit",
            ));
        }
        p.budgets.validate()?;
        for (i, w) in p.windows.iter().enumerate() {
            w.validate(&format!("policy.windows[{i}]"))?;
        }
        for (i, f) in p.freezes.iter().enumerate() {
            f.validate(&format!("policy.freezes[{i}]"))?;
        }
        if let Some(s) = &self.image_selector {
            s.validate()?;
        }
        if let Some(a) = &self.admission {
            a.validate()?;
        }
        if let Some(w) = &self.maintenance_window {
            w.validate()?;
        }
        if let Some(lb) = &self.load_balancing {
            lb.validate()?;
            if self.subnets.is_empty() {
                return Err(Error::invalid(
                    "load_balancing",
                    "name the fleet's subnets: its target groups must be in their VPC",
                ));
            }
        }
        if p.health_check.elb && self.load_balancing.is_none() {
            return Err(Error::invalid(
                "policy.health_check",
                "elb needs load_balancing.target_groups",
            ));
        }
        self.hooks.validate()?;
        for key in self.tags.keys() {
            let lower = key.to_ascii_lowercase();
            if lower.starts_with("phoenix:") || lower.starts_with("aws:") {
                return Err(Error::invalid(
                    "tags",
                    format!("{key:?} uses a reserved prefix (phoenix: or aws:)"),
                ));
            }
        }
        Ok(())
    }

    /// The instance types a launch may use, by preference (a single `None`: the launch
    /// template's).
    pub fn launch_types(&self) -> Vec<Option<String>> {
        if !self.instance_types.is_empty() {
            return self.instance_types.iter().cloned().map(Some).collect();
        }
        vec![self.instance_type.clone()]
    }

    /// Whether an instance of type `t` may stay (with `instance_types`, one of them; otherwise
    /// the definition decides).
    pub fn allows_type(&self, t: Option<&str>) -> bool {
        self.instance_types.is_empty()
            || t.is_none_or(|t| self.instance_types.iter().any(|x| x == t))
    }

    /// The target groups its instances serve behind (none without `load_balancing`).
    pub fn target_groups(&self) -> &[TargetGroupRef] {
        self.load_balancing
            .as_ref()
            .map_or(&[], |lb| lb.target_groups.as_slice())
    }

    /// Reads a fleet file (YAML, of which JSON is a subset). Errors name the line and the field
    /// (`invalid capacity: -3 is negative at line 3 column 11`).
    pub fn from_yaml(text: &str) -> Result<Self> {
        serde_yaml::from_str::<FleetSpec>(text)
            .map_err(|e| Error::FleetFile(e.to_string()))
            .and_then(|spec| spec.validate().map(|()| spec))
            .map_err(|e| locate(text, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "name: web\nimage: ami-12345678\ncapacity: 3\ninstance_type: t3.micro\n";

    fn error(text: &str) -> Error {
        FleetSpec::from_yaml(text).unwrap_err()
    }

    #[test]
    fn fleet_file_errors_name_the_line_and_the_field() {
        // Checks on a value once read: located at the field's value.
        let negative = error(&FILE.replace("capacity: 3", "capacity: -3"));
        assert_eq!(
            negative.to_string(),
            "invalid fleet file: invalid capacity: -3 is negative at line 3 column 11"
        );
        let bad_type = error(&FILE.replace("t3.micro", "t3micro"));
        assert_eq!(
            bad_type,
            Error::invalid(
                "instance_type",
                "\"t3micro\" is not an EC2 instance type like \"t3.micro\" at line 4 column 16"
            ),
            "the kind of error and its field are kept"
        );
        let nested = error(&format!(
            "{FILE}policy:\n  breaker:\n    unhealthy_percent: 0\n"
        ));
        assert!(
            nested.to_string().ends_with("at line 7 column 24"),
            "{nested}"
        );
        // Located by the parser: the key written on that line is named when the message does not.
        let typo = error(&FILE.replace("capacity:", "capacty:"));
        assert!(
            typo.to_string().contains("unknown field `capacty`")
                && typo.to_string().ends_with("at line 3 column 1"),
            "{typo}"
        );
        let lots = error(&format!("{FILE}policy:\n  max_surge: lots\n"));
        assert!(
            lots.to_string()
                .ends_with("at line 6 column 3 (field `max_surge`)"),
            "{lots}"
        );
        // Nothing to locate: as it was.
        let missing = error(&FILE.replace("capacity: 3\n", ""));
        assert_eq!(
            missing.to_string(),
            "invalid fleet file: missing field `capacity`"
        );
    }
}
