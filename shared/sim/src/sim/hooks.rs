//! The lifecycle hooks' handler: what a team's bootstrap check or drain script does with the
//! `InstanceLaunching` and `InstanceTerminating` notifications phoenix publishes. It answers each
//! with a `LifecycleActionCompleted` event (source `phoenix`, delivered as health reports are)
//! after a while: mostly CONTINUE, ABANDON now and then — at launch, mostly for an instance of a
//! bad image, whose bootstrap check fails. In the chaos phase it also answers some never (the
//! timeout decides), some after their timeout, and some twice. A notification published again
//! (the same `notification_id`) is dropped, as a consumer of an at-least-once bus does.

use super::{Sim, What};
use crate::ec2::Badness;
use chrono::Duration;
use phoenix_core::events::Intent;
use phoenix_core::model::{HookKind, HookResult, Timestamp};
use phoenix_core::InstanceId;
use std::collections::{BTreeMap, BTreeSet};

/// What the handler knows and has yet to do.
#[derive(Debug, Default)]
pub(super) struct HookHandler {
    /// Notifications read, by id.
    seen: BTreeSet<String>,
    /// Its verdict on each instance's hook (every answer about it says the same).
    verdicts: BTreeMap<(InstanceId, HookKind), HookResult>,
    /// Answers to send, by when.
    due: BTreeMap<(Timestamp, u64), Intent>,
    seq: u64,
}

impl Sim {
    /// Reads the hook notifications that reached the bus, and sends the answers due.
    pub(super) fn hook_handler(&mut self) {
        let mut send = Vec::new();
        {
            let mut w = self.world.lock();
            let w = &mut *w;
            let now = w.now;
            let h = &mut self.hooks;
            for n in std::mem::take(&mut w.hook_notices) {
                if !h.seen.insert(n.id.clone()) {
                    continue;
                }
                let bad = w
                    .ec2
                    .vms
                    .get(&n.instance)
                    .is_some_and(|vm| vm.born != Badness::Good);
                let abandon = match n.hook {
                    HookKind::Launching if bad => 700,
                    HookKind::Launching => 50,
                    HookKind::Terminating => 100,
                };
                let drawn = if w.rng.chance(abandon) {
                    HookResult::Abandon
                } else {
                    HookResult::Continue
                };
                let result = *h
                    .verdicts
                    .entry((n.instance.clone(), n.hook))
                    .or_insert(drawn);
                let mut at = Vec::new();
                if !w.chaos {
                    at.push(now + Duration::seconds(w.rng.range(2, 30) as i64));
                } else if !w.rng.chance(100) {
                    let first = if w.rng.chance(100) {
                        // Late: after the hook timed out.
                        n.timeout_at.max(now) + Duration::seconds(w.rng.range(0, 120) as i64)
                    } else {
                        now + Duration::seconds(w.rng.range(2, 90) as i64)
                    };
                    at.push(first);
                    if w.rng.chance(100) {
                        at.push(first + Duration::seconds(w.rng.range(1, 120) as i64));
                    }
                }
                let when: Vec<String> = at
                    .iter()
                    .map(|t| format!("+{}s", (*t - now).num_seconds()))
                    .collect();
                w.note(format!(
                    "hook handler: {} {} of {}: {} {}",
                    n.id,
                    n.hook.as_str(),
                    n.instance,
                    result.as_str(),
                    if when.is_empty() {
                        "never".to_string()
                    } else {
                        when.join(" and ")
                    }
                ));
                for t in at {
                    h.seq += 1;
                    h.due.insert(
                        (t, h.seq),
                        Intent::LifecycleActionCompleted {
                            instance: n.instance.clone(),
                            hook: n.hook,
                            result,
                        },
                    );
                }
            }
            while let Some(entry) = h.due.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                send.push(entry.remove());
            }
        }
        for intent in send {
            self.emit(What::Intent(intent));
        }
    }
}
