//! The three event-driven replacements end to end on the emulator: a pipeline publishes with the
//! CLI, EventBridge routes to the function's queue, the dispatcher runs the handler, and EC2 and
//! DynamoDB end in exactly the expected state.

#![allow(clippy::unwrap_used)]

use phoenix_core::events::Change;
use phoenix_core::model::{Health, RolloutStatus};
use phoenix_tests::{FleetFile, Harness};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

fn count(history: &[phoenix_core::history::HistoryEntry], pred: impl Fn(&Change) -> bool) -> usize {
    history
        .iter()
        .flat_map(|e| &e.changes)
        .filter(|c| pred(c))
        .count()
}

fn launched_ids(history: &[phoenix_core::history::HistoryEntry]) -> Vec<String> {
    history
        .iter()
        .flat_map(|e| &e.changes)
        .filter_map(|c| {
            if let Change::Launched { instances, .. } = c {
                Some(instances.iter().map(|i| i.to_string()))
            } else {
                None
            }
        })
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_image_replaces_every_instance_wave_by_wave() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    h.apply(&FleetFile::new("web", &a, 4).surge("2"));
    h.settle("web").await;
    let before: BTreeSet<String> = h
        .fleet_instances("web")
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(before.len(), 4);

    let out = h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        b.as_str(),
    ]);
    assert!(out.contains("published ImageReady"), "{out}");
    let fleet = h.settle("web").await;

    // EC2: exactly 4 live instances, all on B, tagged at launch; the 4 old ones terminated.
    let live = h.fleet_instances("web").await;
    assert_eq!(live.len(), 4);
    for i in &live {
        assert_eq!(i.image, b.as_str());
        assert_eq!(i.tags["phoenix:fleet"], "web");
        assert_eq!(i.tags["phoenix:image"], b.as_str());
        assert_eq!(
            i.tags["team"], "web",
            "the fleet's own tags are applied at launch"
        );
        assert!(i.tags["phoenix:launch"].starts_with("web-"));
        assert!(!before.contains(&i.id));
    }
    let all = h.instances().await;
    for id in &before {
        let old = all.iter().find(|i| &i.id == id).unwrap();
        assert!(
            old.state == "terminated" || old.state == "shutting-down",
            "{id} is {}",
            old.state
        );
    }
    assert_eq!(
        all.len(),
        8,
        "4 launched for the fleet, 4 for the rollout, nothing more"
    );

    // DynamoDB: the rollout succeeded in ceil(4/2) = 2 waves; the history explains every step.
    let rollout = fleet.rollout.clone().unwrap();
    assert_eq!(rollout.status, RolloutStatus::Succeeded);
    assert_eq!(
        (rollout.from.unwrap(), rollout.to.clone()),
        (a.clone(), b.clone())
    );
    assert_eq!(rollout.waves.len(), 2);
    assert!(rollout
        .waves
        .iter()
        .all(|w| w.launched.len() == 2 && w.healthy_at.is_some()));
    assert_eq!(fleet.spec.image, b);
    let history = h.history("web").await;
    assert_eq!(
        count(&history, |c| matches!(c, Change::RolloutStarted { .. })),
        1
    );
    assert_eq!(
        count(&history, |c| matches!(c, Change::WaveStarted { .. })),
        2
    );
    assert_eq!(
        count(&history, |c| matches!(c, Change::RolloutSucceeded { .. })),
        1
    );
    assert_eq!(launched_ids(&history).len(), 8);
    let terminated = count(&history, |c| matches!(c, Change::TerminationDecided { .. }));
    assert_eq!(terminated, 4);
    let cause = history
        .iter()
        .find(|e| {
            e.changes
                .iter()
                .any(|c| matches!(c, Change::ImageChanged { .. }))
        })
        .unwrap();
    assert_eq!(cause.cause.detail_type, "ImageReady");
    assert!(
        cause.cause.event_id.is_some(),
        "the change is recorded with the event that caused it"
    );

    // The same image again is a no-op.
    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        b.as_str(),
    ]);
    h.settle("web").await;
    assert_eq!(h.instances().await.len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_health_check_replaces_that_instance_only() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    h.apply(&FleetFile::new("web", &a, 4));
    h.settle("web").await;
    let before: Vec<String> = h
        .fleet_instances("web")
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    let victim = before[1].clone();

    h.phoenix_ok(&[
        "publish",
        "health-failed",
        "--instance",
        &victim,
        "--reason",
        "http 503 on /health",
    ]);
    let deliveries = h.drain().await;
    assert_eq!(deliveries.len(), 1);
    let report = deliveries[0].report.as_ref().unwrap();
    assert_eq!(
        report.fleets[0]
            .terminated
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>(),
        vec![victim.clone()]
    );
    assert_eq!(report.fleets[0].launched.len(), 1);

    // Without any reconcile: the failed one is terminated, one replacement from the fleet's image.
    let live = h.fleet_instances("web").await;
    assert_eq!(live.len(), 4);
    assert!(!live.iter().any(|i| i.id == victim));
    let new: Vec<_> = live.iter().filter(|i| !before.contains(&i.id)).collect();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].image, a.as_str());
    let all = h.instances().await;
    assert_eq!(
        all.iter().find(|i| i.id == victim).unwrap().state,
        "terminated"
    );
    assert_eq!(all.len(), 5);

    let fleet = h.settle("web").await;
    assert!(!fleet.instances.contains_key(&victim.parse().unwrap()));
    let history = h.history("web").await;
    assert_eq!(
        count(
            &history,
            |c| matches!(c, Change::HealthChanged { health: Health::Unhealthy { reason, .. }, .. } if reason == "http 503 on /health")
        ),
        1
    );

    // Again for the same instance: already replaced, nothing happens.
    h.phoenix_ok(&["publish", "health-failed", "--instance", &victim]);
    let again = h.drain().await;
    let changes = &again[0].report.as_ref().unwrap().fleets[0].changes;
    assert!(
        matches!(&changes[..], [Change::Ignored { reason }] if reason.contains("already replaced")),
        "{changes:?}"
    );
    h.settle("web").await;
    assert_eq!(h.instances().await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_reaches_the_desired_capacity_and_removes_old_images_first() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    h.apply(&FleetFile::new("web", &a, 4));
    h.settle("web").await;

    h.phoenix_ok(&["publish", "scale", "--fleet", "web", "--desired", "6"]);
    h.drain().await;
    assert_eq!(
        h.fleet_instances("web").await.len(),
        6,
        "scale-out launches at once"
    );
    let fleet = h.settle("web").await;
    assert_eq!(fleet.spec.capacity, 6);
    assert_eq!(h.instances().await.len(), 6);

    // A new image mid-way, then scale in: instances on the older image go first.
    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        b.as_str(),
    ]);
    h.drain().await; // first wave of B launched (1 with the default surge)
    h.dispatcher.tick().await.unwrap();
    let on_b = h
        .fleet_instances("web")
        .await
        .iter()
        .filter(|i| i.image == b.as_str())
        .count();
    assert!(on_b >= 1);
    h.phoenix_ok(&["publish", "scale", "--fleet", "web", "--delta", "-4"]);
    h.drain().await;
    let live = h.fleet_instances("web").await;
    assert!(
        live.iter().filter(|i| i.image == b.as_str()).count() >= on_b.min(2),
        "B instances are kept while A ones go"
    );
    let fleet = h.settle("web").await;
    assert_eq!(fleet.spec.capacity, 2);
    let live = h.fleet_instances("web").await;
    assert_eq!(live.len(), 2);
    assert!(live.iter().all(|i| i.image == b.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_removes_the_oldest_instances() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    h.apply(&FleetFile::new("web", &a, 2));
    h.settle("web").await;
    let first: BTreeSet<String> = h
        .fleet_instances("web")
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    // EC2 launch times have one-second resolution: make the next ones strictly younger.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    h.phoenix_ok(&["publish", "scale", "--fleet", "web", "--desired", "4"]);
    h.settle("web").await;
    h.phoenix_ok(&["publish", "scale", "--fleet", "web", "--desired", "2"]);
    h.settle("web").await;
    let left: BTreeSet<String> = h
        .fleet_instances("web")
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(
        left.is_disjoint(&first),
        "the two oldest went: {left:?} vs {first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_of_8_with_surge_2_never_drops_below_8_healthy_nor_exceeds_10() {
    let h = Arc::new(Harness::start().await.unwrap());
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    h.apply(&FleetFile::new("web", &a, 8).surge("2").unavailable("0"));
    h.settle("web").await;

    // Watch EC2 continuously from another task while the rollout runs.
    let done = Arc::new(AtomicBool::new(false));
    let (min_healthy, max_live, samples) = (
        Arc::new(AtomicUsize::new(usize::MAX)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let watcher = {
        let (h, done, min_healthy, max_live, samples) = (
            h.clone(),
            done.clone(),
            min_healthy.clone(),
            max_live.clone(),
            samples.clone(),
        );
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let (healthy, live) = h.healthy_count("web").await;
                min_healthy.fetch_min(healthy, Ordering::SeqCst);
                max_live.fetch_max(live, Ordering::SeqCst);
                samples.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        b.as_str(),
    ]);
    // Also check the recorded state after every step, not only what the watcher happened to see.
    let fleet = h
        .settle_with("web", |f| {
            let live = f.live_instances().count() as u32 + f.pending_count();
            let healthy = f.live_instances().filter(|i| i.is_healthy()).count();
            assert!(live <= 10, "recorded {live} instances");
            assert!(healthy >= 8, "recorded only {healthy} healthy");
        })
        .await;
    done.store(true, Ordering::SeqCst);
    watcher.await.unwrap();

    assert!(
        samples.load(Ordering::SeqCst) > 5,
        "the watcher observed the rollout"
    );
    assert!(
        min_healthy.load(Ordering::SeqCst) >= 8,
        "saw {} healthy",
        min_healthy.load(Ordering::SeqCst)
    );
    assert!(
        max_live.load(Ordering::SeqCst) <= 10,
        "saw {} running",
        max_live.load(Ordering::SeqCst)
    );
    let rollout = fleet.rollout.unwrap();
    assert_eq!(rollout.status, RolloutStatus::Succeeded);
    assert_eq!(rollout.waves.len(), 4, "ceil(8 / 2) waves");
    assert_eq!(
        h.fleet_instances("web")
            .await
            .iter()
            .filter(|i| i.image == b.as_str())
            .count(),
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmanaged_instances_are_never_touched() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    let mut bystanders = h.launch_unmanaged(&a, 2, &[]).await;
    bystanders.extend(
        h.launch_unmanaged(&a, 1, &[("team", "web"), ("Name", "web-a")])
            .await,
    );
    // Even one claiming another fleet's name with a lookalike key.
    bystanders.extend(h.launch_unmanaged(&a, 1, &[("phoenix-fleet", "web")]).await);

    h.apply(&FleetFile::new("web", &a, 3).surge("2"));
    h.settle("web").await;
    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        b.as_str(),
    ]);
    h.settle("web").await;
    let victim = h.fleet_instances("web").await[0].id.clone();
    h.phoenix_ok(&["publish", "health-failed", "--instance", &victim]);
    h.settle("web").await;
    h.phoenix_ok(&["publish", "scale", "--fleet", "web", "--desired", "1"]);
    h.settle("web").await;
    // A health event naming a bystander is refused, not acted on.
    h.phoenix_ok(&["publish", "health-failed", "--instance", &bystanders[0]]);
    let d = h.drain().await;
    assert!(
        d[0].error
            .as_deref()
            .unwrap()
            .contains("not managed by any phoenix fleet"),
        "{d:?}"
    );
    h.settle("web").await;

    let all = h.instances().await;
    for id in &bystanders {
        let i = all.iter().find(|i| &i.id == id).unwrap();
        assert_eq!(i.state, "running", "{id} was touched");
    }
    assert_eq!(h.fleet_instances("web").await.len(), 1);
}
