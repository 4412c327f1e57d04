//! Fleet state in one DynamoDB table (single-table design).
//!
//! | item | pk | sk | attributes |
//! |---|---|---|---|
//! | fleet | `FLEET#<name>` | `META` | `version`, `state` (spec, rollout, pending launches, counters; JSON) |
//! | instance | `FLEET#<name>` | `INST#<id>` | `instance_id` (GSI key), `data` (JSON), `gone` + `expires_at` once terminated |
//! | history | `FLEET#<name>` | `HIST#<version, 12 digits>` | `at`, `entry` (cause + changes; JSON) |
//! | handled event | `EVENT#<event id>` | `EVENT` | `hash`, `fleet`, `version`, `expires_at` |
//! | fleet index | `FLEETS` | `FLEET#<name>` | (lists fleets without a scan) |
//!
//! GSI `by-instance` (hash `instance_id`) finds an instance's fleet in one query, so a health
//! event reads two items, not the fleet. Every change is one TransactWriteItems: the fleet item
//! conditional on the version read, the touched instance items, one history item and the event
//! record — so a change and its cause are never written apart.

use crate::error::{Error, Result};
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use chrono::Duration;
use phoenix_core::events::Cause;
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
    /// Returns the committed fleet. `Error::Conflict` if the version moved; `Error::Duplicate` if
    /// the event was already handled (nothing is written then).
    fn commit(
        &self,
        before: &Fleet,
        step: &Step,
        cause: &Cause,
        event: Option<&EventKey>,
        now: Timestamp,
    ) -> impl Future<Output = Result<Fleet>> + Send;
    fn list_fleets(&self) -> impl Future<Output = Result<Vec<FleetName>>> + Send;
    /// The newest `limit` history entries, oldest first.
    fn history(
        &self,
        name: &FleetName,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<HistoryEntry>>> + Send;
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
        let mut fleet: Fleet =
            serde_json::from_str(get_s(&item, "state")?).map_err(|e| corrupt("fleet", e))?;
        fleet.version = get_s_or_n(&item, "version")?;
        fleet.complete = false;
        Ok(fleet)
    }

    async fn get_instance(&self, name: &FleetName, id: &InstanceId) -> Result<Option<Instance>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(fleet_pk(name)))
            .key("sk", s(inst_sk(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk)?;
        out.item.map(|item| decode_instance(&item)).transpose()
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
            .key_condition_expression("pk = :pk AND begins_with(sk, :inst)")
            .filter_expression("attribute_not_exists(gone)")
            .expression_attribute_values(":pk", s(fleet_pk(name)))
            .expression_attribute_values(":inst", s("INST#"))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let inst = decode_instance(&item.map_err(sdk)?)?;
            fleet.instances.insert(inst.id.clone(), inst);
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

    async fn load_partial(&self, name: &FleetName, ids: &[InstanceId]) -> Result<Fleet> {
        let mut fleet = self.get_meta(name).await?;
        for id in ids {
            if let Some(inst) = self.get_instance(name, id).await? {
                fleet.instances.insert(id.clone(), inst);
            }
        }
        Ok(fleet)
    }

    async fn commit(
        &self,
        before: &Fleet,
        step: &Step,
        cause: &Cause,
        event: Option<&EventKey>,
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
        let event_index = event.map(|_| items.len());
        if let Some(ev) = event {
            let record = HashMap::from([
                ("pk".into(), s(format!("EVENT#{}", ev.id))),
                ("sk".into(), s("EVENT")),
                ("hash".into(), s(&ev.hash)),
                ("fleet".into(), s(name.as_str())),
                ("version".into(), n(next.version)),
                ("expires_at".into(), n((now + EVENT_TTL).timestamp())),
            ]);
            items.push(self.put(record, Some(("attribute_not_exists(pk)", vec![])))?);
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

        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match result {
            Ok(_) => {
                next.complete = step.fleet.complete;
                Ok(next)
            }
            Err(err) => {
                let reasons: Vec<String> = err
                    .as_service_error()
                    .and_then(|e| match e {
                        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(t) => {
                            t.cancellation_reasons.as_ref()
                        }
                        _ => None,
                    })
                    .map(|rs| rs.iter().map(|r| r.code.clone().unwrap_or_default()).collect())
                    .unwrap_or_default();
                if reasons.is_empty() {
                    return Err(sdk(err));
                }
                let failed = |i: usize| {
                    reasons
                        .get(i)
                        .is_some_and(|c| c == "ConditionalCheckFailed")
                };
                if let (Some(i), Some(ev)) = (event_index, event) {
                    if failed(i) {
                        self.check_duplicate(ev).await?;
                        return Err(Error::Duplicate(ev.id.clone()));
                    }
                }
                if failed(0) {
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
                entries.push(
                    serde_json::from_str::<HistoryEntry>(get_s(&item, "entry")?)
                        .map_err(|e| corrupt("history", e))?,
                );
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
}

impl DynamoStore {
    /// The event was recorded before: the same content is a harmless redelivery; different content
    /// under the same id is refused.
    async fn check_duplicate(&self, ev: &EventKey) -> Result<()> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("EVENT#{}", ev.id)))
            .key("sk", s("EVENT"))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk)?;
        match out.item.as_ref().map(|i| get_s(i, "hash")).transpose()? {
            Some(h) if h != ev.hash => Err(Error::Invalid(phoenix_core::Error::Event(format!(
                "event id {} was already used for different content",
                ev.id
            )))),
            _ => Ok(()),
        }
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
