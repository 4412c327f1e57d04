//! At-least-once and out-of-order delivery, and bad input: what reaches a function's queue more
//! than once, late, or broken must converge to the same state or be rejected with a reason — and
//! never half-apply anything.

#![allow(clippy::unwrap_used)]

use phoenix_core::patterns::Function;
use phoenix_tests::{envelope, FleetFile, Harness};
use serde_json::json;

/// Counts of what EC2 did for the fleet: instances ever launched, and those now live.
async fn ec2_counts(h: &Harness) -> (usize, usize) {
    let all = h.instances().await;
    let ours: Vec<_> = all
        .iter()
        .filter(|i| i.tags.get("phoenix:fleet").map(String::as_str) == Some("web"))
        .collect();
    (ours.len(), ours.iter().filter(|i| i.is_alive()).count())
}

/// A converged fleet of 4 on image A; returns (harness, A, B).
async fn fleet_of_four() -> (Harness, phoenix_core::ImageId, phoenix_core::ImageId) {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    h.apply(&FleetFile::new("web", &a, 4).surge("2"));
    h.settle("web").await;
    (h, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_three_times_acts_once() {
    let mut outcomes = Vec::new();
    for deliveries in [1, 3] {
        let (h, _a, b) = fleet_of_four().await;
        let victim = h.fleet_instances("web").await[0].id.clone();
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let image = envelope(
            "ev-image",
            "ImageReady",
            json!({"fleet": "web", "image": b}),
            &now,
        )
        .to_string();
        let health = envelope(
            "ev-health",
            "HealthCheckFailed",
            json!({"instance": victim}),
            &now,
        )
        .to_string();
        let scale = envelope(
            "ev-scale",
            "ScaleRequested",
            json!({"fleet": "web", "delta": 1}),
            &now,
        )
        .to_string();
        for _ in 0..deliveries {
            h.enqueue(Function::Health, &health).await;
            h.enqueue(Function::Scale, &scale).await;
            h.enqueue(Function::Image, &image).await;
        }
        let handled = h.drain().await;
        assert_eq!(handled.len(), 3 * deliveries);
        assert!(handled.iter().all(|d| d.error.is_none()), "{handled:?}");
        let fleet = h.settle("web").await;
        let (ever, live) = ec2_counts(&h).await;
        outcomes.push((fleet.spec.capacity, fleet.spec.image == b, ever, live));
        if deliveries == 3 {
            // The duplicates are recognised as such, and recorded nowhere.
            let dups = handled
                .iter()
                .filter(|d| {
                    d.report.as_ref().unwrap().fleets[0].outcome
                        == phoenix_aws::FleetOutcome::Duplicate
                })
                .count();
            assert_eq!(dups, 6);
        }
    }
    assert_eq!(outcomes[0], outcomes[1], "once vs three times");
    assert_eq!(outcomes[0].0, 5, "the delta applied once");
    assert!(outcomes[0].1, "the fleet moved to the new image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_delivered_in_reverse_order_converge_to_the_same_state() {
    let mut finals = Vec::new();
    for reverse in [false, true] {
        let (h, _a, b) = fleet_of_four().await;
        let c = h.register_image("web-c").await;
        let early = envelope(
            "ev-1",
            "ImageReady",
            json!({"fleet": "web", "image": b}),
            "2030-01-01T00:00:01Z",
        )
        .to_string();
        let late = envelope(
            "ev-2",
            "ImageReady",
            json!({"fleet": "web", "image": c}),
            "2030-01-01T00:00:02Z",
        )
        .to_string();
        let scale_early = envelope(
            "ev-3",
            "ScaleRequested",
            json!({"fleet": "web", "desired": 6}),
            "2030-01-01T00:00:01Z",
        )
        .to_string();
        let scale_late = envelope(
            "ev-4",
            "ScaleRequested",
            json!({"fleet": "web", "desired": 3}),
            "2030-01-01T00:00:02Z",
        )
        .to_string();
        let mut order = vec![
            (Function::Image, early),
            (Function::Image, late),
            (Function::Scale, scale_early),
            (Function::Scale, scale_late),
        ];
        if reverse {
            order.reverse();
        }
        for (f, body) in &order {
            h.enqueue(*f, body).await;
            h.drain().await;
        }
        let fleet = h.settle("web").await;
        let live: Vec<String> = h
            .fleet_instances("web")
            .await
            .into_iter()
            .map(|i| i.image)
            .collect();
        let (ever, _) = ec2_counts(&h).await;
        finals.push((
            fleet.spec.capacity,
            live.len(),
            live.iter().all(|i| i == c.as_str()),
            ever,
        ));
        assert_eq!(fleet.spec.image, c, "the newer image wins");
    }
    let (in_order, reversed) = (&finals[0], &finals[1]);
    assert_eq!((in_order.0, in_order.1, in_order.2), (3, 3, true));
    assert_eq!((reversed.0, reversed.1, reversed.2), (3, 3, true));
    assert!(
        reversed.3 <= in_order.3,
        "reversed delivery launched more ({}) than in order ({})",
        reversed.3,
        in_order.3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_a_reason_and_changes_nothing() {
    let (h, _a, b) = fleet_of_four().await;
    let version = h.fleet("web").await.version;
    let counts = ec2_counts(&h).await;
    let t = "2030-01-01T00:00:00Z";
    let victim = h.fleet_instances("web").await[0].id.clone();
    let cases: Vec<(Function, String, &str)> = vec![
        (
            Function::Image,
            "{\"version\": \"0\", \"id\": ".into(),
            "malformed EventBridge event",
        ),
        (
            Function::Image,
            json!({"hello": "world"}).to_string(),
            "missing field",
        ),
        (
            Function::Image,
            envelope("b1", "ImageReady", json!({"fleet": "web"}), t).to_string(),
            "missing field `image`",
        ),
        (
            Function::Image,
            envelope("b2", "ImageReady", json!({"fleet": "ghost", "image": b}), t).to_string(),
            "ghost",
        ),
        (
            Function::Image,
            envelope(
                "b3",
                "ImageReady",
                json!({"fleet": "web", "image": "ubuntu-22.04"}),
                t,
            )
            .to_string(),
            "not an AMI id",
        ),
        (
            Function::Image,
            envelope(
                "b4",
                "ImageReady",
                json!({"fleet": "web", "image": "ami-0000000000000dead"}),
                t,
            )
            .to_string(),
            "does not exist",
        ),
        (
            Function::Health,
            envelope(
                "b5",
                "HealthCheckFailed",
                json!({"instance": "i-0123456789abcdef0"}),
                t,
            )
            .to_string(),
            "not managed by any phoenix fleet",
        ),
        (
            Function::Health,
            envelope("b6", "HealthCheckFailed", json!({"instance": "web-1"}), t).to_string(),
            "not an EC2 instance id",
        ),
        (
            Function::Scale,
            envelope(
                "b7",
                "ScaleRequested",
                json!({"fleet": "web", "desired": -1}),
                t,
            )
            .to_string(),
            "negative",
        ),
        (
            Function::Scale,
            envelope(
                "b8",
                "ScaleRequested",
                json!({"fleet": "web", "desired": 1_000_000}),
                t,
            )
            .to_string(),
            "maximum",
        ),
        (
            Function::Scale,
            envelope(
                "b9",
                "ScaleRequested",
                json!({"fleet": "web", "delta": -10}),
                t,
            )
            .to_string(),
            "outside 0..=",
        ),
        (
            Function::Scale,
            envelope(
                "b10",
                "ScaleRequested",
                json!({"fleet": "web", "desired": "six"}),
                t,
            )
            .to_string(),
            "invalid type",
        ),
        (
            Function::Image,
            envelope("b11", "HealthCheckFailed", json!({"instance": victim}), t).to_string(),
            "does not handle HealthCheckFailed",
        ),
    ];
    for (function, body, expected) in &cases {
        h.enqueue(*function, body).await;
        let d = h.drain().await;
        assert_eq!(d.len(), 1, "{body}");
        let error = d[0]
            .error
            .as_deref()
            .unwrap_or_else(|| panic!("accepted: {body}"));
        assert!(
            error.contains(expected),
            "{body}\n  gave: {error}\n  expected it to mention: {expected}"
        );
    }
    // Every rejected event is kept with its reason, as the DLQ keeps it in AWS.
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), cases.len());
    assert!(dead.iter().all(|(_, reason)| !reason.is_empty()));
    // And nothing moved.
    h.dispatcher.tick().await.unwrap();
    assert_eq!(h.fleet("web").await.version, version);
    assert_eq!(ec2_counts(&h).await, counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_through_the_cli_is_refused_before_anything_is_sent() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let dir = std::env::temp_dir().join(format!("phoenix-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let good = FleetFile::new("web", &a, 2).yaml();
    let cases = [
        (
            file("syntax.yaml", "name: web\nimage: [unclosed\n"),
            "line 2",
        ),
        (
            file("missing.yaml", &good.replace("capacity: 2\n", "")),
            "missing field `capacity`",
        ),
        (
            file(
                "negative.yaml",
                &good.replace("capacity: 2", "capacity: -3"),
            ),
            "capacity: -3 is negative",
        ),
        (
            file(
                "absurd.yaml",
                &good.replace("capacity: 2", "capacity: 50000"),
            ),
            "more than the maximum",
        ),
        (
            file("image.yaml", &good.replace(a.as_str(), "ubuntu")),
            "not an AMI id",
        ),
        (
            file(
                "unknown-ami.yaml",
                &good.replace(a.as_str(), "ami-0000000000000dead"),
            ),
            "does not exist",
        ),
        (
            file("typo.yaml", &good.replace("capacity:", "capacty:")),
            "unknown field `capacty`",
        ),
        (
            file(
                "surge.yaml",
                &good.replace("max_surge: 1", "max_surge: \"150%\""),
            ),
            "more than 100%",
        ),
    ];
    for (path, expected) in &cases {
        let out = h.phoenix(&["fleet", "apply", path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{path} was accepted");
        assert!(err.contains(expected), "{path}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    for args in [
        vec![
            "publish",
            "image-ready",
            "--fleet",
            "web",
            "--image",
            "ubuntu",
        ],
        vec!["publish", "health-failed", "--instance", "web-1"],
        vec!["publish", "scale", "--fleet", "web", "--desired", "-1"],
        vec!["publish", "scale", "--fleet", "web"],
        vec!["publish", "scale", "--fleet", "Web!", "--desired", "2"],
        vec!["status", "ghost"],
    ] {
        let out = h.phoenix(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && !err.is_empty() && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    assert!(
        h.store().list_fleets_now().await.is_empty(),
        "no fleet was created"
    );
    assert!(h.drain().await.is_empty(), "nothing was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_changes_nothing_writes_nothing_but_its_record() {
    let (h, _a, _b) = fleet_of_four().await;
    let f = h.fleet("web").await;
    let healthy = f.live_instances().next().unwrap().id.clone();
    // A chatty checker reports an instance phoenix already counts healthy: nothing changes, so
    // no history entry and no new version (which would make concurrent events lose their race),
    // only the event's record, so that a redelivery is known as one.
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let passed = |id: &str| {
        envelope(id, "HealthCheckPassed", json!({"instance": healthy}), &now).to_string()
    };
    // The first report is recorded (the instance has passed, as well as EC2's checks).
    h.enqueue(Function::Health, &passed("ev-passed-1")).await;
    h.drain().await;
    let f = h.fleet("web").await;
    let before = h.history("web").await.len();
    // The next one, delivered twice, changes nothing.
    for _ in 0..2 {
        h.enqueue(Function::Health, &passed("ev-passed-2")).await;
    }
    let handled = h.drain().await;
    let outcomes: Vec<_> = handled
        .iter()
        .map(|d| d.report.as_ref().unwrap().fleets[0].outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            phoenix_aws::FleetOutcome::Unchanged,
            phoenix_aws::FleetOutcome::Duplicate
        ]
    );
    assert_eq!(h.fleet("web").await.version, f.version);
    assert_eq!(h.history("web").await.len(), before);
    let record = h
        .store()
        .event_record("ev-passed-2")
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(record.status, "COMPLETED");
    // A report that does change the fleet is still committed.
    h.phoenix_ok(&["publish", "health-failed", "--instance", healthy.as_str()]);
    h.drain().await;
    assert!(h.fleet("web").await.version > f.version);
}
