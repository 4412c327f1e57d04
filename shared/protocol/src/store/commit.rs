//! Writing a change: one transaction holding the fleet record (conditional on the version read),
//! the touched instances, the history entry, the event's record and the notifications the change
//! publishes (the outbox item, `outbox`); and the inbox, where a fleet-wide event that keeps
//! losing the race puts its intent with a write no race can fail.
//!
//! The event's record (Powertools-style status and expiry) is never written on its own: the claim
//! rides in the transaction that applies the event's intent, and the completion in the one that
//! records what EC2 answered — two writes every event makes anyway. A separate lock before the
//! work (as Powertools takes) would cost an extra write per event and protect nothing more: the
//! intent's transaction is conditional on the record's absence, so two deliveries racing before
//! either committed still apply the intent once; the loser learns the record's status from the
//! failed condition (the old item comes back with it) and returns without acting. What a
//! duplicate may still spend before that point are reads (the fleet, EC2's view).

use super::items::*;
use super::outbox::Mail;
use super::Store;
use crate::error::{Error, Result};
use crate::ports::table::{
    Cancellation, Condition, Item, Table, Transacted, Write, MAX_TRANSACTION_ITEMS,
};
use crate::variant::Variant;
use phoenix_core::events::{Cause, QueuedIntent};
use phoenix_core::history::HistoryEntry;
use phoenix_core::model::{Fleet, Timestamp};
use phoenix_core::planner::Step;
use phoenix_core::FleetName;

/// The identity of an event for deduplication: its id and a hash of its content, so a different
/// payload reusing an id is caught.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventKey {
    pub id: String,
    pub hash: String,
}

/// How a commit records the event that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventRecord<'a> {
    /// The commit applying the event's intent; the record must not exist (or be past its TTL).
    /// `in_progress_until: Some(t)`: `INPROGRESS`, owned by this invocation until `t` (its
    /// deadline) because commands follow; `None`: `COMPLETED` at once (nothing follows).
    Claim {
        key: &'a EventKey,
        in_progress_until: Option<Timestamp>,
    },
    /// A later commit of the same invocation (the outcomes): the record becomes `COMPLETED`.
    Complete(&'a EventKey),
    /// The commit applying an intent from the fleet's inbox (`Store::enqueue`; its event's
    /// record was completed then): the inbox item is deleted, conditional on its existence, so an
    /// intent is applied once even by two reconciles racing (the loser sees a conflict).
    Dequeue(&'a QueuedIntent),
}

impl<T: Table> Store<T> {
    /// Writes a step atomically, conditional on `before.version` (0: the fleet must not exist),
    /// stamped `now` (the controller's clock). Returns the committed fleet.
    ///
    /// `Error::Conflict` if the version moved (or the queued intent was applied by another).
    /// When claiming an event that has a record already (nothing is written then):
    /// `Error::Duplicate` if it is `COMPLETED`, `Error::InFlight` if it is `INPROGRESS` and its
    /// owner's time has not run out (by `now`), `Error::Unfinished` if it has, and
    /// `Error::Invalid` if its content differs.
    pub async fn commit(
        &self,
        before: &Fleet,
        step: &Step,
        cause: &Cause,
        event: Option<EventRecord<'_>>,
        now: Timestamp,
    ) -> Result<Fleet> {
        let mut next = step.fleet.clone();
        next.version = before.version + 1;
        let name = &next.spec.name;

        let mut writes = vec![Write::Put {
            item: fleet_item(&next, now)?,
            condition: Some(if before.version == 0 {
                Condition::NotExists("pk")
            } else {
                Condition::Eq("version", n(before.version))
            }),
            return_old: false,
        }];
        for id in &step.touched {
            if let Some(inst) = next.instances.get(id) {
                writes.push(put(instance_item(name, inst)?));
            }
        }
        let entry = HistoryEntry::record(&next, &step.touched, cause, &step.changes, now);
        writes.push(Write::Put {
            item: history_item(name, &entry)?,
            condition: Some(Condition::NotExists("pk")),
            return_old: false,
        });
        // The notifications go with the change that causes them (published after the commit).
        if let Some(mail) = Mail::of(&next, &step.changes, now) {
            writes.push(put(mail_item(name, &mail)?));
        }
        let claim_at = writes.len();
        let claimed = match event {
            Some(EventRecord::Claim {
                key,
                in_progress_until,
            }) => {
                writes.push(claim(key, name, Some(next.version), in_progress_until, now));
                Some(key)
            }
            Some(EventRecord::Complete(key)) => {
                writes.push(complete(key, name, next.version, now));
                None
            }
            Some(EventRecord::Dequeue(queued)) => {
                if self.variant != Variant::KeepQueued {
                    writes.push(Write::Delete {
                        key: inbox_key(name, queued),
                        condition: Some(Condition::Exists("pk")),
                    });
                }
                // The event's record now points at the entry it caused. No condition: a record
                // past its TTL (queued for days) must not keep the intent from being applied; one
                // written again here has no content hash, and matches any content.
                if let Some(id) = &queued.cause.event_id {
                    writes.push(Write::Update {
                        key: event_key(id),
                        set: vec![("version", n(next.version))],
                        set_if_absent: vec![
                            ("expires_at", n((now + EVENT_TTL).timestamp())),
                            ("status", s(STATUS_COMPLETED)),
                        ],
                        remove: Vec::new(),
                        condition: None,
                    });
                }
                None
            }
            None => None,
        };
        if before.version == 0 {
            writes.push(put(item(index_key(name), [])));
        }
        if writes.len() > MAX_TRANSACTION_ITEMS {
            return Err(Error::Permanent {
                service: "dynamodb",
                message: format!("a step of {} writes exceeds one transaction", writes.len()),
            });
        }
        let count = writes.len();
        match self.table.transact(writes).await? {
            Transacted::Committed { request_id } => {
                tracing::info!(
                    fleet = %name,
                    version = next.version,
                    writes = count,
                    aws_request_id = request_id.as_deref().unwrap_or("-"),
                    "committed"
                );
                next.complete = step.fleet.complete;
                Ok(next)
            }
            Transacted::Cancelled(reasons) => {
                if let (Some(key), Some(Cancellation::ConditionFailed(old))) =
                    (claimed, reasons.get(claim_at))
                {
                    return Err(self.already_recorded(key, old.clone(), now).await);
                }
                // The fleet's version moved (its record is the first item), the history entry of
                // that version exists, or the queued intent was applied by another.
                let condition_failed = reasons
                    .iter()
                    .any(|r| matches!(r, Cancellation::ConditionFailed(_)));
                if condition_failed && before.version == 0 {
                    return Err(Error::Invalid(phoenix_core::Error::invalid(
                        "fleet",
                        format!("fleet {name} already exists"),
                    )));
                }
                Err(cancelled(name.as_str(), &reasons))
            }
        }
    }

    /// Records an event that changes nothing — its intent was applied before, or no longer
    /// applies (an instance already healthy reported healthy again) — with nothing but its
    /// record, `COMPLETED`, and why it changed nothing: no history entry, no new fleet version,
    /// so events that do change the fleet do not lose their race to it. Fails as a claim does
    /// (`commit`) if the event has a record.
    pub async fn record_unchanged(
        &self,
        fleet: &FleetName,
        key: &EventKey,
        why: &str,
        now: Timestamp,
    ) -> Result<()> {
        let mut write = claim(key, fleet, None, None, now);
        if let Write::Put { item, .. } = &mut write {
            item.insert("unchanged".into(), s(why));
        }
        match self.table.transact(vec![write]).await? {
            Transacted::Committed { .. } => Ok(()),
            Transacted::Cancelled(reasons) => match reasons.first() {
                Some(Cancellation::ConditionFailed(old)) => {
                    Err(self.already_recorded(key, old.clone(), now).await)
                }
                _ => Err(cancelled(fleet.as_str(), &reasons)),
            },
        }
    }

    /// Puts a fleet-wide event's intent in the fleet's inbox and completes the event's record,
    /// in one transaction that does not depend on the fleet's version, so it cannot lose a race
    /// (see `QueuedIntent`). Fails as a claim does (`commit`) if the event has a record, and with
    /// `Error::NotFound` if the fleet does not exist.
    pub async fn enqueue(
        &self,
        name: &FleetName,
        queued: &QueuedIntent,
        key: &EventKey,
        now: Timestamp,
    ) -> Result<()> {
        let writes = vec![
            Write::Check {
                key: meta_key(name),
                condition: Condition::Exists("pk"),
            },
            put(inbox_item(name, queued)?),
            // Completed, without a version until the commit that applies it sets one.
            claim(key, name, None, None, now),
        ];
        let reasons = match self.table.transact(writes).await? {
            Transacted::Committed { .. } => {
                tracing::info!(fleet = %name, event = %key.id, "intent queued");
                return Ok(());
            }
            Transacted::Cancelled(reasons) => reasons,
        };
        if let Some(Cancellation::ConditionFailed(old)) = reasons.get(2) {
            return Err(self.already_recorded(key, old.clone(), now).await);
        }
        if let Some(Cancellation::ConditionFailed(_)) = reasons.first() {
            return Err(Error::NotFound(format!("unknown fleet {name}")));
        }
        Err(cancelled(name.as_str(), &reasons))
    }

    /// `Ok` if the event has no record; otherwise the error a claim would meet (`Duplicate`,
    /// `InFlight`, `Unfinished` or `Invalid`, as for `commit`). Read only where planning the
    /// event failed, to tell a redelivery from bad input.
    pub async fn check_event(&self, key: &EventKey, now: Timestamp) -> Result<()> {
        match self.table.get(&event_key(&key.id)).await? {
            None => Ok(()),
            Some(item) => Err(self.already_recorded(key, Some(item), now).await),
        }
    }

    /// The error for an event whose claim failed because it has a record: different content under
    /// the same id is refused; otherwise what to do depends on the record's status (see
    /// `commit`). `old` is the record the failed condition returned, if it did.
    async fn already_recorded(&self, key: &EventKey, old: Option<Item>, now: Timestamp) -> Error {
        let old = match old {
            Some(item) => Some(item),
            None => match self.table.get(&event_key(&key.id)).await {
                Ok(item) => item,
                Err(e) => return e,
            },
        };
        // Gone in between (TTL): the next attempt claims it; until then, a plain conflict.
        let Some(record) = old.as_ref().map(decode_event) else {
            return Error::Conflict(format!("event {}", key.id));
        };
        if !record.hash.is_empty() && record.hash != key.hash {
            return Error::Invalid(phoenix_core::Error::Event(format!(
                "event id {} was already used for different content",
                key.id
            )));
        }
        match record.standing(now) {
            Standing::Completed => Error::Duplicate(key.id.clone()),
            Standing::InProgress => Error::InFlight(key.id.clone()),
            Standing::Unfinished if self.variant == Variant::LapsedAsCompleted => {
                Error::Duplicate(key.id.clone())
            }
            Standing::Unfinished => Error::Unfinished(key.id.clone()),
        }
    }
}

fn put(item: Item) -> Write {
    Write::Put {
        item,
        condition: None,
        return_old: false,
    }
}

/// The event record claimed by the commit that applies the event's intent: conditional on no
/// record (or one past its TTL, which DynamoDB deletes up to days late), returning the old record
/// when the condition fails so the loser needs no extra read.
fn claim(
    key: &EventKey,
    fleet: &FleetName,
    version: Option<u64>,
    in_progress_until: Option<Timestamp>,
    now: Timestamp,
) -> Write {
    let mut record = item(
        event_key(&key.id),
        [
            ("hash", s(&key.hash)),
            ("fleet", s(fleet.as_str())),
            ("expires_at", n((now + EVENT_TTL).timestamp())),
        ],
    );
    if let Some(v) = version {
        record.insert("version".into(), n(v));
    }
    match in_progress_until {
        Some(until) => {
            record.insert("status".into(), s(STATUS_IN_PROGRESS));
            record.insert("in_progress_until".into(), n(until.timestamp_millis()));
        }
        None => {
            record.insert("status".into(), s(STATUS_COMPLETED));
        }
    }
    Write::Put {
        item: record,
        condition: Some(Condition::Or(vec![
            Condition::NotExists("pk"),
            Condition::Lt("expires_at", n(now.timestamp())),
        ])),
        return_old: true,
    }
}

/// Marks a claimed event `COMPLETED`, in the transaction recording its outcomes. No condition:
/// only the invocation that claimed the record completes it, and failing the outcomes over the
/// record would be worse than any state of the record.
fn complete(key: &EventKey, fleet: &FleetName, version: u64, now: Timestamp) -> Write {
    Write::Update {
        key: event_key(&key.id),
        set: vec![
            ("status", s(STATUS_COMPLETED)),
            ("hash", s(&key.hash)),
            ("fleet", s(fleet.as_str())),
            ("completed_version", n(version)),
            ("expires_at", n((now + EVENT_TTL).timestamp())),
        ],
        set_if_absent: Vec::new(),
        remove: vec!["in_progress_until"],
        condition: None,
    }
}

/// The error for a transaction cancelled for a reason other than the event's record: a failed
/// condition or another transaction on the same item means another writer got there first
/// (re-read and re-plan); throttling is retried later; anything else is transient.
fn cancelled(fleet: &str, reasons: &[Cancellation]) -> Error {
    let any = |f: fn(&Cancellation) -> bool| reasons.iter().any(f);
    if any(|r| {
        matches!(
            r,
            Cancellation::ConditionFailed(_) | Cancellation::TransactionConflict
        )
    }) {
        return Error::Conflict(fleet.to_string());
    }
    let named: Vec<&str> = reasons
        .iter()
        .filter_map(|r| match r {
            Cancellation::Other(code) => Some(code.as_str()),
            _ => None,
        })
        .collect();
    let message = format!("transaction cancelled: {}", named.join(", "));
    if named
        .iter()
        .any(|c| c.contains("Throttl") || c.contains("Throughput"))
    {
        Error::Throttled {
            service: "dynamodb",
            message,
        }
    } else {
        Error::Transient {
            service: "dynamodb",
            message,
        }
    }
}
