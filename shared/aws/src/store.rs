//! Fleet state in one DynamoDB table (single-table design).
//!
//! | item | pk | sk | attributes |
//! |---|---|---|---|
//! | fleet | `FLEET#<name>` | `META` | `version`, `state` (spec, rollout, pending launches, counters; JSON) |
//! | instance | `FLEET#<name>` | `INST#<id>` | `instance_id` (GSI key), `data` (JSON), `gone` + `expires_at` once terminated |
//! | history | `FLEET#<name>` | `HIST#<version, 12 digits>` | `at`, `entry` (cause + changes; JSON) |
//! | queued intent | `FLEET#<name>` | `INBOX#<event time, ms>#<event id>` | `queued` (intent + cause; JSON) |
//! | handled event | `EVENT#<event id>` | `EVENT` | `hash`, `fleet`, `version` (once applied), `status` (`INPROGRESS`/`COMPLETED`), `in_progress_until` (ms), `completed_version`, `expires_at` |
//! | fleet index | `FLEETS` | `FLEET#<name>` | (lists fleets without a scan) |
//!
//! GSI `by-instance` (hash `instance_id`) finds an instance's fleet in one query, so a health
//! event reads two items, not the fleet. Every change is one TransactWriteItems: the fleet item
//! conditional on the version read, the touched instance items, one history item and the event
//! record — so a change and its cause are never written apart.

use crate::error::{Error, Result};
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, DeleteRequest, KeysAndAttributes, Put,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use chrono::Duration;
use phoenix_core::events::{Cause, QueuedIntent};
pub use phoenix_core::history::HistoryEntry;
use phoenix_core::model::{Fleet, Instance, Timestamp};
use phoenix_core::planner::Step;
use phoenix_core::{FleetName, InstanceId};
use std::collections::HashMap;
use std::future::Future;

pub const INSTANCE_INDEX: &str = "by-instance";
/// Terminated instances are kept this long so late events about them are recognised.
const TOMBSTONE_TTL: Duration = Duration::days(7);
/// Handled-event records outlive EventBridge's longest redelivery window (24 h).
const EVENT_TTL: Duration = Duration::days(2);

/// The identity of an event for deduplication: its id and a hash of its content, so a different
/// payload reusing an id is caught.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventKey {
    pub id: String,
    pub hash: String,
}

/// How a commit records the event that caused it (Powertools-style status and expiry).
///
/// The record is never written on its own: the claim rides in the transaction that applies the
/// event's intent, and the completion in the transaction that records what EC2 answered — two
/// writes every event makes anyway. A separate `PutItem` lock before the work (as Powertools does)
/// would cost one extra write per event (two with its release) and protect nothing more: the
/// intent's transaction is conditional on the record's absence, so two deliveries racing before
/// either committed still apply the intent once; the loser learns the record's status from the
/// failed condition (`ReturnValuesOnConditionCheckFailure = ALL_OLD`) and returns without acting.
/// What a duplicate may still spend before that point are reads (the fleet, EC2's view).
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
    /// The commit applying an intent from the fleet's inbox (`StateStore::enqueue`; its event's
    /// record was completed then): the inbox item is deleted, conditional on its existence, so an
    /// intent is applied once even by two reconciles racing (the loser sees a conflict).
    Dequeue(&'a QueuedIntent),
}

pub const STATUS_IN_PROGRESS: &str = "INPROGRESS";
pub const STATUS_COMPLETED: &str = "COMPLETED";

/// The state store port.
pub trait StateStore: Send + Sync {
    /// The fleet with every live instance.
    fn load_fleet(&self, name: &FleetName) -> impl Future<Output = Result<Fleet>> + Send;
    /// The fleet an instance belongs to, holding only that instance (live or terminated).
    fn load_for_instance(&self, id: &InstanceId) -> impl Future<Output = Result<Fleet>> + Send;
    /// The fleet holding only the named instances (those that exist).
    fn load_partial(
        &self,
        name: &FleetName,
        ids: &[InstanceId],
    ) -> impl Future<Output = Result<Fleet>> + Send;
    /// Writes a step atomically, conditional on `before.version` (0: the fleet must not exist),
    /// stamped `now` (the controller's clock).
    /// Returns the committed fleet. `Error::Conflict` if the version moved. When claiming an
    /// event that has a record already (nothing is written then): `Error::Duplicate` if it is
    /// `COMPLETED`, `Error::InFlight` if it is `INPROGRESS` and its owner's time has not run out
    /// (by `now`), `Error::Unfinished` if it has, and `Error::Invalid` if its content differs.
    fn commit(
        &self,
        before: &Fleet,
        step: &Step,
        cause: &Cause,
        event: Option<EventRecord<'_>>,
        now: Timestamp,
    ) -> impl Future<Output = Result<Fleet>> + Send;
    /// Puts a fleet-wide event's intent in the fleet's inbox and completes the event's record,
    /// in one transaction that does not depend on the fleet's version, so it cannot lose a race
    /// (see `QueuedIntent`). Fails as a claim does (`commit`) if the event has a record, and with
    /// `Error::NotFound` if the fleet does not exist.
    fn enqueue(
        &self,
        name: &FleetName,
        queued: &QueuedIntent,
        key: &EventKey,
        now: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send;
    /// `Ok` if the event has no record; otherwise the error a claim would meet (`Duplicate`,
    /// `InFlight`, `Unfinished` or `Invalid`, as for `commit`). Read only where planning the
    /// event failed, to tell a redelivery from bad input.
    fn check_event(
        &self,
        key: &EventKey,
        now: Timestamp,
    ) -> impl Future<Output = Result<()>> + Send;
    fn list_fleets(&self) -> impl Future<Output = Result<Vec<FleetName>>> + Send;
    /// The newest `limit` history entries, oldest first.
    fn history(
        &self,
        name: &FleetName,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<HistoryEntry>>> + Send;
    /// Every history entry recorded in `[since, until]` (either bound open when `None`), oldest
    /// first. `until` alone gives what `history::replay` needs to rebuild the fleet at `until`.
    fn history_between(
        &self,
        name: &FleetName,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> impl Future<Output = Result<Vec<HistoryEntry>>> + Send;
    /// Deletes a fleet: its record, index entry, instance records and history. Refused while the
    /// fleet (as loaded, complete) has live instances or launches in flight; the fleet record
    /// goes first, conditional on the version loaded (`Error::Conflict` if it moved). Returns how
    /// many items were deleted.
    fn delete_fleet(&self, fleet: &Fleet) -> impl Future<Output = Result<usize>> + Send;
}

#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
fn fleet_pk(name: &FleetName) -> String {
    format!("FLEET#{name}")
}
const INBOX: &str = "INBOX#";

fn inbox_sk(queued: &QueuedIntent) -> String {
    format!("{INBOX}{}", queued.key())
}

fn inst_sk(id: &InstanceId) -> String {
    format!("INST#{id}")
}
fn sdk<E, R>(e: aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Error
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    Error::from_sdk("dynamodb", e)
}
fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Permanent {
        service: "dynamodb",
        message: format!("unreadable {what} item: {e}"),
    }
}
fn get_s<'a>(item: &'a HashMap<String, AttributeValue>, key: &str) -> Result<&'a str> {
    item.get(key)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| corrupt(key, "attribute missing"))
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoStore {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    async fn get_meta(&self, name: &FleetName) -> Result<Fleet> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(fleet_pk(name)))
            .key("sk", s("META"))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk)?;
        let item = out
            .item
            .ok_or_else(|| Error::NotFound(format!("unknown fleet {name}")))?;
        decode_meta(&item)
    }

    fn fleet_item(fleet: &Fleet, now: Timestamp) -> Result<HashMap<String, AttributeValue>> {
        let state = serde_json::to_string(fleet).map_err(|e| corrupt("fleet", e))?;
        Ok(HashMap::from([
            ("pk".into(), s(fleet_pk(&fleet.spec.name))),
            ("sk".into(), s("META")),
            ("version".into(), n(fleet.version)),
            ("state".into(), s(state)),
            ("updated_at".into(), s(now.to_rfc3339())),
        ]))
    }

    fn instance_item(
        fleet: &FleetName,
        inst: &Instance,
    ) -> Result<HashMap<String, AttributeValue>> {
        let mut item = HashMap::from([
            ("pk".into(), s(fleet_pk(fleet))),
            ("sk".into(), s(inst_sk(&inst.id))),
            ("instance_id".into(), s(inst.id.as_str())),
            (
                "data".into(),
                s(serde_json::to_string(inst).map_err(|e| corrupt("instance", e))?),
            ),
        ]);
        if let Some(at) = inst.terminated_at {
            item.insert("gone".into(), AttributeValue::Bool(true));
            item.insert("expires_at".into(), n((at + TOMBSTONE_TTL).timestamp()));
        }
        Ok(item)
    }

    fn put(
        &self,
        item: HashMap<String, AttributeValue>,
        condition: Option<(&str, Vec<(&str, AttributeValue)>)>,
    ) -> Result<TransactWriteItem> {
        let mut put = Put::builder().table_name(&self.table).set_item(Some(item));
        if let Some((expr, values)) = condition {
            put = put.condition_expression(expr);
            for (k, v) in values {
                put = put.expression_attribute_values(k, v);
            }
        }
        let put = put.build().map_err(|e| corrupt("put", e))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }
}

fn get_s_or_n(item: &HashMap<String, AttributeValue>, key: &str) -> Result<u64> {
    item.get(key)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt(key, "number missing"))
}

/// The fleet record (`META`), without its instances.
fn decode_meta(item: &HashMap<String, AttributeValue>) -> Result<Fleet> {
    let mut fleet: Fleet =
        serde_json::from_str(get_s(item, "state")?).map_err(|e| corrupt("fleet", e))?;
    fleet.version = get_s_or_n(item, "version")?;
    fleet.complete = false;
    Ok(fleet)
}

fn decode_instance(item: &HashMap<String, AttributeValue>) -> Result<Instance> {
    serde_json::from_str(get_s(item, "data")?).map_err(|e| corrupt("instance", e))
}

impl StateStore for DynamoStore {
    async fn load_fleet(&self, name: &FleetName) -> Result<Fleet> {
        let mut fleet = self.get_meta(name).await?;
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            // `INBOX#` sorts just before `INST#` (and nothing else between): one query reads
            // the queued intents and the instances.
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .filter_expression("attribute_not_exists(gone)")
            .expression_attribute_values(":pk", s(fleet_pk(name)))
            .expression_attribute_values(":from", s(INBOX))
            .expression_attribute_values(":to", s("INST$"))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(sdk)?;
            if get_s(&item, "sk")?.starts_with(INBOX) {
                let queued = serde_json::from_str(get_s(&item, "queued")?)
                    .map_err(|e| corrupt("queued intent", e))?;
                fleet.inbox.push(queued);
            } else {
                let inst = decode_instance(&item)?;
                fleet.instances.insert(inst.id.clone(), inst);
            }
        }
        // The live count is derived state; a full read is the moment to correct any drift.
        fleet.live = fleet.instances.values().filter(|i| i.is_live()).count() as u32;
        fleet.complete = true;
        Ok(fleet)
    }

    async fn load_for_instance(&self, id: &InstanceId) -> Result<Fleet> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(INSTANCE_INDEX)
            .key_condition_expression("instance_id = :id")
            .expression_attribute_values(":id", s(id.as_str()))
            .limit(1)
            .send()
            .await
            .map_err(sdk)?;
        let item = out
            .items
            .unwrap_or_default()
            .into_iter()
            .next()
            .ok_or_else(|| {
                Error::NotFound(format!("instance {id} is not managed by any phoenix fleet"))
            })?;
        let pk = get_s(&item, "pk")?;
        let name = FleetName::parse(pk.trim_start_matches("FLEET#"))?;
        self.load_partial(&name, std::slice::from_ref(id)).await
    }

    /// The fleet record and the instances in one strongly consistent BatchGetItem per 100 keys:
    /// an instance event reads two items in one request, whatever the fleet's size.
    async fn load_partial(&self, name: &FleetName, ids: &[InstanceId]) -> Result<Fleet> {
        let key = |sk: String| {
            HashMap::from([
                ("pk".to_string(), s(fleet_pk(name))),
                ("sk".to_string(), s(sk)),
            ])
        };
        let keys: Vec<_> = std::iter::once(key("META".into()))
            .chain(ids.iter().map(|id| key(inst_sk(id))))
            .collect();
        let mut meta = None;
        let mut instances = Vec::new();
        for chunk in keys.chunks(BATCH_GET) {
            let mut pending = chunk.to_vec();
            for attempt in 0.. {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(pending))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| corrupt("request", e))?;
                let mut out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(sdk)?;
                for item in out
                    .responses
                    .as_mut()
                    .and_then(|r| r.remove(&self.table))
                    .unwrap_or_default()
                {
                    if get_s(&item, "sk")? == "META" {
                        meta = Some(decode_meta(&item)?);
                    } else {
                        instances.push(decode_instance(&item)?);
                    }
                }
                // Keys DynamoDB did not get to (throttling, size): asked again, with a pause.
                pending = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                if pending.is_empty() {
                    break;
                }
                if attempt >= 10 {
                    return Err(Error::Throttled {
                        service: "dynamodb",
                        message: format!("{} keys left unprocessed by BatchGetItem", pending.len()),
                    });
                }
                tokio::time::sleep(std::time::Duration::from_millis(20 << attempt.min(5))).await;
            }
        }
        let mut fleet = meta.ok_or_else(|| Error::NotFound(format!("unknown fleet {name}")))?;
        for inst in instances {
            fleet.instances.insert(inst.id.clone(), inst);
        }
        Ok(fleet)
    }

    async fn commit(
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

        let mut items = Vec::new();
        let fleet_condition = if before.version == 0 {
            ("attribute_not_exists(pk)", vec![])
        } else {
            ("version = :v", vec![(":v", n(before.version))])
        };
        items.push(self.put(Self::fleet_item(&next, now)?, Some(fleet_condition))?);
        for id in &step.touched {
            if let Some(inst) = next.instances.get(id) {
                items.push(self.put(Self::instance_item(name, inst)?, None)?);
            }
        }
        let entry = HistoryEntry::record(&next, &step.touched, cause, &step.changes, now);
        let history = HashMap::from([
            ("pk".into(), s(fleet_pk(name))),
            ("sk".into(), s(format!("HIST#{:012}", next.version))),
            ("at".into(), s(now.to_rfc3339())),
            (
                "entry".into(),
                s(serde_json::to_string(&entry).map_err(|e| corrupt("history", e))?),
            ),
        ]);
        items.push(self.put(history, Some(("attribute_not_exists(pk)", vec![])))?);
        let claim_index = match event {
            Some(EventRecord::Claim { .. }) => Some(items.len()),
            _ => None,
        };
        match event {
            Some(EventRecord::Claim {
                key,
                in_progress_until,
            }) => items.push(self.claim_event(
                key,
                name,
                Some(next.version),
                in_progress_until,
                now,
            )?),
            Some(EventRecord::Complete(key)) => {
                items.push(self.complete_event(key, name, next.version, now)?)
            }
            Some(EventRecord::Dequeue(queued)) => {
                let delete = Delete::builder()
                    .table_name(&self.table)
                    .key("pk", s(fleet_pk(name)))
                    .key("sk", s(inbox_sk(queued)))
                    .condition_expression("attribute_exists(pk)")
                    .build()
                    .map_err(|e| corrupt("delete", e))?;
                items.push(TransactWriteItem::builder().delete(delete).build());
                // The event's record now points at the entry it caused. No condition: a record
                // past its TTL (queued for days) must not keep the intent from being applied; one
                // written again here has no content hash, and matches any content.
                if let Some(id) = &queued.cause.event_id {
                    let update = Update::builder()
                        .table_name(&self.table)
                        .key("pk", s(format!("EVENT#{id}")))
                        .key("sk", s("EVENT"))
                        .update_expression(
                            "SET #v = :v, #e = if_not_exists(#e, :e), #st = if_not_exists(#st, :c)",
                        )
                        .expression_attribute_names("#v", "version")
                        .expression_attribute_names("#e", "expires_at")
                        .expression_attribute_names("#st", "status")
                        .expression_attribute_values(":v", n(next.version))
                        .expression_attribute_values(":c", s(STATUS_COMPLETED))
                        .expression_attribute_values(":e", n((now + EVENT_TTL).timestamp()))
                        .build()
                        .map_err(|e| corrupt("update", e))?;
                    items.push(TransactWriteItem::builder().update(update).build());
                }
            }
            None => {}
        }
        if before.version == 0 {
            let index = HashMap::from([
                ("pk".into(), s("FLEETS")),
                ("sk".into(), s(format!("FLEET#{name}"))),
            ]);
            items.push(self.put(index, None)?);
        }
        if items.len() > 100 {
            return Err(Error::Permanent {
                service: "dynamodb",
                message: format!("a step of {} writes exceeds one transaction", items.len()),
            });
        }

        let items_len = items.len();
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match result {
            Ok(out) => {
                tracing::info!(
                    fleet = %next.spec.name,
                    version = next.version,
                    writes = items_len,
                    aws_request_id = aws_sdk_dynamodb::operation::RequestId::request_id(&out)
                        .unwrap_or("-"),
                    "committed"
                );
                next.complete = step.fleet.complete;
                Ok(next)
            }
            Err(err) => {
                let reasons = cancellation_reasons(&err);
                if reasons.is_empty() {
                    return Err(sdk(err));
                }
                let failed = |i: usize| reasons.get(i).is_some_and(|(c, _)| c == CONDITION_FAILED);
                if let (Some(i), Some(EventRecord::Claim { key, .. })) = (claim_index, event) {
                    if failed(i) {
                        let old = reasons.get(i).and_then(|(_, item)| item.clone());
                        return Err(self.already_recorded(key, old, now).await);
                    }
                }
                // The fleet's version moved (its record is the first item), or the queued intent
                // was applied by another.
                if reasons.iter().any(|(c, _)| c == CONDITION_FAILED) {
                    return Err(if before.version == 0 {
                        Error::Invalid(phoenix_core::Error::invalid(
                            "fleet",
                            format!("fleet {name} already exists"),
                        ))
                    } else {
                        Error::Conflict(name.to_string())
                    });
                }
                Err(sdk(err))
            }
        }
    }

    async fn enqueue(
        &self,
        name: &FleetName,
        queued: &QueuedIntent,
        key: &EventKey,
        now: Timestamp,
    ) -> Result<()> {
        let fleet_exists = ConditionCheck::builder()
            .table_name(&self.table)
            .key("pk", s(fleet_pk(name)))
            .key("sk", s("META"))
            .condition_expression("attribute_exists(pk)")
            .build()
            .map_err(|e| corrupt("condition", e))?;
        let item = HashMap::from([
            ("pk".into(), s(fleet_pk(name))),
            ("sk".into(), s(inbox_sk(queued))),
            (
                "queued".into(),
                s(serde_json::to_string(queued).map_err(|e| corrupt("queued intent", e))?),
            ),
        ]);
        let items = vec![
            TransactWriteItem::builder()
                .condition_check(fleet_exists)
                .build(),
            self.put(item, None)?,
            // Completed, without a version until the commit that applies it sets one.
            self.claim_event(key, name, None, None, now)?,
        ];
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        let Err(err) = result else {
            tracing::info!(fleet = %name, event = %key.id, "intent queued");
            return Ok(());
        };
        let reasons = cancellation_reasons(&err);
        let failed = |i: usize| reasons.get(i).is_some_and(|(c, _)| c == CONDITION_FAILED);
        if failed(2) {
            let old = reasons.get(2).and_then(|(_, item)| item.clone());
            return Err(self.already_recorded(key, old, now).await);
        }
        if failed(0) {
            return Err(Error::NotFound(format!("unknown fleet {name}")));
        }
        Err(sdk(err))
    }

    async fn check_event(&self, key: &EventKey, now: Timestamp) -> Result<()> {
        match self.get_event_item(&key.id).await? {
            None => Ok(()),
            Some(item) => Err(self.already_recorded(key, Some(item), now).await),
        }
    }

    async fn list_fleets(&self) -> Result<Vec<FleetName>> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s("FLEETS"))
            .into_paginator()
            .items()
            .send();
        let mut names = Vec::new();
        while let Some(item) = pages.next().await {
            let item = item.map_err(sdk)?;
            names.push(FleetName::parse(
                get_s(&item, "sk")?.trim_start_matches("FLEET#"),
            )?);
        }
        Ok(names)
    }

    async fn history(&self, name: &FleetName, limit: usize) -> Result<Vec<HistoryEntry>> {
        let mut entries = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :h)")
                .expression_attribute_values(":pk", s(fleet_pk(name)))
                .expression_attribute_values(":h", s("HIST#"))
                .scan_index_forward(false)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk)?;
            for item in out.items.unwrap_or_default() {
                entries.push(decode_entry(&item)?);
                if entries.len() >= limit {
                    break;
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() || entries.len() >= limit {
                break;
            }
        }
        entries.reverse();
        Ok(entries)
    }

    async fn history_between(
        &self,
        name: &FleetName,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> Result<Vec<HistoryEntry>> {
        // `at` is stored as RFC 3339 in UTC, which sorts as time does; the bounds are widened by
        // a second here and applied exactly below, so formatting details cannot lose an entry.
        let mut filters = Vec::new();
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :h)")
            .expression_attribute_values(":pk", s(fleet_pk(name)))
            .expression_attribute_values(":h", s("HIST#"))
            .consistent_read(true);
        if let Some(t) = since {
            filters.push("#at >= :since");
            query = query
                .expression_attribute_values(":since", s((t - Duration::seconds(1)).to_rfc3339()));
        }
        if let Some(t) = until {
            filters.push("#at <= :until");
            query = query
                .expression_attribute_values(":until", s((t + Duration::seconds(1)).to_rfc3339()));
        }
        if !filters.is_empty() {
            query = query
                .filter_expression(filters.join(" AND "))
                .expression_attribute_names("#at", "at");
        }
        let mut pages = query.into_paginator().items().send();
        let mut entries = Vec::new();
        while let Some(item) = pages.next().await {
            let entry = decode_entry(&item.map_err(sdk)?)?;
            if since.is_none_or(|t| entry.at >= t) && until.is_none_or(|t| entry.at <= t) {
                entries.push(entry);
            }
        }
        entries.sort_by_key(|e| e.version);
        Ok(entries)
    }

    async fn delete_fleet(&self, fleet: &Fleet) -> Result<usize> {
        let name = &fleet.spec.name;
        let live = fleet.live_instances().count();
        if !fleet.complete || live > 0 || !fleet.pending.is_empty() {
            return Err(Error::Invalid(phoenix_core::Error::invalid(
                "fleet",
                format!(
                    "fleet {name} still has {live} live instances and {} launches in flight",
                    fleet.pending_count()
                ),
            )));
        }
        let delete = |pk: String, sk: String, condition: bool| {
            let mut d = Delete::builder()
                .table_name(&self.table)
                .key("pk", s(pk))
                .key("sk", s(sk));
            if condition {
                d = d
                    .condition_expression("version = :v")
                    .expression_attribute_values(":v", n(fleet.version));
            }
            d.build()
                .map(|d| TransactWriteItem::builder().delete(d).build())
                .map_err(|e| corrupt("delete", e))
        };
        let result = self
            .client
            .transact_write_items()
            .transact_items(delete(fleet_pk(name), "META".into(), true)?)
            .transact_items(delete("FLEETS".into(), format!("FLEET#{name}"), false)?)
            .send()
            .await;
        if let Err(err) = result {
            let conflict = err.as_service_error().is_some_and(|e| {
                matches!(
                    e,
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(_)
                )
            });
            return Err(if conflict {
                Error::Conflict(name.to_string())
            } else {
                sdk(err)
            });
        }
        Ok(2 + self.purge_fleet_items(name).await?)
    }
}

const CONDITION_FAILED: &str = "ConditionalCheckFailed";

/// Why each item of a cancelled transaction failed (code, and the old item when asked for), in
/// the order of the items; empty if the transaction was not cancelled.
fn cancellation_reasons<R>(
    err: &aws_smithy_runtime_api::client::result::SdkError<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
        R,
    >,
) -> Vec<(String, Option<HashMap<String, AttributeValue>>)> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(t)) => t
            .cancellation_reasons()
            .iter()
            .map(|r| (r.code.clone().unwrap_or_default(), r.item.clone()))
            .collect(),
        _ => Vec::new(),
    }
}

fn decode_entry(item: &HashMap<String, AttributeValue>) -> Result<HistoryEntry> {
    serde_json::from_str::<HistoryEntry>(get_s(item, "entry")?).map_err(|e| corrupt("history", e))
}

/// A handled-event record (`EVENT#<id>`) as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecordItem {
    /// Empty when unknown (a record that expired while its intent was queued, written again).
    pub hash: String,
    pub fleet: String,
    /// The fleet version that applied the event's intent (none while it waits in the inbox).
    pub version: Option<u64>,
    /// `INPROGRESS` or `COMPLETED` (records written before statuses existed read as completed).
    pub status: String,
    /// Set while `INPROGRESS`: when the owning invocation's time runs out.
    pub in_progress_until: Option<Timestamp>,
}

fn decode_event(item: &HashMap<String, AttributeValue>) -> Result<EventRecordItem> {
    let num = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
    };
    let status = item
        .get("status")
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_else(|| STATUS_COMPLETED.to_string());
    let in_progress_until = if status == STATUS_IN_PROGRESS {
        // A record in progress without a time is treated as long expired: finish it.
        Some(
            num("in_progress_until")
                .and_then(chrono::DateTime::from_timestamp_millis)
                .unwrap_or_default(),
        )
    } else {
        None
    };
    Ok(EventRecordItem {
        hash: item
            .get("hash")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default(),
        fleet: item
            .get("fleet")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default(),
        version: num("version").and_then(|v| u64::try_from(v).ok()),
        status,
        in_progress_until,
    })
}

/// BatchWriteItem takes at most 25 requests.
const BATCH_WRITE: usize = 25;
/// BatchGetItem takes at most 100 keys.
const BATCH_GET: usize = 100;

impl DynamoStore {
    /// Deletes every item of a fleet's partition but its record (instances, history), in batches.
    /// Also what is left of a fleet whose record is already gone. Returns how many it deleted.
    pub async fn purge_fleet_items(&self, name: &FleetName) -> Result<usize> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(fleet_pk(name)))
            .projection_expression("pk, sk")
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        let mut keys = Vec::new();
        while let Some(item) = pages.next().await {
            let item = item.map_err(sdk)?;
            if get_s(&item, "sk")? != "META" {
                keys.push(item);
            }
        }
        let deleted = keys.len();
        for chunk in keys.chunks(BATCH_WRITE) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|key| {
                    DeleteRequest::builder()
                        .set_key(Some(key.clone()))
                        .build()
                        .map(|d| WriteRequest::builder().delete_request(d).build())
                        .map_err(|e| corrupt("delete", e))
                })
                .collect::<Result<_>>()?;
            // Unprocessed requests (throttling) are sent again, with a growing pause.
            for attempt in 0..8u64 {
                if requests.is_empty() {
                    break;
                }
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .send()
                    .await
                    .map_err(sdk)?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
                if !requests.is_empty() {
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                }
            }
            if !requests.is_empty() {
                return Err(Error::Transient {
                    service: "dynamodb",
                    message: format!("{} deletes of fleet {name} not processed", requests.len()),
                });
            }
        }
        Ok(deleted)
    }

    /// The event record claimed by the commit that applies the event's intent: conditional on no
    /// record (or one past its TTL, which DynamoDB deletes up to days late), returning the old
    /// record when the condition fails so the loser needs no extra read.
    fn claim_event(
        &self,
        key: &EventKey,
        fleet: &FleetName,
        version: Option<u64>,
        in_progress_until: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<TransactWriteItem> {
        let mut record = HashMap::from([
            ("pk".into(), s(format!("EVENT#{}", key.id))),
            ("sk".into(), s("EVENT")),
            ("hash".into(), s(&key.hash)),
            ("fleet".into(), s(fleet.as_str())),
            ("expires_at".into(), n((now + EVENT_TTL).timestamp())),
        ]);
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
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(record))
            .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
            .expression_attribute_values(":now", n(now.timestamp()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(|e| corrupt("put", e))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Marks a claimed event `COMPLETED`, in the transaction recording its outcomes. No condition:
    /// only the invocation that claimed the record completes it, and failing the outcomes over
    /// the record would be worse than any state of the record.
    fn complete_event(
        &self,
        key: &EventKey,
        fleet: &FleetName,
        version: u64,
        now: Timestamp,
    ) -> Result<TransactWriteItem> {
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(format!("EVENT#{}", key.id)))
            .key("sk", s("EVENT"))
            .update_expression("SET #st = :c, #h = :h, #f = :f, #cv = :v, #e = :e REMOVE #ipu")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#h", "hash")
            .expression_attribute_names("#f", "fleet")
            .expression_attribute_names("#cv", "completed_version")
            .expression_attribute_names("#e", "expires_at")
            .expression_attribute_names("#ipu", "in_progress_until")
            .expression_attribute_values(":c", s(STATUS_COMPLETED))
            .expression_attribute_values(":h", s(&key.hash))
            .expression_attribute_values(":f", s(fleet.as_str()))
            .expression_attribute_values(":v", n(version))
            .expression_attribute_values(":e", n((now + EVENT_TTL).timestamp()))
            .build()
            .map_err(|e| corrupt("update", e))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// The error for an event whose claim failed because it has a record: different content under
    /// the same id is refused; otherwise what to do depends on the record's status (see
    /// `StateStore::commit`). `old` is the record the failed condition returned, if it did.
    async fn already_recorded(
        &self,
        key: &EventKey,
        old: Option<HashMap<String, AttributeValue>>,
        now: Timestamp,
    ) -> Error {
        let record = match old {
            Some(item) => Ok(Some(item)),
            None => self.get_event_item(&key.id).await,
        };
        let record = match record.and_then(|r| r.map(|item| decode_event(&item)).transpose()) {
            Ok(Some(r)) => r,
            // Gone in between (TTL): the next attempt claims it; until then, a plain conflict.
            Ok(None) => return Error::Conflict(format!("event {}", key.id)),
            Err(e) => return e,
        };
        if !record.hash.is_empty() && record.hash != key.hash {
            return Error::Invalid(phoenix_core::Error::Event(format!(
                "event id {} was already used for different content",
                key.id
            )));
        }
        match record.in_progress_until {
            None => Error::Duplicate(key.id.clone()),
            Some(until) if until > now => Error::InFlight(key.id.clone()),
            Some(_) => Error::Unfinished(key.id.clone()),
        }
    }

    async fn get_event_item(&self, id: &str) -> Result<Option<HashMap<String, AttributeValue>>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("EVENT#{id}")))
            .key("sk", s("EVENT"))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.item)
    }

    /// The record of a handled event, if there is one.
    pub async fn event_record(&self, id: &str) -> Result<Option<EventRecordItem>> {
        self.get_event_item(id)
            .await?
            .map(|item| decode_event(&item))
            .transpose()
    }

    /// Creates the table (on-demand, with the instance index). Used by the local stack and tests;
    /// in AWS the template creates it.
    pub async fn create_table(&self) -> Result<()> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
            Projection, ProjectionType, ScalarAttributeType,
        };
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| corrupt("table", e))
        };
        let key = |name: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(t)
                .build()
                .map_err(|e| corrupt("table", e))
        };
        let index = GlobalSecondaryIndex::builder()
            .index_name(INSTANCE_INDEX)
            .key_schema(key("instance_id", KeyType::Hash)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::KeysOnly)
                    .build(),
            )
            .build()
            .map_err(|e| corrupt("table", e))?;
        let res = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("sk")?)
            .attribute_definitions(attr("instance_id")?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .global_secondary_indexes(index)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk(e)),
        }
    }
}
