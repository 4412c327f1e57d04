//! The reliability report at small sizes (`make chaos` runs the full ones): every scenario must
//! end with no duplicate launch, no leaked or wrongly terminated instance, no lost history entry
//! or notification, no dead-lettered event, and the fleet converged on what the events asked for.

#![allow(clippy::unwrap_used)]

use phoenix_tests::chaos::{run_some, table, Sizes};

/// One scenario at small sizes, its own test so that the scenarios run side by side.
async fn scenario_keeps_every_guarantee(key: &str) {
    let rows = run_some(&Sizes::small(), &[key.to_string()], &mut |_| {})
        .await
        .unwrap();
    println!("{}", table(&rows));
    assert_eq!(rows.len(), 1, "{key} is a scenario");
    for r in &rows {
        assert!(r.ok(), "{}:\n{}", r.scenario, r.notes.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_delivered_three_times_keep_every_guarantee() {
    scenario_keeps_every_guarantee("duplicates").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_invocations_keep_every_guarantee() {
    scenario_keeps_every_guarantee("concurrent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_aws_calls_keep_every_guarantee() {
    scenario_keeps_every_guarantee("faults").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_after_each_call_keeps_every_guarantee() {
    scenario_keeps_every_guarantee("crash").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_events_keep_every_guarantee() {
    scenario_keeps_every_guarantee("lost").await;
}

/// The checker is not vacuous: each violation it counts, made by hand, is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_measures_count_each_violation_made_by_hand() {
    use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
    use phoenix_core::model::{TAG_FLEET, TAG_TOKEN};
    use phoenix_tests::chaos::World;

    let w = World::start(5, 1).await.unwrap();
    let a = w.images[0].clone();
    w.create_fleet("web", &a, 2, 1).await.unwrap();
    let clean = w.measure("web", 2, &a).await.unwrap();
    assert_eq!(
        (
            clean.duplicate_launches,
            clean.leaked,
            clean.wrongly_terminated,
            clean.lost_history
        ),
        (0, 0, 0, 0),
        "{:?}",
        clean.notes
    );
    assert!(clean.converged);

    let all = w.instances().await.unwrap();
    let ours: Vec<_> = all
        .iter()
        .filter(|i| i.tags.get(TAG_FLEET).map(String::as_str) == Some("web"))
        .collect();
    let token = ours[0].tags[TAG_TOKEN].clone();
    let launch = |token: String| {
        let ec2 = w.ec2.clone();
        let image = a.clone();
        async move {
            let tags = vec![
                Tag::builder().key(TAG_FLEET).value("web").build(),
                Tag::builder().key(TAG_TOKEN).value(token).build(),
            ];
            ec2.run_instances()
                .image_id(image.as_str())
                .min_count(1)
                .max_count(1)
                .instance_type(InstanceType::T3Micro)
                .tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::Instance)
                        .set_tags(Some(tags))
                        .build(),
                )
                .send()
                .await
                .unwrap();
        }
    };
    // A second instance under a decided token, and one under a token no decision made.
    launch(token).await;
    launch("web-0-999-0".into()).await;
    // A fleet instance terminated behind phoenix's back, and an unmanaged one.
    w.ec2
        .terminate_instances()
        .instance_ids(&ours[1].id)
        .instance_ids(&w.unmanaged[0])
        .send()
        .await
        .unwrap();

    let m = w.measure("web", 2, &a).await.unwrap();
    assert_eq!(m.duplicate_launches, 1, "{:?}", m.notes);
    assert_eq!(m.leaked, 2, "{:?}", m.notes);
    assert_eq!(m.wrongly_terminated, 1, "{:?}", m.notes);
    assert_eq!(m.lost_history, 1, "{:?}", m.notes);
    assert_eq!(
        w.unmanaged_touched().await.unwrap(),
        vec![w.unmanaged[0].clone()]
    );
}

/// A notification a commit recorded that never reached the bus is counted lost; one that did
/// is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_that_never_reached_the_bus_is_counted_lost() {
    use phoenix_core::events::Intent;
    use phoenix_tests::chaos::World;

    let w = World::start(6, 1).await.unwrap();
    let a = w.images[0].clone();
    w.create_fleet("web", &a, 2, 1).await.unwrap();
    let replace = |victim: String| {
        w.event(
            &Intent::HealthCheckFailed {
                instance: victim.parse().unwrap(),
                reason: "by hand".into(),
            },
            w.now(),
        )
    };
    // A replacement publishes `InstanceReplaced`, and it arrives.
    let victim = w.live_ids("web").await.unwrap()[0].clone();
    assert!(w.deliver(&replace(victim)).await);
    let m = w.measure("web", 2, &a).await.unwrap();
    assert_eq!(m.lost_notifications, 0, "{:?}", m.notes);
    assert_eq!(w.notifications().await.unwrap().len(), 1);

    // Another, past the breaker's window, whose notification someone else takes off the queue
    // before the harness reads it.
    w.advance(chrono::Duration::minutes(11));
    let victim = w.live_ids("web").await.unwrap()[0].clone();
    assert!(w.deliver(&replace(victim)).await);
    let taken = phoenix_tests::receive_all(&w.direct, &w.notes)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "{taken:?}");
    let m = w.measure("web", 2, &a).await.unwrap();
    assert_eq!(m.lost_notifications, 1, "{:?}", m.notes);
    assert_eq!(taken[0].0, "InstanceReplaced");
    assert!(
        m.notes
            .iter()
            .any(|n| n.contains("InstanceReplaced") && n.contains("never reached the bus")),
        "{:?}",
        m.notes
    );
}
