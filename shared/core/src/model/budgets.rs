//! Budgets by reason of disruption, as Karpenter's: inside the fleet's one overall budget, a
//! tighter `max_unavailable` or `max_replacements_per_hour` for replacing instances because of a
//! rollout (a new image), drift (a new launch definition), a scale-in, an instance's age
//! (`max_instance_lifetime`) or a rebalance across zones.
//!
//! What holds: a reason's budget only ever narrows the overall one (the smaller of the two
//! applies); repairs of failed instances and retirements have no reason budget (they are not
//! chosen, and the overall budget already bounds them).

use crate::error::{Error, Result};
use crate::quantity::{Quantity, Rounding};
use serde::{Deserialize, Serialize};

/// Why a voluntary replacement happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A rollout to a new image (with or without a new definition), or back from one.
    Rollout,
    /// A rollout of a new launch definition on the same image.
    Drift,
    ScaleIn,
    /// An instance reached the fleet's `max_instance_lifetime`.
    Lifetime,
    /// Zones came apart by more than one instance: one moves to the smallest.
    Rebalance,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Rollout,
        Reason::Drift,
        Reason::ScaleIn,
        Reason::Lifetime,
        Reason::Rebalance,
    ];
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rollout => "rollout",
            Reason::Drift => "drift",
            Reason::ScaleIn => "scale_in",
            Reason::Lifetime => "lifetime",
            Reason::Rebalance => "rebalance",
        }
    }
}

/// One reason's budget. Both fields optional: absent, the overall one applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replacements_per_hour: Option<u32>,
}

/// The budgets by reason of a fleet's policy (`policy.budgets`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonBudgets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<ReasonBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<ReasonBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_in: Option<ReasonBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<ReasonBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<ReasonBudget>,
}

impl ReasonBudgets {
    pub fn is_empty(&self) -> bool {
        *self == ReasonBudgets::default()
    }

    pub fn get(&self, reason: Reason) -> Option<&ReasonBudget> {
        match reason {
            Reason::Rollout => self.rollout.as_ref(),
            Reason::Drift => self.drift.as_ref(),
            Reason::ScaleIn => self.scale_in.as_ref(),
            Reason::Lifetime => self.lifetime.as_ref(),
            Reason::Rebalance => self.rebalance.as_ref(),
        }
    }

    /// The fewest healthy instances a replacement for `reason` must leave, at `capacity`, given
    /// the overall `min_healthy`.
    pub fn min_healthy(&self, reason: Reason, capacity: u32, min_healthy: u32) -> u32 {
        let own = self
            .get(reason)
            .and_then(|b| b.max_unavailable)
            .map(|q| capacity - q.resolve(capacity, Rounding::Down).min(capacity));
        own.map_or(min_healthy, |m| m.max(min_healthy))
    }

    pub fn validate(&self) -> Result<()> {
        for reason in Reason::ALL {
            let Some(b) = self.get(reason) else {
                continue;
            };
            if b.max_replacements_per_hour == Some(0) {
                return Err(Error::invalid(
                    format!("policy.budgets.{}.max_replacements_per_hour", reason.as_str()),
                    "0 would forbid every replacement for this reason; leave it out for the fleet's limit",
                ));
            }
            if b.max_unavailable.is_none() && b.max_replacements_per_hour.is_none() {
                return Err(Error::invalid(
                    format!("policy.budgets.{}", reason.as_str()),
                    "give max_unavailable, max_replacements_per_hour or both",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_budget_only_narrows_the_overall_one() {
        let b: ReasonBudgets = serde_yaml::from_str(
            "rollout: {max_unavailable: 1}\nscale_in: {max_unavailable: \"50%\"}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // Overall: 10 instances, 3 may be unavailable (min 7).
        assert_eq!(b.min_healthy(Reason::Rollout, 10, 7), 9);
        assert_eq!(
            b.min_healthy(Reason::ScaleIn, 10, 7),
            7,
            "50% is wider: 7 holds"
        );
        assert_eq!(b.min_healthy(Reason::Drift, 10, 7), 7, "none given");
        assert!(serde_yaml::from_str::<ReasonBudgets>("age: {max_unavailable: 1}\n").is_err());
        let empty: ReasonBudgets = serde_yaml::from_str("drift: {}\n").unwrap_or_default();
        assert!(empty.validate().is_err());
    }
}
