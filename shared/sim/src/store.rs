//! A simulated state store with the semantics of `phoenix_aws::store::DynamoStore`: one fleet
//! record guarded by its version, one record per instance (terminated ones kept as tombstones), the
//! fleet's inbox of queued intents, and the handled-event records. A commit is atomic and
//! conditional on the version read. The commit applying an event's intent claims its record —
//! `INPROGRESS` until the invocation's deadline when commands follow, else `COMPLETED` — and is
//! refused if the record exists (writing nothing); the commit recording the outcomes completes it.
//! `enqueue` puts a fleet-wide event's intent in the inbox and completes its record in one write
//! that does not depend on the version (it fails only as a claim would); the commit applying a
//! queued intent deletes its item, conditional on the item's existence (else a conflict), so a
//! queued intent is applied once however many reconciles race for it.

use phoenix_core::events::QueuedIntent;
use phoenix_core::model::{Fleet, Timestamp};
use phoenix_core::planner::Step;
use phoenix_core::InstanceId;
use std::collections::BTreeMap;

/// What a claim met: the event's record, by its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// `COMPLETED`: handled before.
    Duplicate,
    /// `INPROGRESS` and its owner's time has not run out.
    InFlight,
    /// `INPROGRESS` but its owner's time ran out: applied, not finished.
    Unfinished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitError {
    /// The fleet's version moved since it was read, or the queued intent a commit applies is
    /// no longer in the inbox (another commit applied it).
    Conflict,
    /// The event has a record already.
    Seen(Seen),
}

/// The event record a commit writes.
#[derive(Debug, Clone, Copy)]
pub enum EventOp<'a> {
    /// Applying the intent: `until` is `Some` (in progress until then) when commands follow.
    Claim {
        id: &'a str,
        until: Option<Timestamp>,
    },
    /// Recording the outcomes of a claimed event.
    Complete(&'a str),
    /// Applying a queued intent: its inbox item (by `QueuedIntent::key`) is deleted, conditional
    /// on its existence. The event's record was completed when it was queued.
    Dequeue(&'a str),
}

pub struct Store {
    /// The fleet record, without instances (they are items of their own).
    meta: Fleet,
    instances: BTreeMap<InstanceId, phoenix_core::model::Instance>,
    /// Event id -> in progress until (`None`: completed).
    events: BTreeMap<String, Option<Timestamp>>,
    /// The fleet's inbox: queued intents by `QueuedIntent::key` (event time, then event id).
    inbox: BTreeMap<String, QueuedIntent>,
}

impl Store {
    /// A store holding a fleet just created (`planner::create_fleet`), at version 1.
    pub fn create(step: &Step) -> Store {
        let mut meta = step.fleet.clone();
        meta.version = 1;
        meta.instances.clear();
        meta.inbox.clear();
        Store {
            meta,
            instances: BTreeMap::new(),
            events: BTreeMap::new(),
            inbox: BTreeMap::new(),
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
    pub fn instance(&self, id: &InstanceId) -> Option<&phoenix_core::model::Instance> {
        self.instances.get(id)
    }

    pub fn live(&self) -> impl Iterator<Item = &phoenix_core::model::Instance> {
        self.instances.values().filter(|i| i.is_live())
    }

    pub fn is_live(&self, id: &InstanceId) -> bool {
        self.instances.get(id).is_some_and(|i| i.is_live())
    }

    /// The queued intents, in the order a reconcile applies them.
    pub fn inbox(&self) -> impl Iterator<Item = &QueuedIntent> {
        self.inbox.values()
    }

    /// `load_fleet`: the record, every live instance (tombstones are filtered out by the query)
    /// and the inbox, oldest first; the live counter is derived again.
    pub fn load_fleet(&self) -> Fleet {
        let mut fleet = self.meta.clone();
        fleet.inbox = self.inbox.values().cloned().collect();
        fleet.instances = self
            .instances
            .iter()
            .filter(|(_, i)| i.is_live())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        fleet.live = fleet.instances.len() as u32;
        fleet.complete = true;
        fleet
    }

    /// `load_partial`: the record and the named instances that exist (tombstones included); not
    /// the inbox.
    pub fn load_partial(&self, ids: &[InstanceId]) -> Fleet {
        let mut fleet = self.meta.clone();
        fleet.complete = false;
        for id in ids {
            if let Some(i) = self.instances.get(id) {
                fleet.instances.insert(id.clone(), i.clone());
            }
        }
        fleet
    }

    /// `load_for_instance`: `None` when no fleet manages the instance.
    pub fn load_for_instance(&self, id: &InstanceId) -> Option<Fleet> {
        self.instances
            .contains_key(id)
            .then(|| self.load_partial(std::slice::from_ref(id)))
    }

    /// `check_event`: what a claim of this event would meet, if it has a record.
    pub fn check_event(&self, id: &str, now: Timestamp) -> Option<Seen> {
        self.events.get(id).map(|until| match until {
            None => Seen::Duplicate,
            Some(t) if *t > now => Seen::InFlight,
            Some(_) => Seen::Unfinished,
        })
    }

    /// `commit`: the fleet record conditional on `before.version`, the touched instances, the
    /// event record. Returns the committed fleet (partial if the step's fleet was).
    pub fn commit(
        &mut self,
        before: &Fleet,
        step: &Step,
        event: Option<EventOp<'_>>,
        now: Timestamp,
    ) -> Result<Fleet, CommitError> {
        // DynamoDB reports both failed conditions; the store looks at the claim's first.
        if let Some(EventOp::Claim { id, .. }) = event {
            if let Some(seen) = self.check_event(id, now) {
                return Err(CommitError::Seen(seen));
            }
        }
        if before.version != self.meta.version {
            return Err(CommitError::Conflict);
        }
        if let Some(EventOp::Dequeue(key)) = event {
            if !self.inbox.contains_key(key) {
                return Err(CommitError::Conflict);
            }
        }
        let mut next = step.fleet.clone();
        next.version = before.version + 1;
        for id in &step.touched {
            if let Some(inst) = next.instances.get(id) {
                self.instances.insert(id.clone(), inst.clone());
            }
        }
        let mut meta = next.clone();
        meta.instances = Default::default();
        // Not part of the record: the inbox's items are their own.
        meta.inbox = Vec::new();
        meta.complete = false;
        self.meta = meta;
        match event {
            Some(EventOp::Claim { id, until }) => {
                self.events.insert(id.to_string(), until);
            }
            Some(EventOp::Complete(id)) => {
                self.events.insert(id.to_string(), None);
            }
            Some(EventOp::Dequeue(key)) => {
                self.inbox.remove(key);
            }
            None => {}
        }
        next.complete = step.fleet.complete;
        Ok(next)
    }

    /// `enqueue`: puts `queued` in the inbox and completes the event's record, in one write that
    /// leaves the fleet's version alone (it cannot lose a race). Refused, writing nothing, if the
    /// event has a record (as a claim is).
    pub fn enqueue(
        &mut self,
        queued: QueuedIntent,
        event_id: &str,
        now: Timestamp,
    ) -> Result<(), Seen> {
        if let Some(seen) = self.check_event(event_id, now) {
            return Err(seen);
        }
        self.inbox.insert(queued.key(), queued);
        self.events.insert(event_id.to_string(), None);
        Ok(())
    }
}
