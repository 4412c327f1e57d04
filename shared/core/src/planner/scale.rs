//! Rolling replacement and scaling, in the manner of a Kubernetes Deployment: which instances go
//! and how many new ones come, in one pass.
//!
//! What holds: never more than the budget's `max_total` instances at once, never fewer healthy
//! than its `min_healthy`; instances on another image go only as healthy new ones cover them, and
//! no further than the rollout's current stage (canary, checkpoint) allows (an instance is new
//! when it matches the spec: its image, launch definition and subnet — `Target`); a paused or aborted
//! rollout freezes how far the new image replaces the old, not the fleet's size; nothing is
//! launched from a quarantined image.

use super::budgets::rollout_reason;
use super::rollout::{checkpoint_count, first_launching_wave, what_rolls};
use super::tx::{Tx, MAX_LAUNCHES_PER_STEP, MAX_TERMINATIONS_PER_STEP, MAX_TOUCHED_PER_STEP};
use crate::events::Change;
use crate::ids::InstanceId;
use crate::model::{Fleet, Instance, Reason, RolloutStatus, Target, Wave};
use crate::quantity::Rounding;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// How many instances on the target image the rollout allows now (`None`: up to capacity): the
/// canary until it is healthy and baked, then each checkpoint in turn; frozen while paused; and
/// after an abort, no more than there are.
fn new_image_cap(fleet: &Fleet, current_new: u32) -> Option<u32> {
    let r = fleet.rollout.as_ref()?;
    let capacity = fleet.spec.capacity;
    let policy = &fleet.spec.policy;
    match r.status {
        RolloutStatus::Paused | RolloutStatus::Aborted => return Some(current_new),
        RolloutStatus::InProgress => {}
        _ => return None,
    }
    let mut cap = capacity;
    if let Some(canary) = policy.canary {
        let size = canary
            .resolve(capacity, Rounding::Up)
            .clamp(1, capacity.max(1));
        // Instances already on the image (left by a rollout it superseded) may fill the canary's
        // share before any wave starts: then they are the canary, or it would never be done.
        let target = Target::of(fleet);
        let healthy_on_target = fleet
            .live_instances()
            .filter(|i| target.matches(i) && i.is_healthy() && i.disposal.is_none())
            .count() as u32;
        // The canary is the first wave that launched anything (a wave whose launches EC2
        // refused launched nothing: the next one tries again).
        let canary = first_launching_wave(fleet, r);
        let canary_done = canary.is_some_and(|w| w.healthy_at.is_some())
            || (canary.is_none() && healthy_on_target >= size);
        if !canary_done {
            cap = cap.min(size);
        }
    }
    if let Some(next) = policy
        .checkpoints
        .iter()
        .find(|c| !r.checkpoints_passed.contains(&c.percent))
    {
        cap = cap.min(checkpoint_count(capacity, next.percent));
    }
    Some(cap)
}

/// Leaves in `items` only its first `k` in `order`, in that order: a selection, then a sort of
/// `k` items rather than all of them.
fn first_in_order<T>(items: &mut Vec<T>, k: usize, mut order: impl FnMut(&T, &T) -> Ordering) {
    if k == 0 {
        items.clear();
        return;
    }
    if k < items.len() {
        items.select_nth_unstable_by(k - 1, &mut order);
        items.truncate(k);
    }
    items.sort_by(order);
}

/// Leaves in `items` the `k` to take away (old instances of a rollout, a scale-in's excess), in
/// the order they go: each from the zone with the most instances staying (counting those pending
/// there), by `order` within the zone — so the launches, which fill the smallest zones, and the
/// terminations together keep the zones within one of each other.
fn from_largest_zones<'a>(
    tx: &Tx,
    items: &mut Vec<&'a Instance>,
    k: usize,
    order: impl Fn(&&'a Instance, &&'a Instance) -> Ordering + Copy,
) {
    let mut counts = tx.zone_counts();
    if counts.len() <= 1 || k == 0 {
        first_in_order(items, k, order);
        return;
    }
    let mut by_zone: BTreeMap<Option<String>, Vec<&'a Instance>> = BTreeMap::new();
    for i in items.drain(..) {
        by_zone.entry(tx.fleet.zone_of(i)).or_default().push(i);
    }
    for list in by_zone.values_mut() {
        // Reversed, so the next to go is popped from the end.
        list.sort_by(|a, b| order(b, a));
    }
    while items.len() < k {
        let Some(zone) = by_zone
            .iter()
            .filter(|(_, list)| !list.is_empty())
            .max_by_key(|(z, _)| (counts.get(*z).copied().unwrap_or(u32::MAX), (*z).clone()))
            .map(|(z, _)| z.clone())
        else {
            break;
        };
        if let Some(i) = by_zone.get_mut(&zone).and_then(Vec::pop) {
            items.push(i);
        }
        if let Some(n) = counts.get_mut(&zone) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Rolling replacement and scaling, in the manner of a Kubernetes Deployment: never more than
/// `max_total` instances at once, never fewer healthy than `min_healthy`, old images go only as
/// healthy new ones cover them — and no further than the rollout's current stage allows.
pub(super) fn roll_and_scale(tx: &mut Tx) {
    let capacity = tx.fleet.spec.capacity;
    let budget = tx.fleet.budget();
    let target = tx.fleet.spec.image.clone();
    let spec = Target::of(&tx.fleet);

    // Instances that stay (no termination decided), and those leaving only after a launch.
    let mut keep: Vec<&Instance> = Vec::new();
    let mut leaving_later = 0;
    for i in tx.fleet.live_instances() {
        match &i.disposal {
            None => keep.push(i),
            Some(d) if d.after_launch.is_some() => leaving_later += 1,
            Some(_) => {}
        }
    }
    let pending = tx.fleet.pending_count();
    let total = keep.len() as u32 + pending;

    // Instances past their age go as old ones do (`lifetime`).
    let aging = tx.aging();
    let (mut new, mut old): (Vec<&Instance>, Vec<&Instance>) = keep
        .iter()
        .partition(|i| spec.matches(i) && !tx.aged(aging, i));
    // Protected instances, and adopted ones still in their Auto Scaling group, stay whatever
    // their image: they take their place in the capacity, and a rollout waits for them
    // (`status` names them).
    let protected_old = old.iter().filter(|i| i.is_held()).count() as u32;
    old.retain(|i| !i.is_held());
    let room_for_new = capacity.saturating_sub(protected_old);
    let aged = old.iter().filter(|i| spec.matches(i)).count();
    let healthy_new = new.iter().filter(|i| i.is_healthy()).count() as u32;
    let unready_new = new.len() as u32 - healthy_new + pending;
    let cap = new_image_cap(&tx.fleet, healthy_new + unready_new);
    // A paused or aborted rollout, or one its windows hold, freezes how far the new image
    // replaces the old, not the fleet's size: instances that vanished and a scale-out are still
    // made up (from the fleet's image, as repairs are).
    let hold = tx.hold();
    let status = tx.fleet.rollout.as_ref().map(|r| r.status);
    // An aborted rollout freezes the mix for good, not the instances' age: old instances that
    // reached their lifetime are still replaced (from the fleet's image, as repairs are), or
    // they would live on past it for as long as the fleet stays mixed.
    let aged_old = old.iter().filter(|i| tx.aged(aging, i)).count() as u32;
    let cap = match status {
        Some(RolloutStatus::Paused) => cap.map(|c| c + capacity.saturating_sub(total)),
        Some(RolloutStatus::Aborted) => cap.map(|c| c + capacity.saturating_sub(total) + aged_old),
        Some(RolloutStatus::InProgress) if hold.rollout => {
            Some(healthy_new + unready_new + capacity.saturating_sub(total))
        }
        _ => cap,
    };
    let held_rollout = hold.rollout && status == Some(RolloutStatus::InProgress) && !old.is_empty();
    // A rollout that goes on (a rollback, or one an operator let go on now) takes its scale-in
    // with it: it ends only with the fleet at capacity.
    let rollout_goes_on = matches!(
        status,
        Some(RolloutStatus::InProgress | RolloutStatus::RollingBack)
    ) && !hold.rollout;
    let hold_scale_in = hold.other && !rollout_goes_on;

    // Who goes first: not yet healthy, then older images, then the oldest.
    let order = |a: &&Instance, b: &&Instance| {
        (a.is_healthy(), a.launched_at, &a.id).cmp(&(b.is_healthy(), b.launched_at, &b.id))
    };
    // At most `limit` go, taken from each list in this order (healthy ones last, and skipped
    // only once no more may go): only the first `limit` of a list can be chosen, so only those
    // are put in order. Sorting a whole large fleet would cost more than the rest of the pass.
    let room = MAX_TERMINATIONS_PER_STEP.saturating_sub(tx.terminations_this_step());
    let limit = room.min(MAX_TOUCHED_PER_STEP.saturating_sub(tx.touched.len()));

    // Why old instances go (their budget by reason): the rollout's, else a scale-in.
    let old_reason = tx
        .fleet
        .rollout
        .as_ref()
        .filter(|r| r.status.is_active())
        .map_or(
            if aging.is_some() {
                Reason::Lifetime
            } else {
                Reason::ScaleIn
            },
            rollout_reason,
        );
    let mut remove: Vec<(&Instance, String, Reason)> = Vec::new();
    if old.is_empty() {
        // A scale-in waits for the windows.
        let excess = if hold_scale_in {
            0
        } else {
            total.saturating_sub(capacity) as usize
        };
        new.retain(|i| !i.is_held());
        from_largest_zones(tx, &mut new, excess.min(limit), order);
        for i in &new {
            remove.push((i, format!("scale in to {capacity}"), Reason::ScaleIn));
        }
    } else {
        let mut can_remove = total
            .saturating_sub(tx.min_healthy_for(old_reason))
            .saturating_sub(unready_new) as usize;
        if let Some(cap) = cap {
            // The stage's share of old instances stays until the stage moves on; a scale-in
            // still removes the excess.
            let must_stay = capacity.saturating_sub(cap.max(healthy_new + unready_new)) as usize;
            let stage_room = old.len().saturating_sub(must_stay);
            let excess = total.saturating_sub(capacity) as usize;
            can_remove = can_remove.min(stage_room.max(excess.min(old.len())));
        }
        // What the windows hold back is not taken away: a rollout's replacements (not a
        // rollback's), a scale-in.
        let held = match status {
            Some(RolloutStatus::RollingBack) => false,
            Some(RolloutStatus::InProgress) => hold.rollout,
            _ => hold_scale_in,
        };
        if held {
            can_remove = 0;
        }
        let reason = match tx.fleet.rollout.as_ref().filter(|r| r.status.is_active()) {
            Some(r) if r.status == RolloutStatus::RollingBack => match &r.definition {
                Some(_) if r.from.as_ref() == Some(&r.to) => {
                    "rolled back to the previous definition".to_string()
                }
                _ => format!("rolled back to image {target}"),
            },
            Some(r) if r.status == RolloutStatus::InProgress => {
                format!("replaced by {}", what_rolls(r))
            }
            _ => format!("scale in to {capacity}"),
        };
        from_largest_zones(tx, &mut old, can_remove.min(limit), order);
        for i in &old {
            let retires = spec.matches(i) || status == Some(RolloutStatus::Aborted);
            match aging.filter(|_| retires && tx.aged(aging, i)) {
                Some(l) => remove.push((
                    i,
                    format!("retire: reached max_instance_lifetime {l}"),
                    Reason::Lifetime,
                )),
                None => remove.push((i, reason.clone(), old_reason)),
            }
        }
        // A scale-in during a rollout: drop new instances beyond capacity too.
        let new_total = new.len() as u32 + pending;
        let excess = if hold_scale_in {
            0
        } else {
            new_total.saturating_sub(room_for_new) as usize
        };
        new.retain(|i| !i.is_held());
        from_largest_zones(tx, &mut new, excess.min(limit), order);
        for i in &new {
            remove.push((i, format!("scale in to {capacity}"), Reason::ScaleIn));
        }
    }
    // Pending launches count towards capacity above, but serve nothing yet: a scale-in must not
    // trade healthy instances for them below `min_healthy`. The surplus goes once they are up
    // (unready ones first).
    // (A reason's own budget may keep more healthy, never fewer.)
    let healthy_kept = keep.iter().filter(|i| i.is_healthy()).count();
    let spare: BTreeMap<Reason, usize> = Reason::ALL
        .into_iter()
        .map(|r| {
            (
                r,
                healthy_kept.saturating_sub(tx.min_healthy_for(r) as usize),
            )
        })
        .collect();
    let mut taken = 0;
    remove.retain(|(i, _, reason)| {
        if i.is_healthy() {
            if spare.get(reason).copied().unwrap_or(0) <= taken {
                return false;
            }
            taken += 1;
        }
        true
    });
    remove.truncate(limit);
    let wanted = remove.len();
    if let Some(hourly) = tx.hourly_room() {
        remove.truncate(hourly);
    }
    let blocked_by_budget = remove.len() < wanted;
    // Each reason's own hourly budget.
    let mut room: BTreeMap<Reason, Option<usize>> = BTreeMap::new();
    remove.retain(|(_, _, reason)| {
        let left = room
            .entry(*reason)
            .or_insert_with(|| tx.hourly_room_for(*reason));
        match left {
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        }
    });
    let is_new = |i: &Instance| spec.matches(i) && !tx.aged(aging, i);
    let removed_new = remove.iter().filter(|(i, _, _)| is_new(i)).count() as u32;
    let removed = remove.len() as u32;
    // Aged instances that stay past this step: those the hourly budgets will not let go this
    // hour keep their place in the capacity (nothing is launched for them yet).
    let aged_staying = aged.saturating_sub(
        remove
            .iter()
            .filter(|(_, _, r)| *r == Reason::Lifetime)
            .count(),
    );
    // Where launches go: the zones as they will be once the rollout is over, so counting only
    // the instances that stay (the old ones are on their way out).
    let launch_counts = tx.zone_counts_where(|i| is_new(i));
    let launch_markets = tx.markets(MAX_LAUNCHES_PER_STEP, |i| is_new(i));
    let remove: Vec<(InstanceId, String, Reason)> = remove
        .into_iter()
        .map(|(i, why, reason)| (i.id.clone(), why, reason))
        .collect();
    drop(new);
    drop(old);
    drop(keep);
    if blocked_by_budget {
        tx.note_budget(true);
    }
    tx.note_window(held_rollout);

    for (id, why, reason) in &remove {
        tx.decide_terminate(id, why.clone(), None);
        tx.count_for(*reason);
        if let Some(wave) = tx.active_rollout().and_then(|r| r.waves.last_mut()) {
            wave.terminated.push(id.clone());
        }
    }

    let hour_left = match (tx.hourly_room(), tx.hourly_room_for(Reason::Lifetime)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let aged_held = hour_left.map_or(0, |left| aged_staying.saturating_sub(left)) as u32;
    let room_for_new = room_for_new.saturating_sub(aged_held);

    // Launch new-image instances up to capacity (or the stage's cap), within the surge limit.
    let new_count = (healthy_new + unready_new).saturating_sub(removed_new);
    let peak = total - removed + leaving_later;
    let launch = budget
        .max_total
        .saturating_sub(peak)
        .min(
            room_for_new
                .min(cap.unwrap_or(capacity))
                .saturating_sub(new_count),
        )
        .min(MAX_LAUNCHES_PER_STEP.saturating_sub(tx.launches_this_step()));
    // Never from a quarantined image (the fleet stays on one when a health gate fails with
    // automatic rollback off, until the operator undoes the rollout or clears the quarantine).
    if launch == 0 || !tx.room_to_touch() || tx.fleet.quarantined.contains_key(&target) {
        return;
    }
    let reason = match tx.active_rollout() {
        Some(r) if r.status == RolloutStatus::RollingBack => {
            format!("roll back rollout {} to {target}", r.id)
        }
        Some(r) => format!("rollout {} to {}", r.id, what_rolls(r)),
        None => format!("bring fleet to {capacity} instances"),
    };
    // Spread over the zones, each decision with the offerings it may fall back on.
    let counts = launch_counts;
    let placed = tx.spread(launch, &counts);
    if placed.is_empty() {
        // EC2 refused every offering a moment ago: the fleet waits (the refusals say why).
        return;
    }
    let launch = placed.iter().map(|(_, n)| n).sum();
    // On-Demand or Spot, per new instance, to meet the fleet's mix; one decision per zone and
    // market.
    let mut markets = launch_markets.into_iter();
    let mut decisions: Vec<((Option<String>, bool), u32)> = Vec::new();
    for (zone, n) in placed {
        for _ in 0..n {
            let key = (zone.clone(), markets.next().unwrap_or(false));
            match decisions.iter_mut().find(|(k, _)| *k == key) {
                Some((_, count)) => *count += 1,
                None => decisions.push((key, 1)),
            }
        }
    }
    let mut tokens = Vec::new();
    for ((zone, spot), n) in decisions {
        let offerings = tx.offerings_for(&zone, &counts, false, spot);
        tokens.push(tx.decide_launch(target.clone(), n, reason.clone(), offerings));
    }
    let now = tx.now;
    let mut wave_started = None;
    // Launches while the windows hold the rollout only make up lost capacity: not a wave.
    if let Some(r) = tx
        .active_rollout()
        .filter(|r| r.status == RolloutStatus::InProgress && !hold.rollout)
    {
        let number = r.waves.len() as u32 + 1;
        r.waves.push(Wave {
            number,
            started_at: now,
            tokens,
            launched: Vec::new(),
            terminated: Vec::new(),
            healthy_at: None,
        });
        wave_started = Some(Change::WaveStarted {
            rollout: r.id,
            wave: number,
            launches: launch,
        });
    }
    tx.changes.extend(wave_started);
}
