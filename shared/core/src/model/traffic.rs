//! Serving traffic: the load balancer target groups a fleet's instances are registered with
//! (`LoadBalancing`), what a group reports about one instance (`TargetState`), and the lifecycle
//! hooks that hold an instance at launch and before termination (`Hooks`, `HookWait`).
//!
//! What holds: a fleet file names each group once, by its full ARN; a hook's timeout lies
//! between 30 seconds and 2 hours (Auto Scaling's bounds for a heartbeat); an instance counts as
//! serving only when every group the fleet names reports it `healthy`, and as drained only when
//! no group lists it any more (or lists it `unused`).

use crate::error::{Error, Result};
use crate::lifecycle::{HookKind, HookResult};
use crate::time::{Seconds, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The tag a target group carries for phoenix to register instances in it (its value: the fleets
/// it serves, for people); phoenix's IAM policy allows registering only in groups that carry it.
pub const TAG_FLEETS: &str = "phoenix:fleets";

/// Target groups per fleet (an Auto Scaling group may have 50; a fleet behind more than a few is
/// unusual, and each costs one `DescribeTargetHealth` per pass).
pub const MAX_TARGET_GROUPS: usize = 10;

/// The load balancers a fleet serves behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancing {
    pub target_groups: Vec<TargetGroupRef>,
}

/// A target group of type `instance`, by ARN, with the port instances serve on (the group's own
/// port when none is given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "GroupForm", into = "GroupForm")]
pub struct TargetGroupRef {
    pub arn: String,
    pub port: Option<u16>,
}

/// A group as a fleet file writes it: its ARN alone, or `{arn, port}`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum GroupForm {
    Arn(String),
    #[serde(rename_all = "snake_case")]
    Full {
        arn: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    },
}

impl From<GroupForm> for TargetGroupRef {
    fn from(g: GroupForm) -> Self {
        match g {
            GroupForm::Arn(arn) => TargetGroupRef { arn, port: None },
            GroupForm::Full { arn, port } => TargetGroupRef { arn, port },
        }
    }
}

impl From<TargetGroupRef> for GroupForm {
    fn from(g: TargetGroupRef) -> Self {
        match g.port {
            None => GroupForm::Arn(g.arn),
            port => GroupForm::Full { arn: g.arn, port },
        }
    }
}

impl TargetGroupRef {
    /// The group's name, from its ARN (`...:targetgroup/<name>/<id>`), for messages.
    pub fn name(&self) -> &str {
        group_name(&self.arn)
    }
}

/// A target group's name from its ARN, or the ARN when it has none.
pub fn group_name(arn: &str) -> &str {
    arn.split_once(":targetgroup/")
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or(arn)
}

impl LoadBalancing {
    pub fn validate(&self) -> Result<()> {
        let field = "load_balancing.target_groups";
        if self.target_groups.is_empty() {
            return Err(Error::invalid(
                field,
                "name at least one target group, or leave load_balancing out",
            ));
        }
        if self.target_groups.len() > MAX_TARGET_GROUPS {
            return Err(Error::invalid(
                field,
                format!("at most {MAX_TARGET_GROUPS} target groups"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for g in &self.target_groups {
            let parts: Vec<&str> = g.arn.splitn(6, ':').collect();
            let ok = parts.len() == 6
                && parts[0] == "arn"
                && parts[2] == "elasticloadbalancing"
                && parts[5].starts_with("targetgroup/")
                && parts[5].split('/').count() == 3;
            if !ok {
                return Err(Error::invalid(
                    field,
                    format!(
                        "{:?} is not a target group ARN like \
                         \"arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef\"",
                        g.arn
                    ),
                ));
            }
            if g.port == Some(0) {
                return Err(Error::invalid(field, "a port must be between 1 and 65535"));
            }
            if !seen.insert(g.arn.as_str()) {
                return Err(Error::invalid(
                    field,
                    format!("{} is named twice", g.name()),
                ));
            }
        }
        Ok(())
    }
}

/// What a target group reports about one of its targets (`DescribeTargetHealth`'s state).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum TargetState {
    /// Registered; the first health checks are running.
    Initial,
    Healthy,
    /// Registered and failing the group's health checks.
    Unhealthy {
        reason: String,
    },
    /// Deregistered; requests in flight are finishing.
    Draining,
    /// Registered, but not receiving traffic (its zone is not enabled, it is stopped).
    Unavailable,
    /// Not registered, or deregistered and done draining.
    Unused,
}

impl TargetState {
    /// Listed and not done with: registered, or still draining.
    pub fn is_listed(&self) -> bool {
        !matches!(self, TargetState::Unused)
    }
    /// Registered (whatever its health), not leaving.
    pub fn is_registered(&self) -> bool {
        !matches!(self, TargetState::Unused | TargetState::Draining)
    }
}

/// What every target group of a fleet reports about one instance: by group ARN; a group that does
/// not list it is absent.
pub type Targets = BTreeMap<String, TargetState>;

/// One lifecycle hook: how long phoenix waits for `LifecycleActionCompleted`, and what it does
/// when none comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// Default 1h, as Auto Scaling's heartbeat.
    #[serde(default = "default_hook_timeout")]
    pub timeout: Seconds,
    /// Default CONTINUE.
    #[serde(default = "default_hook_result")]
    pub default_result: HookResult,
}

fn default_hook_timeout() -> Seconds {
    Seconds(3600)
}
fn default_hook_result() -> HookResult {
    HookResult::Continue
}

/// The fleet's lifecycle hooks (none by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launching: Option<Hook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<Hook>,
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.launching.is_none() && self.terminating.is_none()
    }
    pub fn get(&self, kind: HookKind) -> Option<&Hook> {
        match kind {
            HookKind::Launching => self.launching.as_ref(),
            HookKind::Terminating => self.terminating.as_ref(),
        }
    }
    pub fn validate(&self) -> Result<()> {
        for kind in [HookKind::Launching, HookKind::Terminating] {
            if let Some(h) = self.get(kind) {
                if !(30..=7200).contains(&h.timeout.0) {
                    return Err(Error::invalid(
                        format!("hooks.{}.timeout", kind.as_str()),
                        format!("{} must be between 30s and 2h", h.timeout),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A lifecycle hook an instance waits on: since when, until when at most, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookWait {
    pub since: Timestamp,
    pub until: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<HookResult>,
    /// When it ended, by an operator's `LifecycleActionCompleted` or by its timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
}

impl HookWait {
    pub fn is_waiting(&self) -> bool {
        self.result.is_none()
    }
    /// Ended with CONTINUE (at launch, the only way an instance goes on).
    pub fn continued(&self) -> bool {
        self.result == Some(HookResult::Continue)
    }
}
