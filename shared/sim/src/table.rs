//! An in-memory table with DynamoDB's semantics, as far as phoenix's store relies on them:
//! strongly consistent reads; transactions of at most 100 actions, no two on one item, applied
//! all at once or not at all, with a cancellation reason per action (and the old item where the
//! action asked for it); conditions judged as DynamoDB judges them; an update that creates the
//! item it names; the `by-instance` index (keys only). What DynamoDB would refuse outright (a
//! transaction too large, two actions on one item, an item over 400 KB) is refused here as a
//! permanent error and reported to the simulator as a violation: the store must never ask it.
//!
//! Not modelled: TTL expiry (DynamoDB deletes expired items up to days late; a run lasts hours),
//! and the index's lag (propagation takes well under a second; the events that read it come
//! seconds to minutes after the write).

use phoenix_protocol::ports::table::{
    Cancellation, Item, Key, Query, SortKeys, Transacted, Value, Write, MAX_BATCH_GET,
    MAX_TRANSACTION_ITEMS,
};
use phoenix_protocol::store::INSTANCE_INDEX;
use std::collections::{BTreeMap, BTreeSet};

/// DynamoDB's item size limit.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// The table's contents.
#[derive(Debug, Default, Clone)]
pub struct TableState {
    items: BTreeMap<Key, Item>,
    /// `by-instance`: instance id -> the key of the item carrying it.
    index: BTreeMap<String, BTreeSet<Key>>,
}

/// What a transaction did, for the simulator's books and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Every key the transaction wrote or deleted.
    pub written: Vec<Key>,
}

/// A request DynamoDB would refuse (`ValidationException`): a bug in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

fn size(item: &Item) -> usize {
    item.iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    Value::S(s) => s.len(),
                    Value::N(_) => 21,
                    Value::Bool(_) => 1,
                }
        })
        .sum()
}

impl TableState {
    pub fn get(&self, key: &Key) -> Option<&Item> {
        self.items.get(key)
    }

    pub fn batch_get(&self, keys: &[Key]) -> Result<Vec<Item>, Invalid> {
        if keys.len() > MAX_BATCH_GET {
            return Err(Invalid(format!(
                "BatchGetItem of {} keys (at most {MAX_BATCH_GET})",
                keys.len()
            )));
        }
        let distinct: BTreeSet<&Key> = keys.iter().collect();
        if distinct.len() != keys.len() {
            return Err(Invalid("BatchGetItem names a key twice".into()));
        }
        Ok(keys
            .iter()
            .filter_map(|k| self.items.get(k).cloned())
            .collect())
    }

    pub fn query(&self, q: &Query) -> Vec<Item> {
        let from = Key::new(q.pk.clone(), "");
        let in_partition = self
            .items
            .range(from..)
            .take_while(|(k, _)| k.pk == q.pk)
            .filter(|(k, _)| match &q.sort {
                SortKeys::All => true,
                SortKeys::Between(a, b) => {
                    k.sk.as_str() >= a.as_str() && k.sk.as_str() <= b.as_str()
                }
                SortKeys::BeginsWith(p) => k.sk.starts_with(p.as_str()),
            })
            .map(|(_, item)| item);
        let keep = |item: &&Item| q.filter.as_ref().is_none_or(|f| f.holds(Some(item)));
        let shape = |item: &Item| {
            if q.keys_only {
                item.iter()
                    .filter(|(k, _)| k.as_str() == "pk" || k.as_str() == "sk")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            } else {
                item.clone()
            }
        };
        let limit = q.limit.unwrap_or(usize::MAX);
        if q.newest_first {
            let all: Vec<&Item> = in_partition.collect();
            all.into_iter()
                .rev()
                .filter(keep)
                .take(limit)
                .map(shape)
                .collect()
        } else {
            in_partition.filter(keep).take(limit).map(shape).collect()
        }
    }

    /// The keys-only index: `pk`, `sk` and the indexed attribute.
    pub fn query_index(
        &self,
        index: &str,
        attribute: &str,
        value: &str,
        limit: usize,
    ) -> Vec<Item> {
        if index != INSTANCE_INDEX || attribute != "instance_id" {
            return Vec::new();
        }
        self.index
            .get(value)
            .into_iter()
            .flatten()
            .take(limit)
            .map(|k| {
                Item::from([
                    ("pk".into(), Value::S(k.pk.clone())),
                    ("sk".into(), Value::S(k.sk.clone())),
                    ("instance_id".into(), Value::S(value.into())),
                ])
            })
            .collect()
    }

    /// Validates a transaction as DynamoDB does before running it.
    pub fn validate(writes: &[Write]) -> Result<(), Invalid> {
        if writes.is_empty() || writes.len() > MAX_TRANSACTION_ITEMS {
            return Err(Invalid(format!(
                "a transaction of {} actions (1 to {MAX_TRANSACTION_ITEMS})",
                writes.len()
            )));
        }
        let mut keys = BTreeSet::new();
        for w in writes {
            let key = w
                .key()
                .ok_or_else(|| Invalid("an item without pk and sk".into()))?;
            if let Write::Put { item, .. } = w {
                if size(item) > MAX_ITEM_BYTES {
                    return Err(Invalid(format!(
                        "item {}/{} of {} bytes (at most {MAX_ITEM_BYTES})",
                        key.pk,
                        key.sk,
                        size(item)
                    )));
                }
            }
            if !keys.insert(key.clone()) {
                return Err(Invalid(format!(
                    "two actions on one item ({}/{}) in a transaction",
                    key.pk, key.sk
                )));
            }
        }
        Ok(())
    }

    /// Runs a (valid) transaction: every condition is judged against the table as it is, then
    /// either every action applies or none does.
    pub fn transact(&mut self, writes: Vec<Write>) -> (Transacted, Option<Applied>) {
        let mut reasons = Vec::with_capacity(writes.len());
        let mut failed = false;
        for w in &writes {
            let key = w.key().unwrap_or_else(|| Key::new("", ""));
            let current = self.items.get(&key);
            let (condition, return_old) = match w {
                Write::Put {
                    condition,
                    return_old,
                    ..
                } => (condition.as_ref(), *return_old),
                Write::Update { condition, .. }
                | Write::Add { condition, .. }
                | Write::Delete { condition, .. } => (condition.as_ref(), false),
                Write::Check { condition, .. } => (Some(condition), false),
            };
            if condition.is_some_and(|c| !c.holds(current)) {
                failed = true;
                reasons.push(Cancellation::ConditionFailed(
                    current.filter(|_| return_old).cloned(),
                ));
            } else {
                reasons.push(Cancellation::None);
            }
        }
        if failed {
            return (Transacted::Cancelled(reasons), None);
        }
        let mut written = Vec::new();
        for w in writes {
            match w {
                Write::Put { item, .. } => {
                    if let Some(key) = Key::of(&item) {
                        self.put(key.clone(), item);
                        written.push(key);
                    }
                }
                Write::Update {
                    key,
                    set,
                    set_if_absent,
                    remove,
                    ..
                } => {
                    let mut item = self.items.get(&key).cloned().unwrap_or_else(|| {
                        Item::from([
                            ("pk".into(), Value::S(key.pk.clone())),
                            ("sk".into(), Value::S(key.sk.clone())),
                        ])
                    });
                    for (a, v) in set {
                        item.insert(a.to_string(), v);
                    }
                    for (a, v) in set_if_absent {
                        item.entry(a.to_string()).or_insert(v);
                    }
                    for a in remove {
                        item.remove(a);
                    }
                    self.put(key.clone(), item);
                    written.push(key);
                }
                Write::Add {
                    key,
                    add: (attribute, by),
                    set,
                    ..
                } => {
                    let mut item = self.items.get(&key).cloned().unwrap_or_else(|| {
                        Item::from([
                            ("pk".into(), Value::S(key.pk.clone())),
                            ("sk".into(), Value::S(key.sk.clone())),
                        ])
                    });
                    let now = item.get(attribute).and_then(Value::as_n).unwrap_or(0);
                    item.insert(attribute.to_string(), Value::N(now + by));
                    for (a, v) in set {
                        item.insert(a.to_string(), v);
                    }
                    self.put(key.clone(), item);
                    written.push(key);
                }
                Write::Delete { key, .. } => {
                    self.delete(&key);
                    written.push(key);
                }
                Write::Check { .. } => {}
            }
        }
        (
            Transacted::Committed { request_id: None },
            Some(Applied { written }),
        )
    }

    pub fn delete_all(&mut self, keys: &[Key]) {
        for k in keys {
            self.delete(k);
        }
    }

    fn put(&mut self, key: Key, item: Item) {
        self.unindex(&key);
        if let Some(id) = item.get("instance_id").and_then(Value::as_s) {
            self.index
                .entry(id.to_string())
                .or_default()
                .insert(key.clone());
        }
        self.items.insert(key, item);
    }

    fn delete(&mut self, key: &Key) {
        self.unindex(key);
        self.items.remove(key);
    }

    fn unindex(&mut self, key: &Key) {
        if let Some(id) = self
            .items
            .get(key)
            .and_then(|i| i.get("instance_id"))
            .and_then(Value::as_s)
        {
            if let Some(keys) = self.index.get_mut(id) {
                keys.remove(key);
                if keys.is_empty() {
                    self.index.remove(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_protocol::ports::table::Condition;

    fn item(pk: &str, sk: &str, extra: &[(&str, Value)]) -> Item {
        let mut i = Item::from([
            ("pk".into(), Value::S(pk.into())),
            ("sk".into(), Value::S(sk.into())),
        ]);
        for (k, v) in extra {
            i.insert(k.to_string(), v.clone());
        }
        i
    }

    fn put(i: Item, condition: Option<Condition>, return_old: bool) -> Write {
        Write::Put {
            item: i,
            condition,
            return_old,
        }
    }

    #[test]
    fn a_transaction_applies_whole_or_not_at_all_with_a_reason_per_action() {
        let mut t = TableState::default();
        let v1 = item("F", "META", &[("version", Value::N(1))]);
        assert!(matches!(
            t.transact(vec![put(
                v1.clone(),
                Some(Condition::NotExists("pk")),
                false
            )])
            .0,
            Transacted::Committed { .. }
        ));
        // The second action's condition fails: nothing is written, the old item comes back
        // where it was asked for.
        let (out, applied) = t.transact(vec![
            put(item("F", "INST#i-1", &[]), None, false),
            put(v1.clone(), Some(Condition::NotExists("pk")), true),
        ]);
        assert_eq!(applied, None);
        assert_eq!(
            out,
            Transacted::Cancelled(vec![
                Cancellation::None,
                Cancellation::ConditionFailed(Some(v1.clone()))
            ])
        );
        assert!(t.get(&Key::new("F", "INST#i-1")).is_none());
        // A version condition, an update that creates its item, a delete.
        let (out, applied) = t.transact(vec![
            put(
                item("F", "META", &[("version", Value::N(2))]),
                Some(Condition::Eq("version", Value::N(1))),
                false,
            ),
            Write::Update {
                key: Key::new("EVENT#e", "EVENT"),
                set: vec![("version", Value::N(2))],
                set_if_absent: vec![("status", Value::S("COMPLETED".into()))],
                remove: vec!["in_progress_until"],
                condition: None,
            },
        ]);
        assert!(matches!(out, Transacted::Committed { .. }));
        assert_eq!(applied.map(|a| a.written.len()), Some(2));
        let e = t
            .get(&Key::new("EVENT#e", "EVENT"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(e.get("status"), Some(&Value::S("COMPLETED".into())));
    }

    #[test]
    fn what_dynamodb_refuses_is_refused() {
        let twice = vec![
            put(item("F", "META", &[]), None, false),
            put(item("F", "META", &[]), None, false),
        ];
        assert!(TableState::validate(&twice).is_err());
        let many: Vec<Write> = (0..101)
            .map(|n| put(item("F", &format!("INST#{n}"), &[]), None, false))
            .collect();
        assert!(TableState::validate(&many).is_err());
        let big = item(
            "F",
            "META",
            &[("state", Value::S("x".repeat(MAX_ITEM_BYTES)))],
        );
        assert!(TableState::validate(&[put(big, None, false)]).is_err());
    }

    #[test]
    fn queries_read_a_range_filter_and_limit_and_the_index_follows_writes() {
        let mut t = TableState::default();
        let writes = vec![
            put(item("F", "INBOX#1", &[]), None, false),
            put(
                item("F", "INST#i-1", &[("instance_id", Value::S("i-1".into()))]),
                None,
                false,
            ),
            put(
                item(
                    "F",
                    "INST#i-2",
                    &[
                        ("instance_id", Value::S("i-2".into())),
                        ("gone", Value::Bool(true)),
                    ],
                ),
                None,
                false,
            ),
            put(item("F", "HIST#000000000001", &[]), None, false),
            put(item("F", "HIST#000000000002", &[]), None, false),
            put(item("G", "INST#i-3", &[]), None, false),
        ];
        t.transact(writes);
        let mut q = Query::partition("F", SortKeys::Between("INBOX#".into(), "INST$".into()));
        q.filter = Some(Condition::NotExists("gone"));
        let sks: Vec<String> = t
            .query(&q)
            .iter()
            .filter_map(|i| Key::of(i).map(|k| k.sk))
            .collect();
        assert_eq!(sks, ["INBOX#1", "INST#i-1"]);
        let mut h = Query::partition("F", SortKeys::BeginsWith("HIST#".into()));
        h.newest_first = true;
        h.limit = Some(1);
        let newest = t.query(&h);
        assert_eq!(
            newest.first().and_then(Key::of).map(|k| k.sk),
            Some("HIST#000000000002".into())
        );
        assert_eq!(
            t.query_index(INSTANCE_INDEX, "instance_id", "i-2", 1).len(),
            1
        );
        t.delete_all(&[Key::new("F", "INST#i-2")]);
        assert!(t
            .query_index(INSTANCE_INDEX, "instance_id", "i-2", 1)
            .is_empty());
    }
}
