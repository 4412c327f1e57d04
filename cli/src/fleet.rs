//! `fleet delete`: drain through the usual replacement path, then remove the fleet's records.

use crate::output::Printer;
use crate::Exit;
use anyhow::Result;
use phoenix_aws::{AwsController, Error};
use phoenix_core::events::{Cause, Intent, ScaleTarget};
use phoenix_core::{FleetName, InstanceId};
use serde::Serialize;
use std::time::{Duration, Instant};

/// What `fleet delete` did.
#[derive(Debug, Clone, Serialize)]
pub struct Deleted {
    pub fleet: FleetName,
    /// Instances terminated first (with --terminate-instances).
    pub terminated: Vec<InstanceId>,
    /// DynamoDB items removed: the fleet record and index entry, instance records, history.
    pub items: usize,
}

/// The cause recorded in the history of the scale-in that precedes a delete.
const CAUSE: &str = "FleetDeleteRequested";

pub async fn delete(
    controller: &AwsController,
    name: &FleetName,
    terminate: bool,
    timeout: Duration,
    out: &Printer,
) -> Result<Deleted> {
    let store = &controller.store;
    let mut fleet = match store.load_fleet(name).await {
        Ok(f) => f,
        Err(Error::NotFound(msg)) => {
            // A delete interrupted after the fleet record went leaves items behind: finish it.
            let items = store.purge_fleet_items(name).await?;
            if items == 0 {
                return Err(Exit {
                    code: 1,
                    message: msg,
                }
                .into());
            }
            return Ok(Deleted {
                fleet: name.clone(),
                terminated: Vec::new(),
                items,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let live: Vec<InstanceId> = fleet.live_instances().map(|i| i.id.clone()).collect();
    if !terminate && (!live.is_empty() || !fleet.pending.is_empty()) {
        let ids: Vec<&str> = live.iter().map(InstanceId::as_str).collect();
        return Err(Exit {
            code: 1,
            message: format!(
                "fleet {name} still has {} live instances{}{}; not deleting it. \
                 `phoenix fleet delete {name} --terminate-instances` scales it to 0, waits until \
                 they are terminated, then deletes it",
                live.len(),
                if ids.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", ids.join(", "))
                },
                if fleet.pending.is_empty() {
                    String::new()
                } else {
                    format!(" and {} launches in flight", fleet.pending_count())
                }
            ),
        }
        .into());
    }

    let cause = Cause::internal(CAUSE);
    if terminate && (fleet.spec.capacity > 0 || !live.is_empty() || !fleet.pending.is_empty()) {
        out.note(&format!(
            "scaling fleet {name} to 0 and waiting for {} instances to be terminated",
            live.len()
        ));
        let deadline = Instant::now() + timeout;
        if fleet.spec.capacity > 0 {
            let scale = Intent::Scale {
                fleet: name.clone(),
                target: ScaleTarget::Desired(0),
            };
            controller
                .reconcile_fleet(name, Some(&scale), chrono::Utc::now(), &cause, None)
                .await?;
        }
        loop {
            fleet = store.load_fleet(name).await?;
            if fleet.live_instances().next().is_none() && fleet.pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(Exit {
                    code: 1,
                    message: format!(
                        "fleet {name} still has {} live instances after {}s; not deleted",
                        fleet.live_instances().count(),
                        timeout.as_secs()
                    ),
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            controller
                .reconcile_fleet(name, None, chrono::Utc::now(), &cause, None)
                .await?;
        }
    }

    // The record is deleted on the version read: a change in between (another writer) means
    // look again.
    for _ in 0..5 {
        match store.delete_fleet(&fleet).await {
            Ok(items) => {
                return Ok(Deleted {
                    fleet: name.clone(),
                    terminated: live,
                    items,
                })
            }
            Err(Error::Conflict(_)) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                fleet = store.load_fleet(name).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Exit {
        code: 1,
        message: format!("fleet {name} kept changing while being deleted; try again"),
    }
    .into())
}
