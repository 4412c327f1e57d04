//! The books: phoenix's state as the table holds it, decoded with the store's own decoders after
//! every write, for the invariants to read. (What the controller reads, it reads through the
//! store like in production; this is the simulator's view of the same items.)

use crate::table::TableState;
use phoenix_core::events::QueuedIntent;
use phoenix_core::model::{Fleet, Instance, Timestamp};
use phoenix_core::InstanceId;
use phoenix_protocol::ports::table::Key;
use phoenix_protocol::store::items::{
    decode_event, decode_instance, decode_mail, decode_meta, decode_queued, EventRecordItem,
    Standing, EVENT_PREFIX, INBOX, INST, MAIL, META,
};
use phoenix_protocol::store::Mail;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Books {
    /// The fleet record (no instances).
    meta: Fleet,
    /// Instance records, live and tombstones.
    instances: BTreeMap<InstanceId, Instance>,
    /// The inbox by `QueuedIntent::key`.
    inbox: BTreeMap<String, QueuedIntent>,
    /// Event records by event id.
    events: BTreeMap<String, EventRecordItem>,
    /// The outbox: notifications committed and not yet removed, by the version that wrote them.
    outbox: BTreeMap<u64, Mail>,
}

impl Books {
    pub fn new(meta: Fleet) -> Self {
        Books {
            meta,
            instances: BTreeMap::new(),
            inbox: BTreeMap::new(),
            events: BTreeMap::new(),
            outbox: BTreeMap::new(),
        }
    }

    /// Follows one written (or deleted) item of the table.
    pub fn apply(&mut self, table: &TableState, key: &Key) {
        let item = table.get(key);
        if let Some(id) = key.pk.strip_prefix(EVENT_PREFIX) {
            match item {
                Some(i) => self.events.insert(id.to_string(), decode_event(i)),
                None => self.events.remove(id),
            };
        } else if key.sk == META {
            if let Some(meta) = item.and_then(|i| decode_meta(i).ok()) {
                self.meta = meta;
            }
        } else if let Some(id) = key.sk.strip_prefix(INST) {
            let decoded = item.and_then(|i| decode_instance(i).ok());
            if let Ok(id) = InstanceId::parse(id) {
                match decoded {
                    Some(inst) => self.instances.insert(id, inst),
                    None => self.instances.remove(&id),
                };
            }
        } else if let Some(k) = key.sk.strip_prefix(INBOX) {
            match item.and_then(|i| decode_queued(i).ok()) {
                Some(q) => self.inbox.insert(k.to_string(), q),
                None => self.inbox.remove(k),
            };
        } else if let Some(v) = key.sk.strip_prefix(MAIL) {
            if let Ok(version) = v.parse() {
                match item.and_then(|i| decode_mail(i).ok()) {
                    Some(m) => self.outbox.insert(version, m),
                    None => self.outbox.remove(&version),
                };
            }
        }
    }

    pub fn version(&self) -> u64 {
        self.meta.version
    }

    /// The fleet record as stored (no instances).
    pub fn meta(&self) -> &Fleet {
        &self.meta
    }

    /// An instance's record, live or tombstone.
    pub fn instance(&self, id: &InstanceId) -> Option<&Instance> {
        self.instances.get(id)
    }

    pub fn live(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values().filter(|i| i.is_live())
    }

    pub fn is_live(&self, id: &InstanceId) -> bool {
        self.instances.get(id).is_some_and(|i| i.is_live())
    }

    /// The queued intents, in the order a reconcile applies them.
    pub fn inbox(&self) -> impl Iterator<Item = &QueuedIntent> {
        self.inbox.values()
    }

    /// The outbox: notifications committed and not yet removed, oldest commit first.
    pub fn outbox(&self) -> impl Iterator<Item = &Mail> {
        self.outbox.values()
    }

    /// Where an event stands at `now`, if it has a record.
    pub fn standing(&self, id: &str, now: Timestamp) -> Option<Standing> {
        self.events.get(id).map(|r| r.standing(now))
    }

    /// The fleet as `Store::load_fleet` reads it: the record, every live instance, the inbox.
    pub fn load_fleet(&self) -> Fleet {
        let mut fleet = self.meta.clone();
        fleet.inbox = self.inbox.values().cloned().collect();
        fleet.instances = self.live().map(|i| (i.id.clone(), i.clone())).collect();
        fleet.live = fleet.instances.len() as u32;
        fleet.complete = true;
        fleet
    }
}
