//! The table port's calls, served from the simulated table, with the faults of DynamoDB in the
//! chaos phase and the books, the trace and the checks kept up with each commit.

use super::World;
use crate::check::Checker;
use crate::ec2::FLEET;
use crate::table::TableState;
use phoenix_core::events::{Change, Intent};
use phoenix_core::model::{Lifecycle, Timestamp};
use phoenix_core::InstanceId;
use phoenix_protocol::error::{Error, Result};
use phoenix_protocol::ports::table::{Cancellation, Item, Key, Query, SortKeys, Transacted, Write};
use phoenix_protocol::store::items::{
    decode_event, decode_mail, decode_queued, Standing, INBOX, INST, MAIL, MAIL_END,
};
use std::collections::BTreeSet;

fn summarize(changes: &[Change]) -> String {
    let ids = |v: &[InstanceId]| {
        v.iter()
            .map(InstanceId::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = String::new();
    for c in changes {
        let s = match c {
            Change::LaunchDecided {
                token,
                count,
                image,
                ..
            } => format!("decide {token} x{count} {image}"),
            Change::LaunchRetried { token } => format!("retry {token}"),
            Change::Launched {
                token, instances, ..
            } => format!("adopt {token}: {}", ids(instances)),
            Change::LaunchFailed { token, .. } => format!("{token} failed"),
            Change::TerminationDecided { instance, reason } => format!("end {instance} ({reason})"),
            Change::Terminated { instances, .. } if instances.is_empty() => continue,
            Change::Terminated { instances, .. } => format!("gone {}", ids(instances)),
            Change::HealthChanged { instance, health } => format!(
                "{instance} {}",
                match health {
                    phoenix_core::model::Health::Healthy => "healthy",
                    phoenix_core::model::Health::Unknown => "unknown",
                    phoenix_core::model::Health::Unhealthy { .. } => "failed",
                }
            ),
            Change::StateChanged { .. } => continue,
            Change::Ignored { reason } => format!("ignored: {reason}"),
            other => phoenix_core::history::describe(other),
        };
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(&s);
    }
    if out.is_empty() {
        out.push_str("nothing");
    }
    out
}

/// The changes a history entry recorded, without decoding the state it carries.
#[derive(serde::Deserialize)]
struct EntryChanges {
    version: u64,
    /// The instant the step was planned at (the commit's `now`).
    at: Timestamp,
    changes: Vec<Change>,
}

impl World {
    /// DynamoDB throttling that outlasted the SDK's retries.
    fn dynamo_throttled(&mut self, call: &str) -> Result<()> {
        if self.chaos_fault(self.service_faults.throttle) {
            let who = self.who();
            self.note(format!("{who} {call} throttled"));
            return Err(Error::Throttled {
                service: "dynamodb",
                message: format!("ThrottlingException ({call})"),
            });
        }
        Ok(())
    }

    pub fn table_get(&mut self, key: &Key) -> Result<Option<Item>> {
        self.dynamo_throttled("GetItem")?;
        let item = self.table.get(key).cloned();
        // Reading an event record that is in progress past its owner's deadline: the event was
        // applied and not finished.
        if let Some(i) = &item {
            if key.pk.starts_with("EVENT#")
                && decode_event(i).standing(self.now) == Standing::Unfinished
            {
                self.met_unfinished();
            }
        }
        Ok(item)
    }

    pub fn table_batch_get(&mut self, keys: &[Key]) -> Result<Vec<Item>> {
        self.dynamo_throttled("BatchGetItem")?;
        self.table
            .batch_get(keys)
            .map_err(|e| self.invalid("BatchGetItem", e.0))
    }

    pub fn table_query(&mut self, q: &Query) -> Result<Vec<Item>> {
        self.dynamo_throttled("Query")?;
        let items = self.table.query(q);
        // A whole-fleet load: the inbox, the live instances and the outbox.
        if q.pk == format!("FLEET#{FLEET}")
            && q.sort == SortKeys::Between(INBOX.into(), MAIL_END.into())
        {
            // Every record it read: live ones, and released ones (out of the instance index,
            // still the fleet's to untag).
            let live: BTreeSet<InstanceId> = items
                .iter()
                .filter_map(|i| i.get("sk").and_then(|v| v.as_s()))
                .filter_map(|sk| sk.strip_prefix(INST))
                .filter_map(|id| InstanceId::parse(id).ok())
                .collect();
            let who = self.who();
            let version = self.books.version();
            self.note(format!("{who} loads v{version} ({} live)", live.len()));
            if let Some(inv) = self.invocation() {
                inv.loaded_live = live;
                inv.loaded_after |= inv.met_unfinished;
            }
        }
        Ok(items)
    }

    pub fn table_query_index(
        &mut self,
        attribute: &str,
        value: &str,
        limit: usize,
    ) -> Result<Vec<Item>> {
        self.dynamo_throttled("Query")?;
        Ok(self.table.query_index(
            phoenix_protocol::store::INSTANCE_INDEX,
            attribute,
            value,
            limit,
        ))
    }

    pub fn table_delete(&mut self, key: &Key) -> Result<()> {
        self.dynamo_throttled("DeleteItem")?;
        self.table.delete_all(std::slice::from_ref(key));
        self.books.apply(&self.table, key);
        Ok(())
    }

    pub fn table_delete_all(&mut self, keys: &[Key]) -> Result<()> {
        self.dynamo_throttled("BatchWriteItem")?;
        self.table.delete_all(keys);
        for k in keys {
            self.books.apply(&self.table, k);
        }
        Ok(())
    }

    fn invalid(&mut self, call: &str, why: String) -> Error {
        self.violate(
            "transaction",
            format!("{call} that DynamoDB refuses: {why}"),
        );
        Error::Permanent {
            service: "dynamodb",
            message: format!("ValidationException: {why}"),
        }
    }

    pub fn table_transact(&mut self, writes: Vec<Write>) -> Result<Transacted> {
        if let Err(e) = TableState::validate(&writes) {
            return Err(self.invalid("TransactWriteItems", e.0));
        }
        self.dynamo_throttled("TransactWriteItems")?;
        // The EC2 call budget's counter (`phoenix_protocol::budget`): not the fleet's state. A
        // refusal is the invocation denied EC2 for now.
        if let [Write::Add { key, .. }] = writes.as_slice() {
            if key.pk.starts_with("BUDGET#") {
                let (out, _) = self.table.transact(writes);
                let denied = matches!(out, Transacted::Cancelled(_));
                if let Some(inv) = self.invocation() {
                    inv.ec2_denied = denied;
                }
                return Ok(out);
            }
        }
        let who = self.who();
        if self.chaos_fault(self.service_faults.conflict) {
            self.stats.conflicts += 1;
            self.note(format!("{who} transaction conflict"));
            let mut reasons = vec![Cancellation::None; writes.len()];
            reasons[0] = Cancellation::TransactionConflict;
            if let Some(inv) = self.invocation() {
                inv.pass_refused = true;
            }
            return Ok(Transacted::Cancelled(reasons));
        }
        let claims: Vec<bool> = writes
            .iter()
            .map(|w| {
                matches!(
                    w,
                    Write::Put {
                        return_old: true,
                        ..
                    }
                )
            })
            .collect();
        let history = writes.iter().find_map(|w| match w {
            Write::Put { item, .. } => Key::of(item)
                .filter(|k| k.sk.starts_with("HIST#"))
                .and_then(|_| item.get("entry").and_then(|v| v.as_s()).map(str::to_string)),
            _ => None,
        });
        // The notifications the commit writes to the fleet's outbox.
        let mail: Vec<Item> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Put { item, .. }
                    if Key::of(item).is_some_and(|k| k.sk.starts_with(MAIL)) =>
                {
                    Some(item.clone())
                }
                _ => None,
            })
            .collect();
        // Queued intents, by key, with whether each is about one instance (a health report, a
        // lifecycle hook's answer) rather than the fleet.
        let enqueued: Vec<(String, bool)> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Put { item, .. } => {
                    let key = Key::of(item)?.sk.strip_prefix(INBOX)?.to_string();
                    let one = decode_queued(item).is_ok_and(|q| {
                        matches!(
                            q.intent,
                            Intent::HealthCheckFailed { .. }
                                | Intent::HealthCheckPassed { .. }
                                | Intent::LifecycleActionCompleted { .. }
                        )
                    });
                    Some((key, one))
                }
                _ => None,
            })
            .collect();
        // Applying a queued intent: its event's record gets the version (`EventRecord::Dequeue`).
        let applied_queued: Vec<String> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Update { key, set, .. } if set.iter().any(|(a, _)| *a == "version") => {
                    key.pk.strip_prefix("EVENT#").map(str::to_string)
                }
                _ => None,
            })
            .collect();
        let (out, applied) = self.table.transact(writes);
        let Some(applied) = applied else {
            self.stats.conflicts += 1;
            if let Transacted::Cancelled(reasons) = &out {
                for (reason, claim) in reasons.iter().zip(&claims) {
                    if let (Cancellation::ConditionFailed(Some(old)), true) = (reason, claim) {
                        if decode_event(old).standing(self.now) == Standing::Unfinished {
                            self.met_unfinished();
                        }
                    }
                }
            }
            self.note(format!("{who} commit refused"));
            if let Some(inv) = self.invocation() {
                inv.pass_refused = true;
            }
            return Ok(out);
        };
        for k in &applied.written {
            self.books.apply(&self.table, k);
        }
        for item in &mail {
            match decode_mail(item) {
                Ok(m) => {
                    self.stats.notifications += m.notifications.len() as u64;
                    self.checker.on_mail(&m.notifications);
                }
                Err(e) => self.violate("notification", format!("unreadable outbox item: {e}")),
            }
        }
        if let Some(inv) = self.invocation() {
            inv.pass_refused = false;
            inv.committed = true;
        }
        for (key, one) in &enqueued {
            self.stats.queued += 1;
            self.stats.queued_instance_events += u64::from(*one);
            self.note(format!("{who} queues {key}"));
            if let Some(problem) = self.checker.on_enqueue(key) {
                self.violate("inbox", problem);
            }
        }
        if let Some(entry) = history {
            match serde_json::from_str::<EntryChanges>(&entry) {
                Ok(e) => self.committed(&e.changes, e.version, e.at, &applied_queued),
                Err(e) => self.violate("history", format!("unreadable history entry: {e}")),
            }
        }
        if self.chaos_fault(self.service_faults.lost) {
            self.note(format!(
                "{who} loses the answer of a transaction that was applied"
            ));
            return Err(Error::Transient {
                service: "dynamodb",
                message: "RequestTimeout (TransactWriteItems, after retries)".into(),
            });
        }
        Ok(out)
    }

    fn met_unfinished(&mut self) {
        let who = self.who();
        self.note(format!("{who} meets its event applied but unfinished"));
        if let Some(inv) = self.invocation() {
            if !inv.met_unfinished {
                inv.met_unfinished = true;
                inv.loaded_after = false;
                inv.observed_after = false;
            }
        }
    }

    /// A commit went through, recording `changes` at `version`.
    fn committed(
        &mut self,
        changes: &[Change],
        version: u64,
        at: Timestamp,
        applied_queued: &[String],
    ) {
        self.stats.commits += 1;
        let who = self.who();
        self.note(format!("{who} commits v{version}: {}", summarize(changes)));
        let decided: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                Change::LaunchDecided { token, .. } => Some(token.clone()),
                _ => None,
            })
            .collect();
        if let Some(inv) = self.invocation() {
            inv.decided.extend(decided);
        }
        for event in applied_queued {
            self.stats.dequeued += 1;
            let key = self
                .checker
                .queued_key_of(event)
                .unwrap_or_else(|| event.clone());
            if let Some(problem) = self.checker.on_dequeue(&key) {
                self.violate("inbox", problem);
            }
        }
        self.checker.on_commit(&self.books, changes);
        self.custody.on_commit(changes, version);
        if let Some(problem) = Checker::check_windows(&self.books, changes, at) {
            self.violate("window", problem);
        }
        if let Some(problem) = self.checker.check_rollback(&self.books, changes) {
            self.violate("capacity-rollback", problem);
        }
        if let Some(problem) = Checker::check_protected(&self.books, changes) {
            self.violate("protected", problem);
        }
        if let Some(read) = self.invocation().and_then(|inv| inv.groups_read.take()) {
            self.traffic.on_groups_read(read);
        }
        self.traffic.on_commit(changes, at);
        for (kind, problem) in
            self.traffic
                .check_commit(&self.books, &self.ec2, &self.elb, changes, at, self.now)
        {
            self.violate(kind, problem);
        }
        for c in changes {
            match c {
                Change::RolloutWaiting { .. } => self.stats.rollouts_waiting += 1,
                Change::RolloutStarted { changed, .. } if !changed.is_empty() => {
                    self.stats.rollouts += 1;
                    self.stats.drift_rollouts += 1;
                }
                Change::FleetUpdated { .. } => self.stats.fleet_updates += 1,
                Change::RolloutStarted { .. } => self.stats.rollouts += 1,
                Change::RolloutSucceeded { .. } => self.stats.succeeded += 1,
                Change::RolloutRolledBack { .. } => self.stats.rolled_back += 1,
                Change::RolloutAborted { .. } => self.stats.aborted += 1,
                Change::RolloutSuperseded { .. } => self.stats.superseded += 1,
                Change::ReplacementHalted { .. } => self.stats.breaker_trips += 1,
                Change::RolloutStalled { .. } => self.stats.stalls += 1,
                Change::Registered { instances, .. } => {
                    self.stats.registered += instances.len() as u64
                }
                Change::DrainStarted { .. } => self.stats.drains += 1,
                Change::TakeoverStarted { .. } => self.stats.takeovers += 1,
                Change::OfferingsRefused { offerings, .. } => {
                    self.stats.offerings_refused += offerings.len() as u64
                }
                Change::CapacityUnavailable { .. } => self.stats.capacity_unavailable += 1,
                Change::LaunchDecided { reason, .. } if reason.starts_with("rebalance") => {
                    self.stats.rebalances += 1
                }
                Change::TerminationDecided { reason, .. }
                    if reason.contains("max_instance_lifetime") =>
                {
                    self.stats.lifetime_retirements += 1
                }
                Change::LifecycleHookCompleted { by, .. } if by == "timeout" => {
                    self.stats.hooks_timed_out += 1
                }
                Change::LifecycleHookCompleted { .. } => self.stats.hooks_answered += 1,
                Change::ImageQuarantined { image, reason } => {
                    if self.ec2.bad_images.contains_key(image) {
                        self.stats.quarantined_bad += 1;
                    } else {
                        self.stats.quarantined_good += 1;
                        // What was wrong, in the world, with the instance the reason names.
                        let vm = reason
                            .split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                            .find_map(|w| InstanceId::parse(w).ok())
                            .and_then(|id| self.ec2.vms.get(&id));
                        if reason.contains("progress deadline") {
                            self.stats.good_by_deadline += 1;
                        } else if reason.contains("outside phoenix")
                            || vm.is_some_and(|vm| {
                                matches!(vm.state, Lifecycle::Stopping | Lifecycle::Stopped)
                            })
                        {
                            self.stats.good_by_stop += 1;
                        } else if vm.is_some_and(|vm| vm.impaired || self.ec2.zone_down(vm)) {
                            self.stats.good_by_host += 1;
                        } else if vm.is_some_and(|vm| vm.app_failed) {
                            self.stats.good_by_app += 1;
                        } else {
                            self.stats.good_by_spurious += 1;
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
