//! The outbox: the notifications a commit publishes (`events::notifications`: `RolloutStarted`,
//! `InstanceReplaced`, `ReplacementHalted`, ...) written in the same transaction as the change
//! that causes them, one item per commit in the fleet's partition (`MAIL#<version>`). The
//! controller publishes them after the commit and then removes the item; what a crash or a failed
//! PutEvents leaves there is published by a later pass over the whole fleet, whose load reads the
//! outbox with the instances.
//!
//! What holds: a committed change's notifications stay in the outbox until they were published at
//! least once (the item is removed only after PutEvents succeeded); a lifecycle hook's reach the
//! bus before any pass plans on the fleet again (before its timeout can end it). A crash after
//! PutEvents and before the removal publishes them again: every copy carries the id its commit
//! gave it (`Notification::id`), so a consumer drops the repeat. One item per commit keeps a
//! commit one transaction: the fleet record, up to `MAX_TOUCHED_PER_STEP` (92) instance records,
//! the history entry, the event's record (two items when applying a queued intent) or the fleet
//! index, and the outbox item make at most 97 of DynamoDB's 100 actions.

use super::items::*;
use super::Store;
use crate::error::Result;
use crate::ports::table::Table;
use chrono::Duration;
use phoenix_core::events::{notifications, Change, Notification};
use phoenix_core::model::{Fleet, Timestamp};
use phoenix_core::FleetName;
use serde::{Deserialize, Serialize};

/// How long the invocation that committed a notification has to publish it before any pass over
/// the fleet may: the functions' timeout (60 s), by when it has published it or died. Earlier,
/// every pass racing the committer would publish it a second time.
pub const OUTBOX_GRACE: Duration = Duration::seconds(60);

/// The notifications of a lifecycle hook begun: its timeout runs from the commit that began it,
/// so a pass publishes them at once, without the grace, and does not plan while it cannot.
pub const HOOK_NOTIFICATIONS: [&str; 2] = ["InstanceLaunching", "InstanceTerminating"];

/// One commit's notifications, as the outbox keeps them until they are published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mail {
    /// The fleet version the commit made.
    pub version: u64,
    /// When it was committed (the controller's clock).
    pub at: Timestamp,
    pub notifications: Vec<Notification>,
}

impl Mail {
    /// The notifications of the commit that made `fleet` (as committed: its version is the new
    /// one) with `changes`, if it publishes any.
    pub fn of(fleet: &Fleet, changes: &[Change], at: Timestamp) -> Option<Mail> {
        let notifications = notifications(
            &fleet.spec.name,
            &fleet.incarnation(),
            fleet.version,
            changes,
        );
        (!notifications.is_empty()).then_some(Mail {
            version: fleet.version,
            at,
            notifications,
        })
    }

    /// Left long enough (`OUTBOX_GRACE`) that any pass over the fleet may publish it — or
    /// at once, if it begins a lifecycle hook (`holds_hook`).
    pub fn due(&self, now: Timestamp) -> bool {
        self.holds_hook() || now >= self.at + OUTBOX_GRACE
    }

    /// It carries a lifecycle hook's notification (`HOOK_NOTIFICATIONS`).
    pub fn holds_hook(&self) -> bool {
        self.notifications
            .iter()
            .any(|n| HOOK_NOTIFICATIONS.contains(&n.detail_type.as_str()))
    }
}

impl<T: Table> Store<T> {
    /// Removes the outbox items of these commits (their notifications were published): one
    /// DeleteItem each (usually one), which the functions' role may make; one already gone is
    /// no error.
    pub async fn remove_mail(&self, name: &FleetName, versions: &[u64]) -> Result<()> {
        for version in versions {
            self.table.delete(&mail_key(name, *version)).await?;
        }
        Ok(())
    }
}
