//! The single table's items: their keys and attributes, written from and read back into the
//! core's types. The only place that knows how phoenix's state is laid out.
//!
//! | item | pk | sk | attributes |
//! |---|---|---|---|
//! | fleet | `FLEET#<name>` | `META` | `version`, `state` (spec, rollout, pending launches, counters; JSON), `updated_at` |
//! | instance | `FLEET#<name>` | `INST#<id>` | `instance_id` (index key; none once released), `data` (JSON), `gone` + `expires_at` once terminated, `expires_at` once released |
//! | history | `FLEET#<name>` | `HIST#<version, 12 digits>` | `at`, `entry` (cause + changes; JSON) |
//! | queued intent | `FLEET#<name>` | `INBOX#<event time, ms>#<event id>` | `queued` (intent + cause; JSON) |
//! | outbox | `FLEET#<name>` | `MAIL#<version, 12 digits>` | `mail`: the notifications the commit of that version publishes, and when it was made (JSON) |
//! | handled event | `EVENT#<event id>` | `EVENT` | `hash`, `fleet`, `version` (once applied), `status`, `in_progress_until` (ms), `completed_version`, `expires_at` |
//! | fleet index | `FLEETS` | `FLEET#<name>` | (lists fleets without a scan) |
//! | call budget | `BUDGET#<api>#<account and region>` | `<unix second>` | `calls` admitted in that second, `expires_at` (`budget`) |
//!
//! `INBOX#` sorts just before `INST#`, and `MAIL#` just after (before `META`), with nothing
//! between: one query reads a fleet's queued intents, its instances and its outbox, and neither
//! its record nor its history.

use super::outbox::Mail;
use crate::error::{Error, Result};
use crate::ports::table::{Item, Key, Value};
use chrono::Duration;
use phoenix_core::events::QueuedIntent;
use phoenix_core::history::HistoryEntry;
use phoenix_core::model::{Fleet, Instance, Timestamp};
use phoenix_core::{FleetName, InstanceId};

/// The global secondary index that maps an instance id to its item (and so to its fleet).
pub const INSTANCE_INDEX: &str = "by-instance";
/// Terminated instances are kept this long so late events about them are recognised.
pub const TOMBSTONE_TTL: Duration = Duration::days(7);
/// Handled-event records outlive EventBridge's longest redelivery window (24 h).
pub const EVENT_TTL: Duration = Duration::days(2);

pub const STATUS_IN_PROGRESS: &str = "INPROGRESS";
pub const STATUS_COMPLETED: &str = "COMPLETED";

pub const META: &str = "META";
pub const EVENT_PREFIX: &str = "EVENT#";
pub const INBOX: &str = "INBOX#";
pub const INST: &str = "INST#";
pub const HIST: &str = "HIST#";
pub const MAIL: &str = "MAIL#";
pub const FLEETS: &str = "FLEETS";
/// Just past every `MAIL#` key: `INBOX#` ..= this reads the inbox, the instances and the outbox.
pub const MAIL_END: &str = "MAIL$";

pub fn s(v: impl Into<String>) -> Value {
    Value::S(v.into())
}

pub fn n(v: impl TryInto<i64>) -> Value {
    Value::N(v.try_into().unwrap_or(i64::MAX))
}

pub fn fleet_pk(name: &FleetName) -> String {
    format!("FLEET#{name}")
}

pub fn meta_key(name: &FleetName) -> Key {
    Key::new(fleet_pk(name), META)
}

pub fn instance_key(name: &FleetName, id: &InstanceId) -> Key {
    Key::new(fleet_pk(name), format!("{INST}{id}"))
}

pub fn inbox_key(name: &FleetName, queued: &QueuedIntent) -> Key {
    Key::new(fleet_pk(name), format!("{INBOX}{}", queued.key()))
}

pub fn mail_key(name: &FleetName, version: u64) -> Key {
    Key::new(fleet_pk(name), format!("{MAIL}{version:012}"))
}

pub fn history_key(name: &FleetName, version: u64) -> Key {
    Key::new(fleet_pk(name), format!("{HIST}{version:012}"))
}

pub fn event_key(id: &str) -> Key {
    Key::new(format!("{EVENT_PREFIX}{id}"), "EVENT")
}

/// The counter of one second of an API's call budget in one account and region.
pub fn budget_key(api: &str, location: &str, second: i64) -> Key {
    Key::new(format!("BUDGET#{api}#{location}"), second.to_string())
}

pub fn index_key(name: &FleetName) -> Key {
    Key::new(FLEETS, format!("FLEET#{name}"))
}

pub fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Permanent {
        service: "dynamodb",
        message: format!("unreadable {what} item: {e}"),
    }
}

fn json<T: serde::Serialize>(what: &str, v: &T) -> Result<Value> {
    serde_json::to_string(v)
        .map(Value::S)
        .map_err(|e| corrupt(what, e))
}

pub fn get_s<'a>(item: &'a Item, attribute: &str) -> Result<&'a str> {
    item.get(attribute)
        .and_then(Value::as_s)
        .ok_or_else(|| corrupt(attribute, "attribute missing"))
}

fn get_n(item: &Item, attribute: &str) -> Option<i64> {
    item.get(attribute).and_then(Value::as_n)
}

/// An item with its key and these attributes.
pub fn item(key: Key, attributes: impl IntoIterator<Item = (&'static str, Value)>) -> Item {
    let mut item = Item::from([("pk".into(), s(key.pk)), ("sk".into(), s(key.sk))]);
    item.extend(attributes.into_iter().map(|(k, v)| (k.to_string(), v)));
    item
}

pub fn fleet_item(fleet: &Fleet, now: Timestamp) -> Result<Item> {
    Ok(item(
        meta_key(&fleet.spec.name),
        [
            ("version", n(fleet.version)),
            ("state", json("fleet", fleet)?),
            ("updated_at", s(now.to_rfc3339())),
        ],
    ))
}

pub fn instance_item(fleet: &FleetName, inst: &Instance) -> Result<Item> {
    let mut item = item(
        instance_key(fleet, &inst.id),
        [
            ("instance_id", s(inst.id.as_str())),
            ("data", json("instance", inst)?),
        ],
    );
    if let Some(at) = inst.terminated_at {
        item.insert("gone".into(), Value::Bool(true));
        item.insert("expires_at".into(), n((at + TOMBSTONE_TTL).timestamp()));
    }
    // A released instance is no longer this fleet's: out of the instance index, so an event
    // about it (or its adoption by another fleet) does not find this record. It is still read
    // with the fleet, though: a pass that sees it carrying phoenix's tags again (the untagging
    // after the release did not happen) untags it rather than take it for an orphan.
    if let Some(r) = &inst.released {
        item.remove("instance_id");
        item.insert("expires_at".into(), n((r.at + TOMBSTONE_TTL).timestamp()));
    }
    Ok(item)
}

pub fn history_item(name: &FleetName, entry: &HistoryEntry) -> Result<Item> {
    Ok(item(
        history_key(name, entry.version),
        [
            ("at", s(entry.at.to_rfc3339())),
            ("entry", json("history", entry)?),
        ],
    ))
}

pub fn inbox_item(name: &FleetName, queued: &QueuedIntent) -> Result<Item> {
    Ok(item(
        inbox_key(name, queued),
        [("queued", json("queued intent", queued)?)],
    ))
}

pub fn mail_item(name: &FleetName, mail: &Mail) -> Result<Item> {
    Ok(item(
        mail_key(name, mail.version),
        [("mail", json("outbox", mail)?)],
    ))
}

/// The fleet record (`META`), without its instances.
pub fn decode_meta(item: &Item) -> Result<Fleet> {
    let mut fleet: Fleet =
        serde_json::from_str(get_s(item, "state")?).map_err(|e| corrupt("fleet", e))?;
    fleet.version = get_n(item, "version")
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| corrupt("version", "number missing"))?;
    fleet.complete = false;
    Ok(fleet)
}

pub fn decode_instance(item: &Item) -> Result<Instance> {
    serde_json::from_str(get_s(item, "data")?).map_err(|e| corrupt("instance", e))
}

pub fn decode_queued(item: &Item) -> Result<QueuedIntent> {
    serde_json::from_str(get_s(item, "queued")?).map_err(|e| corrupt("queued intent", e))
}

pub fn decode_mail(item: &Item) -> Result<Mail> {
    serde_json::from_str(get_s(item, "mail")?).map_err(|e| corrupt("outbox", e))
}

pub fn decode_entry(item: &Item) -> Result<HistoryEntry> {
    serde_json::from_str(get_s(item, "entry")?).map_err(|e| corrupt("history", e))
}

pub fn decode_fleet_name(item: &Item, attribute: &str, prefix: &str) -> Result<FleetName> {
    Ok(FleetName::parse(
        get_s(item, attribute)?.trim_start_matches(prefix),
    )?)
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
    /// The event changed nothing, and why (`Store::record_unchanged`): it has no history entry.
    pub unchanged: Option<String>,
}

/// Where an event stands, by its record, at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// `COMPLETED`: handled.
    Completed,
    /// `INPROGRESS`, and its owner's time has not run out: in the hands of a live invocation.
    InProgress,
    /// `INPROGRESS` past its owner's deadline: its intent was applied, its work not finished.
    Unfinished,
}

impl EventRecordItem {
    pub fn standing(&self, now: Timestamp) -> Standing {
        match self.in_progress_until {
            None => Standing::Completed,
            Some(until) if until > now => Standing::InProgress,
            Some(_) => Standing::Unfinished,
        }
    }
}

pub fn decode_event(item: &Item) -> EventRecordItem {
    let text = |k: &str| {
        item.get(k)
            .and_then(Value::as_s)
            .map(str::to_string)
            .unwrap_or_default()
    };
    let status = item
        .get("status")
        .and_then(Value::as_s)
        .unwrap_or(STATUS_COMPLETED)
        .to_string();
    let in_progress_until = (status == STATUS_IN_PROGRESS).then(|| {
        // A record in progress without a time is treated as long expired: finish it.
        get_n(item, "in_progress_until")
            .and_then(chrono::DateTime::from_timestamp_millis)
            .unwrap_or_default()
    });
    EventRecordItem {
        hash: text("hash"),
        fleet: text("fleet"),
        version: get_n(item, "version").and_then(|v| u64::try_from(v).ok()),
        status,
        in_progress_until,
        unchanged: item
            .get("unchanged")
            .and_then(Value::as_s)
            .map(str::to_string),
    }
}
