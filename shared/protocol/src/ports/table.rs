//! The state table port: the part of DynamoDB phoenix uses, in DynamoDB's own terms — items of
//! named attributes, conditional writes in all-or-nothing transactions, consistent reads, one
//! global secondary index. `phoenix_aws::table::DynamoTable` translates it to the SDK; the
//! simulator keeps an in-memory table with the same semantics. What phoenix stores in it, and
//! how, is the store's business (`crate::store`), written once for both.

use crate::error::Result;
use std::collections::BTreeMap;
use std::future::Future;

/// An attribute value: the three DynamoDB types phoenix writes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    S(String),
    N(i64),
    Bool(bool),
}

impl Value {
    pub fn as_s(&self) -> Option<&str> {
        match self {
            Value::S(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_n(&self) -> Option<i64> {
        match self {
            Value::N(n) => Some(*n),
            _ => None,
        }
    }
}

/// An item: attribute name → value. Every item has the key attributes `pk` and `sk`.
pub type Item = BTreeMap<String, Value>;

/// The primary key: partition key `pk`, sort key `sk`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

impl Key {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        Key {
            pk: pk.into(),
            sk: sk.into(),
        }
    }

    /// The key of an item (its `pk` and `sk`), if it has both.
    pub fn of(item: &Item) -> Option<Key> {
        Some(Key::new(item.get("pk")?.as_s()?, item.get("sk")?.as_s()?))
    }
}

/// A condition on one item (a condition expression), or a query's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `attribute_exists(a)`; on `pk`: the item exists.
    Exists(&'static str),
    /// `attribute_not_exists(a)`; on `pk`: the item does not exist.
    NotExists(&'static str),
    /// `a = v`
    Eq(&'static str, Value),
    /// `a < v`
    Lt(&'static str, Value),
    /// `a >= v`
    Ge(&'static str, Value),
    /// `a <= v`
    Le(&'static str, Value),
    Or(Vec<Condition>),
    And(Vec<Condition>),
}

impl Condition {
    /// Whether an item (or no item) meets the condition, as DynamoDB judges it: an absent
    /// attribute is neither equal to, less nor greater than anything, and values of different
    /// types do not compare.
    pub fn holds(&self, item: Option<&Item>) -> bool {
        let get = |a: &str| item.and_then(|i| i.get(a));
        let cmp = |a: &str, v: &Value| match (get(a), v) {
            (Some(Value::S(x)), Value::S(y)) => Some(x.as_str().cmp(y.as_str())),
            (Some(Value::N(x)), Value::N(y)) => Some(x.cmp(y)),
            (Some(Value::Bool(x)), Value::Bool(y)) => Some(x.cmp(y)),
            _ => None,
        };
        use std::cmp::Ordering::*;
        match self {
            Condition::Exists(a) => get(a).is_some(),
            Condition::NotExists(a) => get(a).is_none(),
            Condition::Eq(a, v) => cmp(a, v) == Some(Equal),
            Condition::Lt(a, v) => cmp(a, v) == Some(Less),
            Condition::Ge(a, v) => matches!(cmp(a, v), Some(Greater | Equal)),
            Condition::Le(a, v) => matches!(cmp(a, v), Some(Less | Equal)),
            Condition::Or(cs) => cs.iter().any(|c| c.holds(item)),
            Condition::And(cs) => cs.iter().all(|c| c.holds(item)),
        }
    }
}

/// One action of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Puts the whole item. `return_old`: a failed condition returns the item as it was
    /// (`ReturnValuesOnConditionCheckFailure = ALL_OLD`), so the caller needs no extra read.
    Put {
        item: Item,
        condition: Option<Condition>,
        return_old: bool,
    },
    /// Sets and removes attributes of an item, creating it if it does not exist.
    Update {
        key: Key,
        /// `SET a = v`
        set: Vec<(&'static str, Value)>,
        /// `SET a = if_not_exists(a, v)`
        set_if_absent: Vec<(&'static str, Value)>,
        /// `REMOVE a`
        remove: Vec<&'static str>,
        condition: Option<Condition>,
    },
    /// Adds to a number (`ADD a :by`; an absent one counts as 0) and sets attributes, creating
    /// the item if it does not exist: a counter that concurrent writers share.
    Add {
        key: Key,
        add: (&'static str, i64),
        set: Vec<(&'static str, Value)>,
        condition: Option<Condition>,
    },
    Delete {
        key: Key,
        condition: Option<Condition>,
    },
    /// Writes nothing; the transaction holds only if the item meets the condition.
    Check { key: Key, condition: Condition },
}

impl Write {
    pub fn key(&self) -> Option<Key> {
        match self {
            Write::Put { item, .. } => Key::of(item),
            Write::Update { key, .. }
            | Write::Add { key, .. }
            | Write::Delete { key, .. }
            | Write::Check { key, .. } => Some(key.clone()),
        }
    }
}

/// At most this many actions in one transaction (DynamoDB's limit).
pub const MAX_TRANSACTION_ITEMS: usize = 100;
/// At most this many keys in one batch read (DynamoDB's limit).
pub const MAX_BATCH_GET: usize = 100;

/// Why DynamoDB cancelled a transaction, for one of its actions (in the order of the actions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancellation {
    /// This action was fine; another one cancelled the transaction.
    None,
    /// Its condition failed; with the item as it was when the action asked for it (`return_old`).
    ConditionFailed(Option<Item>),
    /// Another transaction was writing the same item at that moment.
    TransactionConflict,
    /// Throttled, or any other reason DynamoDB names.
    Other(String),
}

/// What a transaction came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transacted {
    /// Every action was applied, at once. The request id, where the service gives one.
    Committed { request_id: Option<String> },
    /// Nothing was applied; the reason of each action, in order.
    Cancelled(Vec<Cancellation>),
}

/// Which items of one partition a query reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortKeys {
    All,
    /// `sk BETWEEN from AND to`
    Between(String, String),
    /// `begins_with(sk, prefix)`
    BeginsWith(String),
}

/// A query of one partition, read to the end (every page) unless `limit` items are found first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub pk: String,
    pub sort: SortKeys,
    /// Applied to each item read (DynamoDB reads, and charges for, the items it filters out).
    pub filter: Option<Condition>,
    /// Descending sort keys.
    pub newest_first: bool,
    /// Stop once this many items (after the filter) are found.
    pub limit: Option<usize>,
    /// Only the key attributes.
    pub keys_only: bool,
}

impl Query {
    pub fn partition(pk: impl Into<String>, sort: SortKeys) -> Self {
        Query {
            pk: pk.into(),
            sort,
            filter: None,
            newest_first: false,
            limit: None,
            keys_only: false,
        }
    }
}

/// The table port. Reads are strongly consistent, but for the index (eventually consistent, as
/// a global secondary index is).
pub trait Table: Send + Sync {
    fn get(&self, key: &Key) -> impl Future<Output = Result<Option<Item>>> + Send;
    /// The items of up to `MAX_BATCH_GET` keys (those that exist), in any order. Keys the service
    /// leaves unprocessed are asked again by the adapter.
    fn batch_get(&self, keys: &[Key]) -> impl Future<Output = Result<Vec<Item>>> + Send;
    fn query(&self, query: &Query) -> impl Future<Output = Result<Vec<Item>>> + Send;
    /// Up to `limit` items whose `attribute` equals `value` in the index named `index`, with their
    /// key attributes (the index projects keys only).
    fn query_index(
        &self,
        index: &str,
        attribute: &str,
        value: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Item>>> + Send;
    /// One all-or-nothing transaction of up to `MAX_TRANSACTION_ITEMS` actions, no two on the
    /// same item. `Err` for anything but a cancellation (throttling, a lost answer, ...).
    fn transact(&self, writes: Vec<Write>) -> impl Future<Output = Result<Transacted>> + Send;
    /// Deletes one item (DeleteItem), unconditionally: one already gone is no error.
    fn delete(&self, key: &Key) -> impl Future<Output = Result<()>> + Send;
    /// Deletes the items, not atomically, in as many batches as needed.
    fn delete_all(&self, keys: &[Key]) -> impl Future<Output = Result<()>> + Send;
}
