//! Where new instances go, and what EC2 refused: each launch decision carries its offerings —
//! (instance type, subnet) pairs in order — and the executor takes the first EC2 has capacity for.
//!
//! What holds: launches keep the zones within one instance of each other, counting the instances
//! that stay and the launches pending in the zone they were planned for; a replacement goes to the
//! zone of the instance it replaces unless that zone would then be more than one above the
//! smallest; an offering refused for capacity is in no decision for `UNAVAILABLE_FOR`, and a
//! decision with no offering left is not made (the fleet waits, and the refusals say why); a
//! rebalance only ever launches into the zone it fills.

use super::step::Refusal;
use super::tx::Tx;
use crate::events::Change;
use crate::ids::InstanceId;
use crate::model::{Instance, Offering, Unavailable, UNAVAILABLE_FOR};
use chrono::Duration;
use std::collections::BTreeMap;

/// How long a Spot interruption counts against its pool.
pub(super) const INTERRUPTIONS_KEPT: Duration = Duration::hours(24);

/// Instances per zone: those that stay and the launches pending there. Every zone of the fleet
/// is a key (a zone with none counts 0); a fleet without subnets has one zone, `None`.
pub(super) type ZoneCounts = BTreeMap<Option<String>, u32>;

impl Tx {
    pub(super) fn zone_counts(&self) -> ZoneCounts {
        self.zone_counts_where(|_| true)
    }

    /// `zone_counts`, of the instances staying that `count` says count.
    pub(super) fn zone_counts_where(&self, count: impl Fn(&Instance) -> bool) -> ZoneCounts {
        let mut counts: ZoneCounts = self
            .fleet
            .zones()
            .into_iter()
            .map(|(z, _)| (Some(z), 0))
            .collect();
        if counts.is_empty() {
            counts.insert(None, 0);
        }
        for i in self
            .fleet
            .live_instances()
            .filter(|i| i.disposal.is_none() && count(i))
        {
            if let Some(n) = counts.get_mut(&self.fleet.zone_of(i)) {
                *n += 1;
            }
        }
        for p in &self.fleet.pending {
            let zone = p.zone().map(str::to_string);
            if let Some(n) = counts.get_mut(&zone) {
                *n += p.count;
            }
        }
        counts
    }

    /// Whether EC2 refused this offering for capacity less than `UNAVAILABLE_FOR` ago.
    fn refused(&self, o: &Offering) -> bool {
        self.fleet
            .unavailable
            .get(&o.key())
            .is_some_and(|u| u.until > self.now)
    }

    /// The fleet's offerings in one zone, refused ones left out: On-Demand by type preference;
    /// Spot in the order of fewest interruptions seen in the last day (capacity-optimized, as
    /// far as phoenix can see: it has no view of EC2's spare capacity), then preference.
    fn offerings_in(&self, zone: &Option<String>, spot: bool) -> Vec<Offering> {
        let subnet = zone.as_ref().and_then(|z| {
            self.fleet
                .zones()
                .into_iter()
                .find(|(name, _)| name == z)
                .map(|(_, s)| s)
        });
        let mut out: Vec<Offering> = self
            .fleet
            .spec
            .launch_types()
            .into_iter()
            .map(|t| Offering {
                instance_type: t,
                subnet: subnet.clone(),
                zone: zone.clone(),
                spot,
            })
            .filter(|o| !self.refused(o))
            .collect();
        if spot {
            // A stable sort: the preference order among pools interrupted as often.
            out.sort_by_key(|o| self.interruptions_of(o));
        }
        out
    }

    /// Spot interruptions of instances of this (type, zone) in the last day.
    fn interruptions_of(&self, o: &Offering) -> usize {
        let pool = Offering {
            spot: false,
            ..o.clone()
        };
        self.fleet.interruptions.get(&pool.key()).map_or(0, |ts| {
            ts.iter()
                .filter(|t| **t + INTERRUPTIONS_KEPT > self.now)
                .count()
        })
    }

    /// Whether a launch into `zone` has anything left to try.
    fn zone_open(&self, zone: &Option<String>) -> bool {
        let spot = self.fleet.spec.purchase.is_some_and(|p| p.spot_percent > 0);
        !self.offerings_in(zone, false).is_empty()
            || (spot && !self.offerings_in(zone, true).is_empty())
    }

    /// What one launch meant for `zone` may try, in order: its zone's offerings, then (unless
    /// `only_there`) the other zones', fewest instances first — Spot ones first for a Spot
    /// launch, then On-Demand in the same order (Spot falls back to On-Demand).
    pub(super) fn offerings_for(
        &self,
        zone: &Option<String>,
        counts: &ZoneCounts,
        only_there: bool,
        spot: bool,
    ) -> Vec<Offering> {
        let mut zones = vec![zone];
        if !only_there {
            let mut others: Vec<(&Option<String>, &u32)> =
                counts.iter().filter(|(z, _)| *z != zone).collect();
            others.sort_by_key(|(z, n)| (**n, (*z).clone()));
            zones.extend(others.into_iter().map(|(z, _)| z));
        }
        let mut out = Vec::new();
        for market in [true, false] {
            if market && !spot {
                continue;
            }
            for z in &zones {
                out.extend(self.offerings_in(z, market));
            }
        }
        out
    }

    /// Whether each of `n` new instances is to be Spot, in order (On-Demand first), so that the
    /// fleet meets its `purchase` mix: counted over the instances staying that `count` says
    /// count, and the pending launches.
    pub(super) fn markets(&self, n: u32, count: impl Fn(&Instance) -> bool) -> Vec<bool> {
        let Some(p) = self.fleet.spec.purchase else {
            return vec![false; n as usize];
        };
        let target = p.on_demand(self.fleet.spec.capacity);
        let mut on_demand = self
            .fleet
            .live_instances()
            .filter(|i| i.disposal.is_none() && count(i) && !i.spot)
            .count() as u32;
        on_demand += self
            .fleet
            .pending
            .iter()
            .filter(|p| !p.offerings.first().is_some_and(|o| o.spot))
            .map(|p| p.count)
            .sum::<u32>();
        (0..n)
            .map(|_| {
                if on_demand < target {
                    on_demand += 1;
                    false
                } else {
                    true
                }
            })
            .collect()
    }

    /// Spreads `count` new instances over the zones: each to the zone with fewest (first in
    /// subnet order on a tie) among those with an offering left. Zones and how many each.
    pub(super) fn spread(&self, count: u32, counts: &ZoneCounts) -> Vec<(Option<String>, u32)> {
        let mut counts: Vec<(Option<String>, u32)> = counts
            .iter()
            .filter(|(z, _)| self.zone_open(z))
            .map(|(z, n)| (z.clone(), *n))
            .collect();
        let order = self.fleet.zones();
        let rank = |z: &Option<String>| {
            order
                .iter()
                .position(|(name, _)| Some(name) == z.as_ref())
                .unwrap_or(0)
        };
        let mut out: Vec<(Option<String>, u32)> = Vec::new();
        for _ in 0..count {
            let Some(k) = (0..counts.len()).min_by_key(|&k| (counts[k].1, rank(&counts[k].0)))
            else {
                break;
            };
            counts[k].1 += 1;
            match out.iter_mut().find(|(z, _)| *z == counts[k].0) {
                Some((_, n)) => *n += 1,
                None => out.push((counts[k].0.clone(), 1)),
            }
        }
        out
    }

    /// The zone a replacement of `old` goes to: `old`'s, unless it would then be more than one
    /// above the smallest zone (or has no offering left); then the smallest.
    pub(super) fn replacement_zone(&self, old: &InstanceId, counts: &ZoneCounts) -> Option<String> {
        let old = self.fleet.instances.get(old);
        // A leaving instance no longer counts in its zone: its replacement adds one there.
        let leaving = old.is_some_and(|i| i.disposal.is_some());
        let own = old
            .map(|i| self.fleet.zone_of(i))
            .filter(|z| counts.contains_key(z));
        let smallest = self.spread(1, counts).into_iter().next().map(|(z, _)| z);
        match (own, smallest) {
            (Some(own), Some(small)) => {
                let min = counts.get(&small).copied().unwrap_or(0);
                let after = counts.get(&own).copied().unwrap_or(0) + u32::from(leaving);
                if after <= min + 1 && self.zone_open(&own) {
                    own
                } else {
                    small
                }
            }
            (own, small) => small.or(own).flatten(),
        }
    }

    /// Records what EC2 refused for capacity while launching `token`: each offering is skipped
    /// for `UNAVAILABLE_FOR`.
    pub(super) fn note_refusals(&mut self, token: &str, refused: &[Refusal], launched: bool) {
        if refused.is_empty() {
            return;
        }
        let until = self.now + UNAVAILABLE_FOR;
        for r in refused {
            self.fleet.unavailable.insert(
                r.offering.key(),
                Unavailable {
                    since: self.now,
                    until,
                    reason: r.error.clone(),
                },
            );
        }
        let offerings: Vec<String> = refused.iter().map(|r| r.offering.key()).collect();
        let reason = refused.last().map(|r| r.error.clone()).unwrap_or_default();
        self.changes.push(if launched {
            Change::OfferingsRefused {
                token: token.to_string(),
                offerings,
                reason,
                until,
            }
        } else {
            Change::CapacityUnavailable {
                token: token.to_string(),
                tried: offerings,
                reason,
                until,
            }
        });
    }

    /// Counts a Spot interruption against the pool (type, zone) of the instance: Spot launches
    /// take that pool after the others for a day.
    pub(super) fn note_interruption(&mut self, id: &InstanceId) {
        let Some(i) = self.fleet.instances.get(id) else {
            return;
        };
        let pool = Offering {
            instance_type: i.instance_type.clone(),
            subnet: None,
            zone: self.fleet.zone_of(i),
            spot: false,
        }
        .key();
        let now = self.now;
        let times = self.fleet.interruptions.entry(pool).or_default();
        times.retain(|t| *t + INTERRUPTIONS_KEPT > now);
        times.push(now);
        self.fleet.interruptions.retain(|_, ts| !ts.is_empty());
    }

    /// Forgets refusals whose time is over (with the next change; a step that only forgets is
    /// not worth a write).
    pub(super) fn forget_refusals(&mut self) {
        let now = self.now;
        if self.fleet.unavailable.values().any(|u| u.until <= now) && !self.changes.is_empty() {
            self.fleet.unavailable.retain(|_, u| u.until > now);
        }
    }
}
