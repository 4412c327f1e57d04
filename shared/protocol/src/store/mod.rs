//! Fleet state in one table (single-table design; the layout is in `items`).
//!
//! Every change is one transaction (`commit`): the fleet record conditional on the version read,
//! the touched instance records, one history entry, the event's record and the notifications it
//! publishes (`outbox`) — so a change, its cause and its notifications are never written apart,
//! and a writer that read an older version loses the race and writes nothing. The index
//! `by-instance` finds an instance's fleet in one query, so an instance event reads two items, not
//! the fleet.

mod commit;
pub mod items;
pub mod outbox;
mod quiet;

pub use commit::{EventKey, EventRecord};
pub use items::{EventRecordItem, Standing, INSTANCE_INDEX, STATUS_COMPLETED, STATUS_IN_PROGRESS};
pub use outbox::{Mail, OUTBOX_GRACE};
pub use quiet::{Look, Quiet};

use crate::error::{Error, Result};
use crate::ports::table::{Condition, Key, Query, SortKeys, Table, MAX_BATCH_GET};
use crate::variant::Variant;
use items::*;
use phoenix_core::history::HistoryEntry;
use phoenix_core::model::{Fleet, Timestamp};
use phoenix_core::{FleetName, InstanceId};

/// phoenix's state, kept in a `Table`.
#[derive(Debug, Clone)]
pub struct Store<T> {
    table: T,
    variant: Variant,
}

impl<T: Table> Store<T> {
    pub fn new(table: T) -> Self {
        Store {
            table,
            variant: Variant::Real,
        }
    }

    /// The store with one of the simulator's deliberate bugs.
    pub fn with_variant(mut self, variant: Variant) -> Self {
        self.variant = variant;
        self
    }

    pub fn table(&self) -> &T {
        &self.table
    }

    /// The fleet with every live instance and its queued intents, oldest first.
    pub async fn load_fleet(&self, name: &FleetName) -> Result<Fleet> {
        Ok(self.load_fleet_and_outbox(name).await?.0)
    }

    /// `load_fleet`, and the fleet's outbox (oldest commit first), read by the same query.
    pub async fn load_fleet_and_outbox(&self, name: &FleetName) -> Result<(Fleet, Vec<Mail>)> {
        let meta = self
            .table
            .get(&meta_key(name))
            .await?
            .ok_or_else(|| unknown_fleet(name))?;
        self.load_rest(decode_meta(&meta)?).await
    }

    /// `load_fleet_and_outbox` for a fleet whose record was just read (`look`): the rest of it.
    pub async fn load_rest(&self, mut fleet: Fleet) -> Result<(Fleet, Vec<Mail>)> {
        let name = fleet.spec.name.clone();
        let name = &name;
        let mut query = Query::partition(
            fleet_pk(name),
            SortKeys::Between(INBOX.into(), MAIL_END.into()),
        );
        query.filter = Some(Condition::NotExists("gone"));
        let mut outbox = Vec::new();
        for item in self.table.query(&query).await? {
            let sk = get_s(&item, "sk")?;
            if sk.starts_with(INBOX) {
                fleet.inbox.push(decode_queued(&item)?);
            } else if sk.starts_with(MAIL) {
                outbox.push(decode_mail(&item)?);
            } else {
                let inst = decode_instance(&item)?;
                fleet.instances.insert(inst.id.clone(), inst);
            }
        }
        // The live count is derived state; a full read is the moment to correct any drift.
        fleet.live = fleet.instances.values().filter(|i| i.is_live()).count() as u32;
        fleet.complete = true;
        Ok((fleet, outbox))
    }

    /// The fleet an instance belongs to, holding only that instance (live or terminated).
    pub async fn load_for_instance(&self, id: &InstanceId) -> Result<Fleet> {
        let found = self
            .table
            .query_index(INSTANCE_INDEX, "instance_id", id.as_str(), 1)
            .await?;
        let item = found.first().ok_or_else(|| {
            Error::NotFound(format!("instance {id} is not managed by any phoenix fleet"))
        })?;
        let name = decode_fleet_name(item, "pk", "FLEET#")?;
        self.load_partial(&name, std::slice::from_ref(id)).await
    }

    /// The fleet record and the named instances (those that exist, live or terminated), in one
    /// batch read per 100 keys: an instance event reads two items whatever the fleet's size.
    /// Not the inbox.
    pub async fn load_partial(&self, name: &FleetName, ids: &[InstanceId]) -> Result<Fleet> {
        let keys: Vec<Key> = std::iter::once(meta_key(name))
            .chain(ids.iter().map(|id| instance_key(name, id)))
            .collect();
        let mut meta = None;
        let mut instances = Vec::new();
        for chunk in keys.chunks(MAX_BATCH_GET) {
            for item in self.table.batch_get(chunk).await? {
                if get_s(&item, "sk")? == META {
                    meta = Some(decode_meta(&item)?);
                } else {
                    instances.push(decode_instance(&item)?);
                }
            }
        }
        let mut fleet = meta.ok_or_else(|| unknown_fleet(name))?;
        for inst in instances {
            fleet.instances.insert(inst.id.clone(), inst);
        }
        Ok(fleet)
    }

    pub async fn list_fleets(&self) -> Result<Vec<FleetName>> {
        let mut query = Query::partition(FLEETS, SortKeys::All);
        query.keys_only = true;
        self.table
            .query(&query)
            .await?
            .iter()
            .map(|item| decode_fleet_name(item, "sk", "FLEET#"))
            .collect()
    }

    /// The newest `limit` history entries, oldest first.
    pub async fn history(&self, name: &FleetName, limit: usize) -> Result<Vec<HistoryEntry>> {
        let mut query = Query::partition(fleet_pk(name), SortKeys::BeginsWith(HIST.into()));
        query.newest_first = true;
        query.limit = Some(limit);
        let mut entries = self
            .table
            .query(&query)
            .await?
            .iter()
            .map(decode_entry)
            .collect::<Result<Vec<_>>>()?;
        entries.reverse();
        Ok(entries)
    }

    /// Every history entry recorded in `[since, until]` (either bound open when `None`), oldest
    /// first. `until` alone gives what `history::replay` needs to rebuild the fleet at `until`.
    pub async fn history_between(
        &self,
        name: &FleetName,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> Result<Vec<HistoryEntry>> {
        // `at` is stored as RFC 3339 in UTC, which sorts as time does; the bounds are widened by
        // a second here and applied exactly below, so formatting details cannot lose an entry.
        let second = chrono::Duration::seconds(1);
        let mut bounds = Vec::new();
        if let Some(t) = since {
            bounds.push(Condition::Ge("at", s((t - second).to_rfc3339())));
        }
        if let Some(t) = until {
            bounds.push(Condition::Le("at", s((t + second).to_rfc3339())));
        }
        let mut query = Query::partition(fleet_pk(name), SortKeys::BeginsWith(HIST.into()));
        query.filter = (!bounds.is_empty()).then_some(Condition::And(bounds));
        let mut entries = Vec::new();
        for item in self.table.query(&query).await? {
            let entry = decode_entry(&item)?;
            if since.is_none_or(|t| entry.at >= t) && until.is_none_or(|t| entry.at <= t) {
                entries.push(entry);
            }
        }
        entries.sort_by_key(|e| e.version);
        Ok(entries)
    }

    /// The record of a handled event, if there is one.
    pub async fn event_record(&self, id: &str) -> Result<Option<EventRecordItem>> {
        Ok(self
            .table
            .get(&event_key(id))
            .await?
            .map(|i| decode_event(&i)))
    }

    /// Deletes a fleet: its record, index entry, instance records and history. Refused while the
    /// fleet (as loaded, complete) has live instances or launches in flight; the fleet record
    /// goes first, conditional on the version loaded (`Error::Conflict` if it moved). Returns how
    /// many items were deleted.
    pub async fn delete_fleet(&self, fleet: &Fleet) -> Result<usize> {
        use crate::ports::table::{Transacted, Write};
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
        let writes = vec![
            Write::Delete {
                key: meta_key(name),
                condition: Some(Condition::Eq("version", n(fleet.version))),
            },
            Write::Delete {
                key: index_key(name),
                condition: None,
            },
        ];
        match self.table.transact(writes).await? {
            Transacted::Committed { .. } => Ok(2 + self.purge_fleet_items(name).await?),
            Transacted::Cancelled(_) => Err(Error::Conflict(name.to_string())),
        }
    }

    /// Deletes every item of a fleet's partition but its record (instances, history, queued
    /// intents, the outbox). Also what is left of a fleet whose record is already gone. Returns
    /// how many it deleted.
    pub async fn purge_fleet_items(&self, name: &FleetName) -> Result<usize> {
        let mut query = Query::partition(fleet_pk(name), SortKeys::All);
        query.keys_only = true;
        let keys: Vec<Key> = self
            .table
            .query(&query)
            .await?
            .iter()
            .filter_map(Key::of)
            .filter(|k| k.sk != META)
            .collect();
        self.table.delete_all(&keys).await?;
        Ok(keys.len())
    }
}

fn unknown_fleet(name: &FleetName) -> Error {
    Error::NotFound(format!("unknown fleet {name}"))
}
