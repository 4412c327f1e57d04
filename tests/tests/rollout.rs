//! The rollout engine on the emulator: canary and bake, checkpoints and resume, automatic
//! rollback with quarantine, the mass-failure breaker, `plan` agreeing with the rollout; drift (a
//! new instance type, a launch template's new version), rollout windows and freezes.

#![allow(clippy::unwrap_used)]

use phoenix_core::events::Change;
use phoenix_core::model::RolloutStatus;
use phoenix_tests::{FleetFile, Harness};
use std::time::Duration;

fn changes(history: &[phoenix_core::history::HistoryEntry]) -> Vec<Change> {
    history
        .iter()
        .flat_map(|e| e.changes.iter().cloned())
        .collect()
}

/// Instances per image among the fleet's live ones.
async fn on_image(h: &Harness, image: &phoenix_core::ImageId) -> usize {
    h.fleet_instances("web")
        .await
        .iter()
        .filter(|i| i.image == image.as_str())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_bakes_a_checkpoint_pauses_and_resume_finishes_the_rollout() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    let fleet = FleetFile::new("web", &a, 4)
        .surge("2")
        .policy("canary: 1")
        .policy("bake: 2s")
        .policy("checkpoints: [{percent: 50}]");
    h.apply(&fleet);
    h.settle("web").await;

    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        b.as_str(),
    ]);
    h.drain().await;
    assert_eq!(
        on_image(&h, &b).await,
        1,
        "the first wave is the canary alone"
    );

    // The canary becomes healthy: the rollout bakes, launching nothing.
    h.dispatcher.tick().await.unwrap();
    let f = h.fleet("web").await;
    assert_eq!(f.rollout.as_ref().unwrap().status, RolloutStatus::Paused);
    h.dispatcher.tick().await.unwrap();
    assert_eq!(on_image(&h, &b).await, 1, "nothing more while baking");

    // After the bake, up to the 50 % checkpoint, where it pauses until resumed.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for _ in 0..4 {
        h.dispatcher.tick().await.unwrap();
    }
    let f = h.fleet("web").await;
    let rollout = f.rollout.clone().unwrap();
    assert_eq!(rollout.status, RolloutStatus::Paused, "{rollout:?}");
    assert_eq!(rollout.checkpoints_passed, vec![50]);
    assert_eq!(on_image(&h, &b).await, 2);
    assert_eq!(
        on_image(&h, &a).await,
        2,
        "half the fleet stays on the old image at the checkpoint"
    );
    for _ in 0..3 {
        h.dispatcher.tick().await.unwrap();
    }
    assert_eq!(
        on_image(&h, &b).await,
        2,
        "still paused: it waits for a person"
    );

    h.phoenix_ok(&["rollout", "resume", "web"]);
    let f = h.settle("web").await;
    let rollout = f.rollout.unwrap();
    assert_eq!(rollout.status, RolloutStatus::Succeeded);
    assert_eq!(on_image(&h, &b).await, 4);
    let all = changes(&h.history("web").await);
    let count = |p: fn(&Change) -> bool| all.iter().filter(|c| p(c)).count();
    assert_eq!(
        count(|c| matches!(c, Change::CheckpointReached { percent: 50, .. })),
        1
    );
    assert_eq!(
        count(|c| matches!(c, Change::RolloutPaused { .. })),
        2,
        "bake, then the checkpoint"
    );
    assert_eq!(count(|c| matches!(c, Change::RolloutResumed { .. })), 2);
    assert!(rollout.waves[0].launched.len() == 1, "canary wave of one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_image_rolls_back_is_quarantined_and_refused_afterwards() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    h.apply(&FleetFile::new("web", &a, 4).surge("1"));
    h.settle("web").await;
    let notes = h.subscribe().await;

    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        b.as_str(),
    ]);
    h.drain().await;
    let canary = h
        .fleet_instances("web")
        .await
        .into_iter()
        .find(|i| i.image == b.as_str())
        .unwrap();
    h.phoenix_ok(&[
        "publish",
        "health-failed",
        "--instance",
        &canary.id,
        "--reason",
        "500 on /health",
    ]);
    h.drain().await;

    let f = h.fleet("web").await;
    let rollout = f.rollout.clone().unwrap();
    assert_eq!(rollout.status, RolloutStatus::RollingBack);
    assert!(rollout
        .reason
        .as_deref()
        .unwrap()
        .contains("500 on /health"));
    assert_eq!(
        f.spec.image, a,
        "the fleet's image is the previous one again"
    );
    assert!(f.quarantined.contains_key(&b));

    let f = h.settle("web").await;
    assert_eq!(
        f.rollout.as_ref().unwrap().status,
        RolloutStatus::RolledBack
    );
    let live = h.fleet_instances("web").await;
    assert_eq!(live.len(), 4);
    assert!(live.iter().all(|i| i.image == a.as_str()), "{live:?}");

    // The quarantined image is refused, with the reason, and nothing launches from it.
    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        b.as_str(),
    ]);
    let d = h.drain().await;
    let refused = d[0].report.as_ref().unwrap().fleets[0]
        .changes
        .iter()
        .find_map(|c| match c {
            Change::ImageRefused { reason, .. } => Some(reason.clone()),
            _ => None,
        });
    assert!(
        refused
            .as_deref()
            .unwrap_or_default()
            .contains("quarantined"),
        "{d:?}"
    );
    // Scale-out uses the old image.
    h.phoenix_ok(&["publish", "scale", "--fleet", "web", "--desired", "6"]);
    h.settle("web").await;
    let live = h.fleet_instances("web").await;
    assert_eq!(live.len(), 6);
    assert!(live.iter().all(|i| i.image == a.as_str()));
    let b_launched = h
        .instances()
        .await
        .iter()
        .filter(|i| i.image == b.as_str())
        .count();
    assert_eq!(b_launched, 1, "only the canary ever ran the bad image");

    let kinds: Vec<String> = h
        .notifications(&notes)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for expected in [
        "RolloutStarted",
        "RolloutRollingBack",
        "ImageQuarantined",
        "RolloutRolledBack",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} not published: {kinds:?}"
        );
    }

    // Cleared by an operator, the image may roll out again.
    h.phoenix_ok(&["image", "clear-quarantine", "web", b.as_str()]);
    h.drain().await;
    assert!(h.fleet("web").await.quarantined.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_failure_trips_the_breaker_and_names_what_the_failures_share() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    h.apply(&FleetFile::new("web", &a, 6).surge("2"));
    h.settle("web").await;
    // Four more on another instance type: the ones that will fail. (A new type is drift: during a
    // freeze the six others stay as they are, while the scale-out launches the four from the new
    // definition.)
    let now = chrono::Utc::now();
    let freeze = format!(
        "freeze: [{{from: \"{}\", until: \"{}\"}}]",
        (now - chrono::Duration::hours(1)).to_rfc3339(),
        (now + chrono::Duration::days(1)).to_rfc3339()
    );
    let mixed = FleetFile::new("web", &a, 10)
        .surge("2")
        .instance_type("t3.small");
    h.apply(&mixed.clone().policy(&freeze));
    tick_until(&h, |f| {
        f.pending.is_empty() && f.live_instances().filter(|i| i.is_healthy()).count() == 10
    })
    .await;
    let notes = h.subscribe().await;
    let f = h.fleet("web").await;
    let small: Vec<String> = f
        .live_instances()
        .filter(|i| i.instance_type.as_deref() == Some("t3.small"))
        .map(|i| i.id.to_string())
        .collect();
    assert_eq!(small.len(), 4, "{f:#?}");

    // 40 % of the fleet fails at the same time (stopped outside phoenix): the next reconcile
    // sees four unhealthy at once. (Failures reported one by one, each repaired before the next
    // arrives, are not "at once": each is repaired — see the core's tests of the breaker.)
    h.ec2
        .stop_instances()
        .set_instance_ids(Some(small.clone()))
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        h.dispatcher.tick().await.unwrap();
    }

    let f = h.fleet("web").await;
    let breaker = f.breaker.clone().expect("the breaker tripped");
    assert!(
        breaker
            .shared
            .as_deref()
            .unwrap_or_default()
            .contains("instance type t3.small"),
        "{breaker:?}"
    );
    let history = changes(&h.history("web").await);
    let replaced = history
        .iter()
        .filter(|c| matches!(c, Change::InstanceReplaced { .. }))
        .count();
    assert!(
        replaced <= 2,
        "the breaker lets at most 20 % of 10 be replaced, not {replaced}"
    );
    let still_failed = f.live_instances().filter(|i| i.is_failed()).count();
    assert_eq!(
        still_failed + replaced,
        4,
        "the others wait, failed, for the cause to be found"
    );

    let halted: Vec<serde_json::Value> = h
        .notifications(&notes)
        .await
        .into_iter()
        .filter(|(k, _)| k == "ReplacementHalted")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(halted.len(), 1);
    assert!(
        halted[0]["shared_attribute"]
            .as_str()
            .unwrap()
            .contains("t3.small"),
        "{halted:?}"
    );

    // An operator who found the cause lets repairs go on (and, the freeze over, the new type roll).
    h.phoenix_ok(&["resume-repairs", "web"]);
    h.drain().await;
    h.apply(&mixed);
    let f = h.settle("web").await;
    assert!(f.breaker.is_none());
    assert_eq!(f.live_instances().filter(|i| i.is_failed()).count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_exactly_what_the_rollout_then_does() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    h.apply(&FleetFile::new("web", &a, 6).surge("2").unavailable("1"));
    h.settle("web").await;

    let fleet = h.fleet("web").await;
    let plan: serde_json::Value = serde_json::from_str(&h.phoenix_ok(&[
        "plan",
        "web",
        "--image",
        b.as_str(),
        "--output",
        "json",
    ]))
    .unwrap();
    assert!(plan["refused"].is_null(), "{plan}");
    let passes = plan["passes"].as_array().unwrap();
    let planned = planned(&plan);
    assert!(
        passes
            .iter()
            .all(|p| p["peak"].as_u64().unwrap() <= 8 && p["healthy_floor"].as_u64().unwrap() >= 5),
        "{plan}"
    );
    assert_eq!(
        h.fleet("web").await.version,
        fleet.version,
        "planning changed nothing"
    );

    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        b.as_str(),
    ]);
    h.settle("web").await;
    assert_eq!(planned, done(&h, &fleet).await, "plan vs rollout");
}

/// What each pass of a plan (`phoenix plan -o json`) launches, and which instances it terminates.
fn planned(plan: &serde_json::Value) -> Vec<(u32, Vec<String>)> {
    plan["passes"]
        .as_array()
        .expect("passes")
        .iter()
        .map(|p| {
            let ids = p["terminate"]
                .as_array()
                .expect("terminate")
                .iter()
                .map(|i| i.as_str().expect("an instance id").to_string())
                .collect();
            (p["launch"].as_u64().expect("launch") as u32, ids)
        })
        .collect()
}

/// The same of each decision recorded since `before`: what it launched, which of `before`'s
/// instances it terminated.
async fn done(h: &Harness, before: &phoenix_core::model::Fleet) -> Vec<(u32, Vec<String>)> {
    let originals: Vec<String> = before.live_instances().map(|i| i.id.to_string()).collect();
    let history = h.history("web").await;
    history
        .iter()
        .filter(|e| e.version > before.version)
        .filter_map(|e| {
            let launch: u32 = e
                .changes
                .iter()
                .map(|c| {
                    if let Change::LaunchDecided { count, .. } = c {
                        *count
                    } else {
                        0
                    }
                })
                .sum();
            let terminate: Vec<String> = e
                .changes
                .iter()
                .filter_map(|c| match c {
                    Change::TerminationDecided { instance, .. }
                        if originals.contains(&instance.to_string()) =>
                    {
                        Some(instance.to_string())
                    }
                    _ => None,
                })
                .collect();
            (launch > 0 || !terminate.is_empty()).then_some((launch, terminate))
        })
        .collect()
}

/// Publishes `HealthCheckPassed` for every live instance of the fleet not yet healthy, as an
/// application health checker does, and delivers the events.
async fn report_healthy(h: &Harness) {
    let f = h.fleet("web").await;
    for i in f
        .instances
        .values()
        .filter(|i| i.is_live() && !i.is_healthy())
    {
        h.publish(&phoenix_core::events::Intent::HealthCheckPassed {
            instance: i.id.clone(),
        })
        .await;
    }
    h.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_assumes_the_health_events_a_fleet_waits_for_arrive() {
    // health_check: event, 6 instances, a surge of 1: six waves of one, not the first alone.
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    h.apply(
        &FleetFile::new("web", &a, 6)
            .surge("1")
            .policy("health_check: event"),
    );
    for _ in 0..10 {
        h.drain().await;
        h.dispatcher.tick().await.unwrap();
        report_healthy(&h).await;
        if phoenix_tests::converged(&h.fleet("web").await) {
            break;
        }
    }
    assert!(phoenix_tests::converged(&h.fleet("web").await));
    let version = h.fleet("web").await.version;
    let text = h.phoenix_ok(&["plan", "web", "--image", b.as_str()]);
    assert!(text.contains("6 waves;"), "{text}");
    let plan: serde_json::Value =
        serde_json::from_str(&h.phoenix_ok(&["plan", "web", "--image", b.as_str(), "-o", "json"]))
            .unwrap();
    let passes = plan["passes"].as_array().unwrap();
    let waves: Vec<u64> = passes.iter().filter_map(|p| p["wave"].as_u64()).collect();
    assert_eq!(waves, [1, 2, 3, 4, 5, 6], "{plan}");
    assert!(
        passes.iter().all(|p| p["launch"].as_u64().unwrap() <= 1),
        "{plan}"
    );
    let before = h.fleet("web").await;
    assert_eq!(before.version, version, "planning changed nothing");

    // The rollout, with the health checker reporting, then does what the plan said.
    h.publish(&phoenix_core::events::Intent::ImageReady {
        fleet: phoenix_core::FleetName::parse("web").unwrap(),
        image: b.clone(),
    })
    .await;
    for _ in 0..20 {
        h.drain().await;
        h.dispatcher.tick().await.unwrap();
        report_healthy(&h).await;
        let f = h.fleet("web").await;
        if f.spec.image == b && phoenix_tests::converged(&f) {
            break;
        }
    }
    assert_eq!(on_image(&h, &b).await, 6);
    assert_eq!(planned(&plan), done(&h, &before).await, "plan vs rollout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_event_that_completes_a_wave_starts_the_next_wave_at_once() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    h.apply(
        &FleetFile::new("web", &a, 4)
            .surge("2")
            .policy("health_check: event"),
    );
    for _ in 0..10 {
        h.drain().await;
        h.dispatcher.tick().await.unwrap();
        report_healthy(&h).await;
        if phoenix_tests::converged(&h.fleet("web").await) {
            break;
        }
    }
    assert!(phoenix_tests::converged(&h.fleet("web").await));

    h.publish(&phoenix_core::events::Intent::ImageReady {
        fleet: phoenix_core::FleetName::parse("web").unwrap(),
        image: b.clone(),
    })
    .await;
    h.drain().await;
    // EC2 reports wave 1 running (in AWS its state-change events say so).
    h.dispatcher.tick().await.unwrap();
    let waves = |f: &phoenix_core::model::Fleet| f.rollout.as_ref().unwrap().waves.len();
    assert_eq!(waves(&h.fleet("web").await), 1);
    assert_eq!(on_image(&h, &b).await, 2);

    // The health checker reports wave 1 healthy. No scheduled reconcile runs: the event that
    // completed the wave started the next one.
    report_healthy(&h).await;
    let f = h.fleet("web").await;
    assert_eq!(waves(&f), 2, "{:#?}", f.rollout);
    assert_eq!(on_image(&h, &b).await, 4);
    let started = h
        .history("web")
        .await
        .into_iter()
        .find(|e| {
            e.changes
                .iter()
                .any(|c| matches!(c, Change::WaveStarted { wave: 2, .. }))
        })
        .expect("wave 2 started");
    assert_eq!(started.cause.detail_type, "HealthCheckPassed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_of_50_replacing_50_is_recorded_in_two_transactions() {
    // 100 instances, a surge of 50, health by event: the event that completes wave 1 terminates
    // the 50 it replaces and launches wave 2 in one step. Its outcomes are 100 instance records,
    // more than one DynamoDB transaction holds (100 writes with the fleet record and the history
    // entry): they are recorded in two, and no wave is made smaller for it.
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    h.apply(&FleetFile::new("web", &a, 100).surge("50"));
    h.settle("web").await;
    h.apply(
        &FleetFile::new("web", &a, 100)
            .surge("50")
            .policy("health_check: event"),
    );

    h.publish(&phoenix_core::events::Intent::ImageReady {
        fleet: phoenix_core::FleetName::parse("web").unwrap(),
        image: b.clone(),
    })
    .await;
    h.drain().await;
    h.dispatcher.tick().await.unwrap();
    assert_eq!(on_image(&h, &b).await, 50);
    report_healthy(&h).await;
    // Wave 2 launched and the 50 that wave 1 replaced gone.
    assert_eq!(on_image(&h, &b).await, 100);
    assert_eq!(on_image(&h, &a).await, 50);
    let f = h.fleet("web").await;
    let rollout = f.rollout.as_ref().unwrap();
    assert_eq!(rollout.waves.len(), 2);
    assert!(rollout.waves.iter().all(|w| w.launched.len() == 50));

    let mut history = h.history("web").await;
    history.sort_by_key(|e| e.version);
    let terminated = |e: &phoenix_core::history::HistoryEntry| -> usize {
        e.changes
            .iter()
            .map(|c| match c {
                Change::Terminated { instances, .. } => instances.len(),
                _ => 0,
            })
            .sum()
    };
    let launched = |e: &phoenix_core::history::HistoryEntry| -> usize {
        e.changes
            .iter()
            .map(|c| match c {
                Change::Launched { instances, .. } => instances.len(),
                _ => 0,
            })
            .sum()
    };
    let k = history
        .iter()
        .position(|e| terminated(e) == 50)
        .expect("wave 1's 50 old instances terminated in one entry");
    let (first, second) = (&history[k], &history[k + 1]);
    assert_eq!(launched(first), 0);
    assert_eq!(launched(second), 50, "{:#?}", second.changes);
    assert_eq!(second.version, first.version + 1);
    assert_eq!(first.cause, second.cause, "both outcomes of the one step");
    assert!(first.instances.len() <= 92 && second.instances.len() <= 92);
    // (What follows a step recorded in parts — the rest of the rollout — is the planner's and the
    // simulator's to prove: `outcome_parts` in the core tests, every seed of `phoenix-sim`.)
}

/// Live instances of the fleet in EC2 with their instance type.
async fn types(h: &Harness) -> std::collections::BTreeMap<String, String> {
    let out = h.ec2.describe_instances().send().await.unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            i.state()
                .and_then(|s| s.name())
                .is_some_and(|n| n.as_str() == "running" || n.as_str() == "pending")
                && i.tags()
                    .iter()
                    .any(|t| t.key() == Some("phoenix:fleet") && t.value() == Some("web"))
        })
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_string(),
                i.instance_type()
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// Ticks the scheduled reconcile until `done` holds of the fleet.
async fn tick_until(h: &Harness, done: impl Fn(&phoenix_core::model::Fleet) -> bool) {
    for _ in 0..40 {
        h.drain().await;
        if done(&h.fleet("web").await) {
            return;
        }
        h.dispatcher.tick().await.unwrap();
    }
    panic!("never reached: {:#?}", h.fleet("web").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_type_rolls_wave_by_wave_and_skips_instances_that_match() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let fleet = FleetFile::new("web", &a, 4).policy("checkpoints: [{percent: 50}]");
    h.apply(&fleet);
    h.settle("web").await;
    let before = types(&h).await;
    assert!(before.values().all(|t| t == "t3.micro"), "{before:?}");

    // Another type: a rollout, one instance a wave (surge 1), up to the checkpoint at 50 %.
    h.apply(&fleet.clone().instance_type("t3.small"));
    tick_until(&h, |f| {
        f.rollout
            .as_ref()
            .is_some_and(|r| r.status == RolloutStatus::Paused)
    })
    .await;
    let mid = types(&h).await;
    let small: Vec<&String> = mid
        .iter()
        .filter(|(_, t)| *t == "t3.small")
        .map(|(id, _)| id)
        .collect();
    let kept: Vec<&String> = mid
        .iter()
        .filter(|(_, t)| *t == "t3.micro")
        .map(|(id, _)| id)
        .collect();
    assert_eq!((small.len(), kept.len()), (2, 2), "{mid:?}");
    assert!(kept.iter().all(|id| before.contains_key(*id)));
    let f = h.fleet("web").await;
    let r = f.rollout.as_ref().unwrap();
    assert_eq!(r.waves.len(), 2, "wave by wave: {:?}", r.waves);
    assert_eq!(
        r.definition.as_ref().map(|d| d.fields.clone()),
        Some(vec!["instance_type".to_string()])
    );

    // Back to t3.micro: the two instances still on it match and stay; only the two others roll.
    h.apply(&FleetFile::new("web", &a, 4));
    h.settle("web").await;
    let after = types(&h).await;
    assert!(after.values().all(|t| t == "t3.micro"), "{after:?}");
    for id in &kept {
        assert!(
            after.contains_key(*id),
            "{id} matched and was kept: {after:?}"
        );
    }
    for id in &small {
        assert!(!after.contains_key(*id));
    }
    let started: Vec<Vec<String>> = changes(&h.history("web").await)
        .into_iter()
        .filter_map(|c| match c {
            Change::RolloutStarted { changed, .. } => Some(changed),
            _ => None,
        })
        .collect();
    assert_eq!(
        started,
        vec![vec!["instance_type".to_string()]; 2],
        "two rollouts, each for the type"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_templates_new_default_version_rolls_the_fleet() {
    use aws_sdk_ec2::types::{InstanceType, RequestLaunchTemplateData};
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let data = |t: InstanceType| {
        RequestLaunchTemplateData::builder()
            .instance_type(t)
            .build()
    };
    h.ec2
        .create_launch_template()
        .launch_template_name("web-lt")
        .launch_template_data(data(InstanceType::T3Micro))
        .send()
        .await
        .unwrap();
    let fleet = FleetFile::new("web", &a, 3).line("launch_template: {name: web-lt}");
    h.apply(&fleet);
    let f = h.settle("web").await;
    assert_eq!(f.template_version.as_deref(), Some("1"));
    let originals = types(&h).await;

    // Control: a scheduled pass with the template unchanged rolls nothing.
    h.dispatcher.tick().await.unwrap();
    h.drain().await;
    assert!(h.fleet("web").await.rollout.is_none());

    // Version 2 becomes the default: the next scheduled pass sees it, and the fleet rolls.
    h.ec2
        .create_launch_template_version()
        .launch_template_name("web-lt")
        .launch_template_data(data(InstanceType::T3Small))
        .send()
        .await
        .unwrap();
    h.ec2
        .modify_launch_template()
        .launch_template_name("web-lt")
        .default_version("2")
        .send()
        .await
        .unwrap();
    // CloudTrail reports the new default: the fleets floating on the template reconcile at once.
    let event = serde_json::json!({
        "version": "0",
        "id": "b1c2d3e4-0000-4000-8000-000000000001",
        "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "region": "us-east-1",
        "resources": [],
        "detail": {
            "eventSource": "ec2.amazonaws.com",
            "eventName": "ModifyLaunchTemplate",
            "userIdentity": {"type": "AssumedRole", "arn": "arn:aws:sts::123456789012:assumed-role/Pipeline/ci"},
            "requestParameters": {"ModifyLaunchTemplateRequest": {"LaunchTemplateName": "web-lt", "SetDefaultVersion": "2"}}
        }
    });
    h.enqueue(phoenix_core::patterns::Function::Health, &event.to_string())
        .await;
    h.drain().await;
    let f = h.fleet("web").await;
    assert_eq!(
        f.rollout.as_ref().map(|r| r.status),
        Some(RolloutStatus::InProgress),
        "rolled on the event, before any scheduled pass"
    );
    let f = h.settle("web").await;
    assert_eq!(f.template_version.as_deref(), Some("2"));
    assert_eq!(
        f.rollout.as_ref().map(|r| r.status),
        Some(RolloutStatus::Succeeded)
    );
    let now = types(&h).await;
    assert_eq!(now.len(), 3);
    assert!(
        now.keys().all(|id| !originals.contains_key(id)),
        "every instance replaced: {now:?}"
    );
    let history = changes(&h.history("web").await);
    assert!(history.iter().any(|c| matches!(c,
        Change::TemplateVersionChanged { from: Some(f), to, .. } if f == "1" && to == "2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_outside_its_window_waits_and_then_goes_on_inside_it() {
    use std::sync::atomic::Ordering;
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    // A daily window of one hour that opens three hours from now (UTC).
    let opens = chrono::Utc::now() + chrono::Duration::hours(3);
    let window = format!(
        "windows: [{{days: daily, start: \"{}\", duration: 1h}}]",
        opens.format("%H:%M")
    );
    let fleet = FleetFile::new("web", &a, 2).policy(&window);
    h.apply(&fleet);
    h.settle("web").await;
    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        b.as_str(),
    ]);
    for _ in 0..3 {
        h.drain().await;
        h.dispatcher.tick().await.unwrap();
    }
    assert_eq!(
        on_image(&h, &b).await,
        0,
        "nothing moves outside the window"
    );
    let f = h.fleet("web").await;
    let r = f.rollout.as_ref().unwrap();
    assert_eq!(r.status, RolloutStatus::InProgress);
    let waiting = r.waiting.as_ref().expect("waiting for its window");
    assert!(
        waiting.reason.contains("outside the rollout windows"),
        "{waiting:?}"
    );
    let status = h.phoenix_ok(&["status", "web"]);
    assert!(status.contains("window"), "{status}");

    // The clock reaches the window: the rollout goes on and finishes inside it.
    h.clock.store(3 * 3600 + 60, Ordering::SeqCst);
    let f = h.settle("web").await;
    assert_eq!(on_image(&h, &b).await, 2);
    assert_eq!(
        f.rollout.as_ref().map(|r| r.status),
        Some(RolloutStatus::Succeeded)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_holds_a_rollout_while_a_failed_instance_is_repaired() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    let now = chrono::Utc::now();
    let freeze = format!(
        "freeze: [{{from: \"{}\", until: \"{}\", reason: release freeze}}]",
        (now - chrono::Duration::hours(1)).to_rfc3339(),
        (now + chrono::Duration::days(1)).to_rfc3339()
    );
    let fleet = FleetFile::new("web", &a, 3).policy(&freeze);
    h.apply(&fleet);
    h.settle("web").await;
    let originals = types(&h).await;
    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        b.as_str(),
    ]);
    h.drain().await;
    h.dispatcher.tick().await.unwrap();
    h.drain().await;
    let f = h.fleet("web").await;
    let waiting = f.rollout.as_ref().and_then(|r| r.waiting.clone());
    assert!(
        waiting
            .as_ref()
            .is_some_and(|w| w.reason.contains("release freeze")),
        "{waiting:?}"
    );

    // A failed instance is repaired all the same.
    let failed = originals.keys().next().unwrap().clone();
    h.phoenix_ok(&["publish", "health-failed", "--instance", &failed]);
    for _ in 0..4 {
        h.drain().await;
        h.dispatcher.tick().await.unwrap();
    }
    h.drain().await;
    let live = types(&h).await;
    assert_eq!(live.len(), 3, "{live:?}");
    assert!(!live.contains_key(&failed), "repaired: {live:?}");
    let untouched = originals.keys().filter(|id| live.contains_key(*id)).count();
    assert_eq!(untouched, 2, "the rest wait for the freeze: {live:?}");

    // The operator lets this rollout go now.
    h.phoenix_ok(&["rollout", "resume", "web", "--now"]);
    let f = h.settle("web").await;
    assert_eq!(on_image(&h, &b).await, 3);
    assert_eq!(
        f.rollout.as_ref().map(|r| r.status),
        Some(RolloutStatus::Succeeded)
    );
}
