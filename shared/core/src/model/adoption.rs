//! Instances phoenix did not launch but took into a fleet (`Adopted`), the Auto Scaling group a
//! takeover empties (`Takeover`), and instances given back (`Released`).
//!
//! What holds: an adopted instance is recorded first and tagged `phoenix:fleet` after, so a pass
//! never takes it for an orphan (it has a record); until EC2 lists it with the tag (`tagged`), a
//! pass that does not see it asks for the tag again once `LEASE` has passed, rather than calling
//! it vanished. An instance still in its Auto Scaling group (`Adopted::asg`) is held as a
//! protected one is: nothing voluntary takes it until it is detached. A released instance's record
//! stays as a tombstone (for the history and `explain`); its tags are removed after the commit,
//! and again by any pass that still sees them.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// How an instance phoenix did not launch became the fleet's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adopted {
    pub at: Timestamp,
    /// What selected it: `tag:app=web`, `instances`, `asg:<name>`.
    pub from: String,
    /// EC2 lists it with the fleet's tags (or tagging it succeeded).
    #[serde(default)]
    pub tagged: bool,
    /// When tagging it was last asked for: asked again after `LEASE` while it is not tagged.
    pub asked_at: Timestamp,
    /// Still a member of this Auto Scaling group: to be detached from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asg: Option<AsgMember>,
}

/// An adopted instance still in the Auto Scaling group it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsgMember {
    pub group: String,
    /// When `DetachInstances` was last asked for it: asked again after `LEASE` if its outcome
    /// was never recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detach_asked: Option<Timestamp>,
}

/// A fleet taking over an Auto Scaling group: its instances are adopted at once, then detached
/// a batch at a time (the group's desired capacity decremented with each), so the group never
/// launches a replacement and the load balancers keep serving. Over once none is left in it; the
/// group is left empty, its processes suspended, never deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Takeover {
    pub group: String,
    pub started_at: Timestamp,
    /// Instances adopted from it.
    pub instances: u32,
}

/// An instance the fleet gave back (`phoenix fleet release`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub at: Timestamp,
    /// Its phoenix tags are removed (or EC2 no longer lists it with them).
    #[serde(default)]
    pub untagged: bool,
    /// When removing them was last asked for.
    pub asked_at: Timestamp,
}

/// At most this many instances per `DetachInstances` call (Auto Scaling's limit).
pub const MAX_DETACH_IDS: usize = 20;
