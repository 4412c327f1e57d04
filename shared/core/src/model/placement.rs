//! Where instances run and for how long: a fleet's zones (its subnets' availability zones), the
//! offerings a launch may use — (instance type, subnet) pairs in order of preference — the
//! offerings EC2 refused for lack of capacity and until when they are not asked again, and when
//! an instance reaches the fleet's `max_instance_lifetime`.
//!
//! What holds: an offering refused for capacity is skipped by every launch decision for
//! `UNAVAILABLE_FOR` (Karpenter keeps its unavailable offerings as long), then asked again (which
//! zone an instance counts in is the fleet's to say: `Fleet::zone_of`); an instance's
//! retirement for age falls in the last tenth of its lifetime, at a point drawn from its id, so a
//! fleet launched at once does not all retire at once.

use super::instance::Instance;
use crate::time::{Seconds, Timestamp};
use chrono::Duration;
use serde::{Deserialize, Serialize};

/// How long an offering EC2 refused for capacity is skipped.
pub const UNAVAILABLE_FOR: Duration = Duration::minutes(3);

/// One way to launch an instance: a type in a subnet (and so a zone).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Offering {
    /// None: the launch template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// None: EC2's default subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// The zone it counts in (`Fleet::zone_of_subnet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// A Spot instance (else On-Demand).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spot: bool,
}

impl Offering {
    /// What EC2 refuses together: a type in a zone.
    pub fn key(&self) -> String {
        format!(
            "{}{} in {}",
            if self.spot { "Spot " } else { "" },
            self.instance_type
                .as_deref()
                .unwrap_or("the template's type"),
            self.zone.as_deref().unwrap_or("the default zone")
        )
    }
}

impl std::fmt::Display for Offering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

/// How a fleet buys its instances, as an Auto Scaling group's instances distribution: the first
/// `on_demand_base` On-Demand, and of the rest `spot_percent` % Spot (the On-Demand share rounded
/// up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purchase {
    #[serde(default)]
    pub on_demand_base: u32,
    #[serde(default)]
    pub spot_percent: u32,
}

impl Purchase {
    /// How many of `capacity` instances are On-Demand.
    pub fn on_demand(&self, capacity: u32) -> u32 {
        let base = self.on_demand_base.min(capacity);
        let above = capacity - base;
        let spot = u64::from(above) * u64::from(self.spot_percent.min(100)) / 100;
        base + above - spot as u32
    }
}

/// An offering EC2 refused for capacity: not asked again before `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    pub since: Timestamp,
    pub until: Timestamp,
    /// What EC2 answered.
    pub reason: String,
}

/// When an instance retires for age under `lifetime`: within the last tenth of it, at a point
/// drawn from its id (FNV-1a), so instances launched together retire spread over that tenth.
pub fn retires_at(i: &Instance, lifetime: Seconds) -> Timestamp {
    let spread = (lifetime.0 / 10).max(1);
    let h =
        i.id.as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
    let early = h % spread;
    i.launched_at + Seconds(lifetime.0 - early).duration()
}
