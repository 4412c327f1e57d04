//! The state table port on DynamoDB: `phoenix_protocol::ports::table` in the SDK's terms. Pure
//! translation — conditions and updates rendered as expressions, pages read to the end,
//! unprocessed keys asked again, cancellation reasons read back — with no knowledge of what phoenix
//! stores (that is `phoenix_protocol::store`).

use crate::error::{sdk_error, Error, Result};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, DeleteRequest, KeysAndAttributes, Put,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use phoenix_protocol::ports::table::{
    Cancellation, Condition, Item, Key, Query, SortKeys, Table, Transacted, Value, Write,
};
use phoenix_protocol::store::INSTANCE_INDEX;
use std::collections::HashMap;
use std::time::Duration;

/// BatchWriteItem takes at most 25 requests.
const BATCH_WRITE: usize = 25;
/// Rounds of asking again for what a batch call left unprocessed (throttling, size).
const UNPROCESSED_ROUNDS: u32 = 10;

type Attributes = HashMap<String, AttributeValue>;

#[derive(Clone, Debug)]
pub struct DynamoTable {
    client: Client,
    table: String,
}

fn sdk<E, R>(e: aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Error
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    sdk_error("dynamodb", e)
}

fn malformed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Permanent {
        service: "dynamodb",
        message: format!("malformed {what}: {e}"),
    }
}

fn to_av(v: &Value) -> AttributeValue {
    match v {
        Value::S(s) => AttributeValue::S(s.clone()),
        Value::N(n) => AttributeValue::N(n.to_string()),
        Value::Bool(b) => AttributeValue::Bool(*b),
    }
}

fn from_av(v: &AttributeValue) -> Option<Value> {
    match v {
        AttributeValue::S(s) => Some(Value::S(s.clone())),
        AttributeValue::N(n) => n.parse().ok().map(Value::N),
        AttributeValue::Bool(b) => Some(Value::Bool(*b)),
        _ => None,
    }
}

fn to_attributes(item: &Item) -> Attributes {
    item.iter().map(|(k, v)| (k.clone(), to_av(v))).collect()
}

/// An item as phoenix reads it; attributes of types phoenix never writes are left out.
fn from_attributes(attributes: &Attributes) -> Item {
    attributes
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), from_av(v)?)))
        .collect()
}

fn key_attributes(key: &Key) -> Attributes {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(key.pk.clone())),
        ("sk".to_string(), AttributeValue::S(key.sk.clone())),
    ])
}

/// An expression's placeholders: `#n0`, `#n1`, ... for names and `:v0`, `:v1`, ... for values.
#[derive(Default)]
struct Expression {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expression {
    fn name(&mut self, attribute: &str) -> String {
        let placeholder = format!("#n{}", self.names.len());
        self.names
            .insert(placeholder.clone(), attribute.to_string());
        placeholder
    }

    fn value(&mut self, v: &Value) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), to_av(v));
        placeholder
    }

    fn condition(&mut self, c: &Condition) -> String {
        let mut binary = |a: &str, op: &str, v: &Value| {
            let (a, v) = (self.name(a), self.value(v));
            format!("{a} {op} {v}")
        };
        match c {
            Condition::Exists(a) => format!("attribute_exists({})", self.name(a)),
            Condition::NotExists(a) => format!("attribute_not_exists({})", self.name(a)),
            Condition::Eq(a, v) => binary(a, "=", v),
            Condition::Lt(a, v) => binary(a, "<", v),
            Condition::Ge(a, v) => binary(a, ">=", v),
            Condition::Le(a, v) => binary(a, "<=", v),
            Condition::Or(cs) => self.join(cs, " OR "),
            Condition::And(cs) => self.join(cs, " AND "),
        }
    }

    fn join(&mut self, cs: &[Condition], op: &str) -> String {
        let parts: Vec<String> = cs.iter().map(|c| self.condition(c)).collect();
        format!("({})", parts.join(op))
    }

    fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }

    fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

impl DynamoTable {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoTable {
            client,
            table: table.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    /// One update action of a transaction: `expression` on `key`, with its condition.
    fn update(
        &self,
        key: &Key,
        expression: String,
        condition: Option<String>,
        e: &Expression,
    ) -> Result<TransactWriteItem> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key_attributes(key)))
            .update_expression(expression)
            .set_condition_expression(condition)
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(e.values())
            .build()
            .map_err(|e| malformed("update", e))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    fn transact_item(&self, write: Write) -> Result<TransactWriteItem> {
        let mut e = Expression::default();
        let item = match write {
            Write::Put {
                item,
                condition,
                return_old,
            } => {
                let condition = condition.map(|c| e.condition(&c));
                let mut put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(to_attributes(&item)))
                    .set_condition_expression(condition)
                    .set_expression_attribute_names(e.names())
                    .set_expression_attribute_values(e.values());
                if return_old {
                    put = put.return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    );
                }
                TransactWriteItem::builder()
                    .put(put.build().map_err(|e| malformed("put", e))?)
                    .build()
            }
            Write::Update {
                key,
                set,
                set_if_absent,
                remove,
                condition,
            } => {
                let mut clauses: Vec<String> = set
                    .iter()
                    .map(|(a, v)| format!("{} = {}", e.name(a), e.value(v)))
                    .collect();
                for (a, v) in &set_if_absent {
                    let a = e.name(a);
                    clauses.push(format!("{a} = if_not_exists({a}, {})", e.value(v)));
                }
                let mut expression = format!("SET {}", clauses.join(", "));
                if !remove.is_empty() {
                    let names: Vec<String> = remove.iter().map(|a| e.name(a)).collect();
                    expression.push_str(&format!(" REMOVE {}", names.join(", ")));
                }
                let condition = condition.map(|c| e.condition(&c));
                self.update(&key, expression, condition, &e)?
            }
            Write::Add {
                key,
                add: (attribute, by),
                set,
                condition,
            } => {
                let mut expression =
                    format!("ADD {} {}", e.name(attribute), e.value(&Value::N(by)));
                if !set.is_empty() {
                    let clauses: Vec<String> = set
                        .iter()
                        .map(|(a, v)| format!("{} = {}", e.name(a), e.value(v)))
                        .collect();
                    expression.push_str(&format!(" SET {}", clauses.join(", ")));
                }
                let condition = condition.map(|c| e.condition(&c));
                self.update(&key, expression, condition, &e)?
            }
            Write::Delete { key, condition } => {
                let condition = condition.map(|c| e.condition(&c));
                let delete = Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_attributes(&key)))
                    .set_condition_expression(condition)
                    .set_expression_attribute_names(e.names())
                    .set_expression_attribute_values(e.values())
                    .build()
                    .map_err(|e| malformed("delete", e))?;
                TransactWriteItem::builder().delete(delete).build()
            }
            Write::Check { key, condition } => {
                let condition = e.condition(&condition);
                let check = ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_attributes(&key)))
                    .condition_expression(condition)
                    .set_expression_attribute_names(e.names())
                    .set_expression_attribute_values(e.values())
                    .build()
                    .map_err(|e| malformed("condition check", e))?;
                TransactWriteItem::builder().condition_check(check).build()
            }
        };
        Ok(item)
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
                .map_err(|e| malformed("table", e))
        };
        let key = |name: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(t)
                .build()
                .map_err(|e| malformed("table", e))
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
            .map_err(|e| malformed("table", e))?;
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

/// What DynamoDB said of each action of a cancelled transaction; `None` if it was not cancelled.
fn cancellations<R>(
    err: &aws_smithy_runtime_api::client::result::SdkError<TransactWriteItemsError, R>,
) -> Option<Vec<Cancellation>> {
    let Some(TransactWriteItemsError::TransactionCanceledException(t)) = err.as_service_error()
    else {
        return None;
    };
    Some(
        t.cancellation_reasons()
            .iter()
            .map(|r| match r.code.as_deref().unwrap_or("None") {
                "None" => Cancellation::None,
                "ConditionalCheckFailed" => {
                    Cancellation::ConditionFailed(r.item.as_ref().map(from_attributes))
                }
                "TransactionConflict" => Cancellation::TransactionConflict,
                other => Cancellation::Other(other.to_string()),
            })
            .collect(),
    )
}

impl Table for DynamoTable {
    async fn get(&self, key: &Key) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_attributes(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.item.as_ref().map(from_attributes))
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_attributes(key)))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut pending: Vec<Attributes> = keys.iter().map(key_attributes).collect();
        for round in 0..=UNPROCESSED_ROUNDS {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(pending))
                .consistent_read(true)
                .build()
                .map_err(|e| malformed("request", e))?;
            let mut out = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(sdk)?;
            items.extend(
                out.responses
                    .as_mut()
                    .and_then(|r| r.remove(&self.table))
                    .unwrap_or_default()
                    .iter()
                    .map(from_attributes),
            );
            pending = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(&self.table))
                .map(|k| k.keys)
                .unwrap_or_default();
            if pending.is_empty() {
                return Ok(items);
            }
            tokio::time::sleep(Duration::from_millis(20 << round.min(5))).await;
        }
        Err(Error::Throttled {
            service: "dynamodb",
            message: format!("{} keys left unprocessed by BatchGetItem", pending.len()),
        })
    }

    async fn query(&self, query: &Query) -> Result<Vec<Item>> {
        let mut e = Expression::default();
        let pk = e.name("pk");
        let pk_value = e.value(&Value::S(query.pk.clone()));
        let mut key_condition = format!("{pk} = {pk_value}");
        match &query.sort {
            SortKeys::All => {}
            SortKeys::Between(from, to) => {
                let sk = e.name("sk");
                let (from, to) = (
                    e.value(&Value::S(from.clone())),
                    e.value(&Value::S(to.clone())),
                );
                key_condition.push_str(&format!(" AND {sk} BETWEEN {from} AND {to}"));
            }
            SortKeys::BeginsWith(prefix) => {
                let sk = e.name("sk");
                let prefix = e.value(&Value::S(prefix.clone()));
                key_condition.push_str(&format!(" AND begins_with({sk}, {prefix})"));
            }
        }
        let filter = query.filter.as_ref().map(|c| e.condition(c));
        let mut request = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression(key_condition)
            .set_filter_expression(filter)
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(e.values())
            .scan_index_forward(!query.newest_first)
            .consistent_read(true);
        if query.keys_only {
            request = request.projection_expression("pk, sk");
        }
        let mut items = Vec::new();
        let mut pages = request.into_paginator().items().send();
        while let Some(item) = pages.next().await {
            items.push(from_attributes(&item.map_err(sdk)?));
            if query.limit.is_some_and(|l| items.len() >= l) {
                break;
            }
        }
        Ok(items)
    }

    async fn query_index(
        &self,
        index: &str,
        attribute: &str,
        value: &str,
        limit: usize,
    ) -> Result<Vec<Item>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression("#a = :v")
            .expression_attribute_names("#a", attribute)
            .expression_attribute_values(":v", AttributeValue::S(value.to_string()))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.items().iter().map(from_attributes).collect())
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<Transacted> {
        let items = writes
            .into_iter()
            .map(|w| self.transact_item(w))
            .collect::<Result<Vec<_>>>()?;
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(out) => Ok(Transacted::Committed {
                request_id: aws_sdk_dynamodb::operation::RequestId::request_id(&out)
                    .map(str::to_string),
            }),
            Err(err) => match cancellations(&err) {
                Some(reasons) if !reasons.is_empty() => Ok(Transacted::Cancelled(reasons)),
                _ => Err(sdk(err)),
            },
        }
    }

    async fn delete_all(&self, keys: &[Key]) -> Result<()> {
        for chunk in keys.chunks(BATCH_WRITE) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|key| {
                    DeleteRequest::builder()
                        .set_key(Some(key_attributes(key)))
                        .build()
                        .map(|d| WriteRequest::builder().delete_request(d).build())
                        .map_err(|e| malformed("delete", e))
                })
                .collect::<Result<_>>()?;
            // Unprocessed requests (throttling) are sent again, with a growing pause.
            for round in 0..UNPROCESSED_ROUNDS {
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
                    tokio::time::sleep(Duration::from_millis(50 << round.min(5))).await;
                }
            }
            if !requests.is_empty() {
                return Err(Error::Transient {
                    service: "dynamodb",
                    message: format!("{} deletes not processed", requests.len()),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_render_as_dynamodb_expressions_with_placeholders() {
        let mut e = Expression::default();
        let c = Condition::Or(vec![
            Condition::NotExists("pk"),
            Condition::Lt("expires_at", Value::N(42)),
        ]);
        assert_eq!(e.condition(&c), "(attribute_not_exists(#n0) OR #n1 < :v0)");
        assert_eq!(e.names.get("#n1").map(String::as_str), Some("expires_at"));
        assert_eq!(e.values.get(":v0"), Some(&AttributeValue::N("42".into())));
    }

    #[test]
    fn items_cross_to_the_sdk_and_back() {
        let item = Item::from([
            ("pk".into(), Value::S("FLEET#web".into())),
            ("version".into(), Value::N(7)),
            ("gone".into(), Value::Bool(true)),
        ]);
        assert_eq!(from_attributes(&to_attributes(&item)), item);
    }
}
