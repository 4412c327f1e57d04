//! What a run counts, and the violation that ends it.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub events_lost: u64,
    pub events_duplicated: u64,
    pub invocations: u64,
    pub crashes: u64,
    pub timeouts: u64,
    /// Commits that lost their race (a failed condition or a conflicting transaction).
    pub conflicts: u64,
    pub duplicates: u64,
    pub in_flight: u64,
    pub unfinished: u64,
    /// Reports that named commands left for later (time short, outcome unknown).
    pub unsettled: u64,
    pub commits: u64,
    pub instances_launched: u64,
    pub launch_failures: u64,
    pub terminations: u64,
    pub faults: u64,
    pub service_faults: u64,
    pub published: u64,
    /// Notifications committed in the outbox.
    pub notifications: u64,
    /// Notifications published again (a crash or a failed removal after PutEvents).
    pub notifications_repeated: u64,
    pub rollouts: u64,
    pub succeeded: u64,
    pub rolled_back: u64,
    pub aborted: u64,
    pub superseded: u64,
    pub quarantined_bad: u64,
    pub quarantined_good: u64,
    pub good_by_deadline: u64,
    pub good_by_stop: u64,
    pub good_by_host: u64,
    pub good_by_app: u64,
    pub good_by_spurious: u64,
    pub breaker_trips: u64,
    /// Rollouts that stalled (waited past their deadline on something not the image's fault).
    pub stalls: u64,
    /// Events carrying an intent whose every delivery failed (Lambda's two retries too):
    /// dead-lettered.
    pub dead_lettered: u64,
    /// The schedule's ticks dead-lettered so (the next minute's tick does their work).
    pub ticks_dead_lettered: u64,
    /// Health events of a zone failing at once (`Config::storm`).
    pub storm_events: u64,
    pub queued: u64,
    /// Of `queued`, intents about one instance (health reports, lifecycle hooks' answers).
    pub queued_instance_events: u64,
    pub dequeued: u64,
    /// Reconcile failures reported after the event's own intent was queued or applied.
    pub listed_failures: u64,
    /// Rollouts that change the launch definition (with or without an image), of `rollouts`.
    pub drift_rollouts: u64,
    /// Times a rollout was held by the fleet's windows or a freeze (`RolloutWaiting`).
    pub rollouts_waiting: u64,
    /// Fleet files applied that changed the spec (`FleetUpdated`).
    pub fleet_updates: u64,
    /// New default versions of the fleet's launch template.
    pub template_versions: u64,
    /// Runs that ended converged but for a scale-in the windows hold.
    pub scale_ins_held: u64,
    /// Instances registered with the fleet's target groups (`Registered`, per instance).
    pub registered: u64,
    /// Drains begun (`DrainStarted`).
    pub drains: u64,
    /// Lifecycle hooks ended by an answer, and by their timeout.
    pub hooks_answered: u64,
    pub hooks_timed_out: u64,
    /// Target groups deleted for a while.
    pub groups_deleted: u64,
    /// Capacity shortages injected (a pool, a zone's outage, everywhere).
    pub shortages: u64,
    /// Offerings EC2 refused that the fleet recorded (`OfferingsRefused`: a later one launched;
    /// `CapacityUnavailable`: none did).
    pub offerings_refused: u64,
    pub capacity_unavailable: u64,
    /// Instances launched of a type other than the fleet's first.
    pub fallback_launches: u64,
    /// Launches decided to rebalance the zones.
    pub rebalances: u64,
    /// Instances retired at their max_instance_lifetime.
    pub lifetime_retirements: u64,
    /// phoenix:protected tags set and removed by the operator.
    pub protections: u64,
    /// Instances adopted, and given back by releases.
    pub adopted: u64,
    pub released: u64,
    /// Releases refused (something was under way).
    pub releases_refused: u64,
    /// Auto Scaling groups taken over, takeovers refused, instances detached from them.
    pub takeovers: u64,
    pub takeovers_refused: u64,
    pub detached: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        let pairs: [(&mut u64, u64); 64] = [
            (&mut self.events, o.events),
            (&mut self.events_lost, o.events_lost),
            (&mut self.events_duplicated, o.events_duplicated),
            (&mut self.invocations, o.invocations),
            (&mut self.crashes, o.crashes),
            (&mut self.timeouts, o.timeouts),
            (&mut self.conflicts, o.conflicts),
            (&mut self.duplicates, o.duplicates),
            (&mut self.in_flight, o.in_flight),
            (&mut self.unfinished, o.unfinished),
            (&mut self.unsettled, o.unsettled),
            (&mut self.commits, o.commits),
            (&mut self.instances_launched, o.instances_launched),
            (&mut self.launch_failures, o.launch_failures),
            (&mut self.terminations, o.terminations),
            (&mut self.faults, o.faults),
            (&mut self.service_faults, o.service_faults),
            (&mut self.published, o.published),
            (&mut self.notifications, o.notifications),
            (&mut self.notifications_repeated, o.notifications_repeated),
            (&mut self.rollouts, o.rollouts),
            (&mut self.succeeded, o.succeeded),
            (&mut self.rolled_back, o.rolled_back),
            (&mut self.aborted, o.aborted),
            (&mut self.superseded, o.superseded),
            (&mut self.quarantined_bad, o.quarantined_bad),
            (&mut self.quarantined_good, o.quarantined_good),
            (&mut self.good_by_deadline, o.good_by_deadline),
            (&mut self.good_by_stop, o.good_by_stop),
            (&mut self.good_by_host, o.good_by_host),
            (&mut self.good_by_app, o.good_by_app),
            (&mut self.good_by_spurious, o.good_by_spurious),
            (&mut self.breaker_trips, o.breaker_trips),
            (&mut self.stalls, o.stalls),
            (&mut self.dead_lettered, o.dead_lettered),
            (&mut self.ticks_dead_lettered, o.ticks_dead_lettered),
            (&mut self.storm_events, o.storm_events),
            (&mut self.queued, o.queued),
            (&mut self.queued_instance_events, o.queued_instance_events),
            (&mut self.dequeued, o.dequeued),
            (&mut self.listed_failures, o.listed_failures),
            (&mut self.drift_rollouts, o.drift_rollouts),
            (&mut self.rollouts_waiting, o.rollouts_waiting),
            (&mut self.fleet_updates, o.fleet_updates),
            (&mut self.template_versions, o.template_versions),
            (&mut self.scale_ins_held, o.scale_ins_held),
            (&mut self.registered, o.registered),
            (&mut self.drains, o.drains),
            (&mut self.hooks_answered, o.hooks_answered),
            (&mut self.hooks_timed_out, o.hooks_timed_out),
            (&mut self.groups_deleted, o.groups_deleted),
            (&mut self.shortages, o.shortages),
            (&mut self.offerings_refused, o.offerings_refused),
            (&mut self.capacity_unavailable, o.capacity_unavailable),
            (&mut self.fallback_launches, o.fallback_launches),
            (&mut self.rebalances, o.rebalances),
            (&mut self.lifetime_retirements, o.lifetime_retirements),
            (&mut self.protections, o.protections),
            (&mut self.adopted, o.adopted),
            (&mut self.released, o.released),
            (&mut self.releases_refused, o.releases_refused),
            (&mut self.takeovers, o.takeovers),
            (&mut self.takeovers_refused, o.takeovers_refused),
            (&mut self.detached, o.detached),
        ];
        for (a, b) in pairs {
            *a += b;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub step: u64,
    pub at: String,
    pub kind: &'static str,
    pub message: String,
    /// The fleet's records and EC2's instances at that moment.
    pub state: Vec<String>,
}
