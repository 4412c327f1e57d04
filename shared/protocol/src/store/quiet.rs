//! A settled fleet's quiet: what the schedule's quick look reads instead of the whole fleet.
//!
//! The quiet (`Quiet`) is an attribute of the fleet record (`quiet`, JSON): the digest of what EC2
//! and the target groups reported to a pass that decided nothing, and until when the planner would
//! still decide nothing (`planner::quiet_until`). It is written alone, conditional on the version
//! the pass read; every commit puts the whole record again without it, so a change of any kind
//! ends the quiet. Queued intents do not touch the record (their write must not race it): the
//! quick look reads whether the inbox holds one, as it reads the outbox with the record.
//!
//! What holds if the process dies: after the quiet is written, nothing else is to do; before,
//! the next look finds none and passes in full, as before the quiet existed.

use super::items::*;
use super::{Mail, Store};
use crate::error::Result;
use crate::ports::table::{Condition, Query, SortKeys, Table, Transacted, Write};
use phoenix_core::model::{Fleet, Timestamp};
use phoenix_core::FleetName;
use serde::{Deserialize, Serialize};

/// A fleet that a pass left as it was, and what it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quiet {
    /// The fleet version the pass read.
    pub version: u64,
    /// What EC2 and the target groups reported (`controller::sweep::digest`).
    pub digest: String,
    /// When the planner would act next with nothing reported changed.
    pub until: Timestamp,
}

/// The fleet record, its quiet if it has one, and its outbox: one query.
#[derive(Debug, Clone)]
pub struct Look {
    /// The record alone (`complete` is false: no instances).
    pub fleet: Fleet,
    pub quiet: Option<Quiet>,
    pub outbox: Vec<Mail>,
}

impl Look {
    /// The quiet, if it is the record's (recorded for this version) and holds at `now`.
    pub fn quiet_at(&self, now: Timestamp) -> Option<&Quiet> {
        self.quiet
            .as_ref()
            .filter(|q| q.version == self.fleet.version && now < q.until)
    }
}

impl<T: Table> Store<T> {
    /// The fleet record with its quiet and its outbox: `MAIL#` sorts just before `META`, with
    /// nothing between, so one query reads both and no instance.
    pub async fn look(&self, name: &FleetName) -> Result<Look> {
        let query = Query::partition(fleet_pk(name), SortKeys::Between(MAIL.into(), META.into()));
        let (mut fleet, mut quiet, mut outbox) = (None, None, Vec::new());
        for item in self.table.query(&query).await? {
            if get_s(&item, "sk")? == META {
                fleet = Some(decode_meta(&item)?);
                quiet = item
                    .get("quiet")
                    .and_then(|v| v.as_s())
                    .map(|json| serde_json::from_str(json).map_err(|e| corrupt("quiet", e)))
                    .transpose()?;
            } else {
                outbox.push(decode_mail(&item)?);
            }
        }
        let fleet = fleet.ok_or_else(|| super::unknown_fleet(name))?;
        Ok(Look {
            fleet,
            quiet,
            outbox,
        })
    }

    /// Whether the fleet's inbox holds a queued intent: its first key, nothing more.
    pub async fn has_queued(&self, name: &FleetName) -> Result<bool> {
        let mut query = Query::partition(fleet_pk(name), SortKeys::BeginsWith(INBOX.into()));
        query.keys_only = true;
        query.limit = Some(1);
        Ok(!self.table.query(&query).await?.is_empty())
    }

    /// Records the fleet as quiet, if its record is still at `quiet.version`. A commit in
    /// between wins: then nothing is written, and that is no error (the fleet is not quiet).
    pub async fn mark_quiet(&self, name: &FleetName, quiet: &Quiet) -> Result<bool> {
        let json = serde_json::to_string(quiet).map_err(|e| corrupt("quiet", e))?;
        let write = Write::Update {
            key: meta_key(name),
            set: vec![("quiet", s(json))],
            set_if_absent: Vec::new(),
            remove: Vec::new(),
            condition: Some(Condition::Eq("version", n(quiet.version))),
        };
        match self.table.transact(vec![write]).await? {
            Transacted::Committed { .. } => Ok(true),
            Transacted::Cancelled(_) => Ok(false),
        }
    }
}
