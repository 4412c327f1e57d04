//! Where an instance stands: EC2's lifecycle state as observed (`Lifecycle`), and phoenix's
//! verdict on its health (`Health`). Both are plain values, named by the history's changes and
//! by notices as much as by the fleet's records, so they sit below all of them.
//!
//! The lifecycle hooks' kinds and results (`HookKind`, `HookResult`) are here for the same reason.
//!
//! What holds: an instance EC2 reports gone (`Lifecycle::is_gone`: shutting down or terminated)
//! does not come back.

use serde::{Deserialize, Serialize};

/// EC2's lifecycle states, as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lifecycle {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

impl Lifecycle {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Lifecycle::Pending,
            "running" => Lifecycle::Running,
            "stopping" => Lifecycle::Stopping,
            "stopped" => Lifecycle::Stopped,
            "shutting-down" => Lifecycle::ShuttingDown,
            "terminated" => Lifecycle::Terminated,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Pending => "pending",
            Lifecycle::Running => "running",
            Lifecycle::Stopping => "stopping",
            Lifecycle::Stopped => "stopped",
            Lifecycle::ShuttingDown => "shutting-down",
            Lifecycle::Terminated => "terminated",
        }
    }
    /// Gone or going: EC2 will not bring it back.
    pub fn is_gone(self) -> bool {
        matches!(self, Lifecycle::ShuttingDown | Lifecycle::Terminated)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Health {
    /// Launched, not yet proven healthy.
    Unknown,
    Healthy,
    /// Failed a health check. Sticky: an instance that failed is replaced; it is trusted again
    /// only if it passes while the breaker holds repairs back (the failure was then probably a
    /// shared cause that went away).
    Unhealthy {
        reason: String,
        /// What the failure points at: the image (the application or the system on it) or the
        /// instance alone (its host, or AWS stopping it).
        #[serde(default, skip_serializing_if = "Suspect::is_image")]
        suspect: Suspect,
    },
}

impl Health {
    /// A failure that may be the image's fault (what a rollout's health gate counts).
    pub fn failed(reason: impl Into<String>) -> Health {
        Health::Unhealthy {
            reason: reason.into(),
            suspect: Suspect::Image,
        }
    }

    /// A failure of the instance alone: its host, or AWS stopping it. Repaired like any failure,
    /// never held against the image.
    pub fn broken(reason: impl Into<String>) -> Health {
        Health::Unhealthy {
            reason: reason.into(),
            suspect: Suspect::Instance,
        }
    }
}

/// What a failure points at. An application's failed health check, an alarm, the instance status
/// check may each be the image's fault; a stop by AWS, a failed host, a lost instance are not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Suspect {
    #[default]
    Image,
    Instance,
}

impl Suspect {
    pub fn is_image(&self) -> bool {
        *self == Suspect::Image
    }
}

/// Which lifecycle hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// After launch, before the instance is registered and counted: bootstrap checks.
    Launching,
    /// After the instance drained, before it is terminated: drain scripts, log shipping.
    Terminating,
}

impl HookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Launching => "launching",
            HookKind::Terminating => "terminating",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "launching" => Some(HookKind::Launching),
            "terminating" => Some(HookKind::Terminating),
            _ => None,
        }
    }
}

/// How a lifecycle action ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HookResult {
    /// Go on: count the launched instance, terminate the drained one.
    Continue,
    /// At launch: the instance failed (it counts for the rollout's health gate) and is replaced.
    /// Before termination: terminate it all the same.
    Abandon,
}

impl HookResult {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "CONTINUE" => Some(HookResult::Continue),
            "ABANDON" => Some(HookResult::Abandon),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            HookResult::Continue => "CONTINUE",
            HookResult::Abandon => "ABANDON",
        }
    }
}
