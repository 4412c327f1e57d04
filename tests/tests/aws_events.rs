//! AWS's own events end to end on the emulator: each fixture, with its ids pointed at the
//! emulator's instances and images, is published on the DEFAULT bus with PutEvents (as the AWS
//! service would), reaches its function through the rules of `patterns.rs` and the dispatcher,
//! and leaves EC2 and DynamoDB as the event reference says. The same event about an instance or
//! image no fleet manages changes nothing; a redelivery changes nothing; a truncated or mistyped
//! event is rejected with its reason.

#![allow(clippy::unwrap_used)]

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use chrono::{Duration, Utc};
use phoenix_aws::FleetOutcome;
use phoenix_core::events::{Change, Intent};
use phoenix_core::images::{AllowedImageAccounts, ImageBuild};
use phoenix_core::model::Health;
use phoenix_core::patterns::Function;
use phoenix_core::{FleetName, ImageId, InstanceId};
use phoenix_local::Delivery;
use phoenix_tests::{Ec2Instance, FleetFile, Harness};
use serde_json::{json, Value};

const FIXTURE_INSTANCE: &str = "i-0123456789abcdef0";
const FIXTURE_IMAGE: &str = "ami-0123456789abcdef0";
const BUILD_ARN: &str = "arn:aws:imagebuilder:us-east-1:123456789012:image/web-recipe/1.0.0/2";
const PIPELINE: &str = "arn:aws:imagebuilder:us-east-1:123456789012:image-pipeline/web";

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../fixtures/aws/", $name, ".json"))
    };
}

const AMI: &str = fixture!("ec2-ami-state-change-available");
const BUILD: &str = fixture!("imagebuilder-image-state-change-available");
const ALARM: &str = fixture!("cloudwatch-alarm-state-change-alarm");
const STOPPED: &str = fixture!("ec2-instance-state-change-stopped");
const TERMINATED: &str = fixture!("ec2-instance-state-change-terminated");
const SPOT: &str = fixture!("ec2-spot-instance-interruption-warning");
const REBALANCE: &str = fixture!("ec2-instance-rebalance-recommendation");
const HEALTH: &str = fixture!("health-ec2-instance-retirement-scheduled");
const MODIFY: &str = fixture!("cloudtrail-ec2-modify-instance-attribute");
const PROFILE: &str = fixture!("cloudtrail-ec2-associate-iam-instance-profile");
const SESSION: &str = fixture!("cloudtrail-ssm-start-session");
const COMMAND: &str = fixture!("cloudtrail-ssm-send-command");

/// A fixture about `instance` (and `image`, for image events).
fn about(fixture: &str, instance: &str) -> Value {
    serde_json::from_str(&fixture.replace(FIXTURE_INSTANCE, instance)).unwrap()
}

fn about_image(fixture: &str, image: &ImageId) -> Value {
    serde_json::from_str(&fixture.replace(FIXTURE_IMAGE, image.as_str())).unwrap()
}

/// Publishes an event as the AWS service would: PutEvents on the default bus. EventBridge gives
/// it its own id, time, account and region.
async fn put(h: &Harness, event: &Value) {
    let resources: Vec<String> = event["resources"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let entry = PutEventsRequestEntry::builder()
        .event_bus_name("default")
        .source(event["source"].as_str().unwrap())
        .detail_type(event["detail-type"].as_str().unwrap())
        .detail(event["detail"].to_string())
        .set_resources(Some(resources).filter(|r| !r.is_empty()))
        .build();
    let out = aws_sdk_eventbridge::Client::new(&h.sdk)
        .put_events()
        .entries(entry)
        .send()
        .await
        .unwrap();
    assert_eq!(out.failed_entry_count, 0, "{out:?}");
}

/// Publishes, delivers, and returns the one delivery, which must have succeeded.
async fn deliver(h: &Harness, event: &Value, function: &str) -> Delivery {
    put(h, event).await;
    let mut d = h.drain().await;
    assert_eq!(d.len(), 1, "one delivery expected: {d:#?}");
    let d = d.remove(0);
    assert_eq!(d.function, function, "{d:#?}");
    assert!(d.error.is_none(), "{d:#?}");
    d
}

/// Delivers the same event again, as EventBridge may (same id).
async fn redeliver(h: &Harness, event: &Value, first: &Delivery, function: Function) -> Delivery {
    let mut again = event.clone();
    again["id"] = json!(first.event_id);
    again["time"] = json!(Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string());
    h.enqueue(function, &again.to_string()).await;
    let mut d = h.drain().await;
    assert_eq!(d.len(), 1, "{d:#?}");
    let d = d.remove(0);
    assert!(d.error.is_none(), "{d:#?}");
    d
}

fn outcomes(d: &Delivery) -> Vec<(String, FleetOutcome)> {
    d.report
        .as_ref()
        .unwrap()
        .fleets
        .iter()
        .map(|f| (f.fleet.to_string(), f.outcome))
        .collect()
}

/// Applies a fleet file with extra top-level lines (selector, window, taint, admission).
fn apply(h: &Harness, fleet: &FleetFile, extra: &str) {
    let dir = std::env::temp_dir().join(format!("phoenix-aws-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}-{}.yaml", fleet.name, uuid_like()));
    std::fs::write(&path, format!("{}{extra}", fleet.yaml())).unwrap();
    h.phoenix_ok(&["fleet", "apply", path.to_str().unwrap()]);
}

fn uuid_like() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// What must not move: every fleet's version, and every instance in EC2 with its state.
async fn snapshot(h: &Harness) -> (Vec<(String, u64)>, Vec<Ec2Instance>) {
    let mut versions = Vec::new();
    for name in h.store().list_fleets_now().await {
        versions.push((name.to_string(), h.fleet(name.as_str()).await.version));
    }
    (versions, h.instances().await)
}

fn ids(instances: &[Ec2Instance]) -> Vec<String> {
    instances.iter().map(|i| i.id.clone()).collect()
}

async fn record(h: &Harness, id: &str) -> phoenix_core::model::Instance {
    let id = InstanceId::parse(id).unwrap();
    let fleet = h.store().load_for_instance(&id).await.unwrap();
    fleet.instances[&id].clone()
}

fn is_alive(h: &[Ec2Instance], id: &str) -> bool {
    h.iter().any(|i| i.id == id && i.is_alive())
}

async fn image_named(h: &Harness, name: &str, tags: &[(&str, &str)]) -> ImageId {
    let image = h.register_image(name).await;
    if !tags.is_empty() {
        let tags = tags
            .iter()
            .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build())
            .collect();
        h.ec2
            .create_tags()
            .resources(image.as_str())
            .set_tags(Some(tags))
            .send()
            .await
            .unwrap();
    }
    image
}

// ------------------------------------------------------------------------------------- images

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_available_ami_moves_the_fleets_that_select_it_and_only_them() {
    let h = Harness::start().await.unwrap();
    let web_a = image_named(&h, "web-a", &[]).await;
    let api_a = image_named(&h, "api-a", &[]).await;
    apply(
        &h,
        &FleetFile::new("web", &web_a, 2),
        "image_selector: {name_pattern: \"web-*\", owners: [\"123456789012\"]}\n",
    );
    apply(
        &h,
        &FleetFile::new("api", &api_a, 1),
        "image_selector: {name_pattern: \"api-*\"}\n",
    );
    h.settle("web").await;
    h.settle("api").await;
    let api_version = h.fleet("api").await.version;

    let web_b = image_named(&h, "web-b", &[]).await;
    let event = about_image(AMI, &web_b);
    let d = deliver(&h, &event, "image").await;
    assert_eq!(outcomes(&d), [("web".to_string(), FleetOutcome::Changed)]);
    let web = h.settle("web").await;
    assert_eq!(web.spec.image, web_b);
    let live = h.fleet_instances("web").await;
    assert_eq!(live.len(), 2);
    assert!(live.iter().all(|i| i.image == web_b.as_str()), "{live:?}");
    assert_eq!(
        h.fleet("api").await.version,
        api_version,
        "api does not select web-*"
    );
    let history = h.history("web").await;
    assert!(history.iter().any(|e| e.cause.source == "aws.ec2"
        && e.cause.detail_type == "EC2 AMI State Change"
        && e.changes
            .iter()
            .any(|c| matches!(c, Change::ImageChanged { to, .. } if *to == web_b))));

    // Delivered again: nothing moves.
    let before = snapshot(&h).await;
    let again = redeliver(&h, &event, &d, Function::Image).await;
    assert_eq!(
        outcomes(&again),
        [("web".to_string(), FleetOutcome::Duplicate)]
    );
    assert_eq!(snapshot(&h).await, before);

    // An AMI no fleet selects: success, and nothing moves.
    let other = image_named(&h, "batch-1", &[]).await;
    let d = deliver(&h, &about_image(AMI, &other), "image").await;
    assert!(outcomes(&d).is_empty());
    assert_eq!(snapshot(&h).await, before);
    assert!(h.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_builder_build_moves_the_fleets_selecting_its_pipeline() {
    let h = Harness::start().await.unwrap();
    let a = image_named(&h, "web-a", &[]).await;
    apply(
        &h,
        &FleetFile::new("web", &a, 2),
        &format!("image_selector: {{pipeline_arn: \"{PIPELINE}\"}}\n"),
    );
    apply(
        &h,
        &FleetFile::new("api", &a, 1),
        "image_selector: {pipeline_arn: \"arn:aws:imagebuilder:*:*:image-pipeline/api\"}\n",
    );
    h.settle("web").await;
    h.settle("api").await;
    let api_version = h.fleet("api").await.version;
    // The emulator has no Image Builder: the build GetImage would report is registered here.
    let built = image_named(&h, "web-recipe-1.0.0-2", &[]).await;
    h.builds.add(ImageBuild {
        arn: BUILD_ARN.into(),
        amis: vec![
            (
                "eu-west-1".into(),
                ImageId::parse("ami-0aaaaaaaaaaaaaaaa").unwrap(),
            ),
            ("us-east-1".into(), built.clone()),
        ],
        pipeline: Some(PIPELINE.into()),
        recipe: Some(
            "arn:aws:imagebuilder:us-east-1:123456789012:image-recipe/web-recipe/1.0.0".into(),
        ),
    });
    let event: Value = serde_json::from_str(BUILD).unwrap();
    let d = deliver(&h, &event, "image").await;
    assert_eq!(outcomes(&d), [("web".to_string(), FleetOutcome::Changed)]);
    let web = h.settle("web").await;
    assert_eq!(web.spec.image, built, "this region's AMI of the build");
    assert!(h
        .fleet_instances("web")
        .await
        .iter()
        .all(|i| i.image == built.as_str()));
    assert_eq!(h.fleet("api").await.version, api_version);

    let before = snapshot(&h).await;
    let again = redeliver(&h, &event, &d, Function::Image).await;
    assert_eq!(
        outcomes(&again),
        [("web".to_string(), FleetOutcome::Duplicate)]
    );
    assert_eq!(snapshot(&h).await, before);

    // A build of another pipeline: nothing moves.
    let other_arn = "arn:aws:imagebuilder:us-east-1:123456789012:image/batch-recipe/2.0.0/1";
    let other_ami = image_named(&h, "batch-2", &[]).await;
    h.builds.add(ImageBuild {
        arn: other_arn.into(),
        amis: vec![("us-east-1".into(), other_ami)],
        pipeline: Some("arn:aws:imagebuilder:us-east-1:123456789012:image-pipeline/batch".into()),
        recipe: None,
    });
    let d = deliver(
        &h,
        &serde_json::from_str(&BUILD.replace(BUILD_ARN, other_arn)).unwrap(),
        "image",
    )
    .await;
    assert!(outcomes(&d).is_empty());
    assert_eq!(snapshot(&h).await, before);
    assert!(h.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_gate_refuses_untagged_images_and_says_so() {
    // (The emulator owns every image it registers, so refusals by owning account are covered by
    // phoenix-core's unit tests; here the gate refuses by tag, and admits by account.)
    let h = Harness::start().await.unwrap();
    let inbox = h.subscribe().await;
    let a = image_named(&h, "web-a", &[("approved", "yes")]).await;
    apply(
        &h,
        &FleetFile::new("web", &a, 1),
        "image_selector: {name_pattern: \"web-*\"}\n\
         admission: {accounts: [\"123456789012\"], required_tags: {approved: \"yes\"}}\n",
    );
    apply(
        &h,
        &FleetFile::new("other", &a, 1),
        "image_selector: {name_pattern: \"web-*\"}\n",
    );
    h.settle("web").await;
    h.settle("other").await;

    let untagged = image_named(&h, "web-untagged", &[]).await;
    let d = deliver(&h, &about_image(AMI, &untagged), "image").await;
    let mut fleets = outcomes(&d);
    fleets.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        fleets,
        [
            ("other".to_string(), FleetOutcome::Changed),
            ("web".to_string(), FleetOutcome::Changed)
        ]
    );
    assert_eq!(h.fleet("web").await.spec.image, a, "refused");
    assert_eq!(h.settle("other").await.spec.image, untagged, "no gate");
    let rejected = |history: &[phoenix_core::history::HistoryEntry]| -> Vec<String> {
        history
            .iter()
            .flat_map(|e| &e.changes)
            .filter_map(|c| match c {
                Change::ImageRejected { image, reason } if *image == untagged => {
                    Some(reason.clone())
                }
                _ => None,
            })
            .collect()
    };
    let refusals = rejected(&h.history("web").await);
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(
        refusals[0].contains("lacks the required tags approved=yes"),
        "{refusals:?}"
    );
    assert!(rejected(&h.history("other").await).is_empty());
    let published: Vec<(String, Value)> = h
        .notifications(&inbox)
        .await
        .into_iter()
        .filter(|(dt, _)| dt == "ImageRejected")
        .collect();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].1["image"], untagged.as_str());
    assert_eq!(published[0].1["fleet"], "web");

    // phoenix's own ImageReady passes the same gate.
    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        untagged.as_str(),
    ]);
    h.drain().await;
    assert_eq!(h.fleet("web").await.spec.image, a);
    assert_eq!(rejected(&h.history("web").await).len(), 2);

    // Tagged (and owned by the admitted account), the image is admitted.
    let approved = image_named(&h, "web-b", &[("approved", "yes")]).await;
    deliver(&h, &about_image(AMI, &approved), "image").await;
    assert_eq!(h.settle("web").await.spec.image, approved);

    // A fleet file whose own image fails its gate is refused.
    let dir = std::env::temp_dir().join(format!("phoenix-gate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gated.yaml");
    let yaml = format!(
        "{}admission: {{required_tags: {{approved: \"yes\"}}}}\n",
        FleetFile::new("gated", &untagged, 1).yaml()
    );
    std::fs::write(&path, yaml).unwrap();
    let out = h.phoenix(&["fleet", "apply", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lacks the required tags"));
    assert!(h.dead_letters().await.is_empty());
}

/// The `phoenix` CLI with `PHOENIX_ALLOWED_IMAGE_ACCOUNTS` set, as the template sets it for the
/// functions.
fn phoenix_allowing(h: &Harness, accounts: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(phoenix_tests::workspace_bin("phoenix"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("AWS_PROFILE")
        .env("PHOENIX_ALLOWED_IMAGE_ACCOUNTS", accounts);
    for (k, v) in h.env() {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_of_accounts_not_allowed_are_refused_recorded_and_never_launched() {
    // The emulator owns every image it registers, in its own account 123456789012: allowing only
    // another account refuses them all, allowing 123456789012 admits them.
    let mut h = Harness::start().await.unwrap();
    let inbox = h.subscribe().await;
    let a = image_named(&h, "web-a", &[]).await;
    apply(
        &h,
        &FleetFile::new("web", &a, 2),
        "image_selector: {name_pattern: \"web-*\"}\n",
    );
    h.settle("web").await;
    let launched = ids(&h.instances().await);
    h.dispatcher.controller.intake.image_accounts = AllowedImageAccounts::from_list("111122223333");
    let web = FleetName::parse("web").unwrap();

    // phoenix's own ImageReady, the AMI's event and an Image Builder build of it: each refused,
    // recorded, published; none an error (the event was handled: its answer is no).
    let b = image_named(&h, "web-b", &[]).await;
    h.publish(&Intent::ImageReady {
        fleet: web.clone(),
        image: b.clone(),
    })
    .await;
    let d = h.drain().await;
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(d[0].error.is_none(), "{d:#?}");
    let d = deliver(&h, &about_image(AMI, &b), "image").await;
    assert_eq!(outcomes(&d), [("web".to_string(), FleetOutcome::Changed)]);
    h.builds.add(ImageBuild {
        arn: BUILD_ARN.into(),
        amis: vec![("us-east-1".into(), b.clone())],
        pipeline: Some(PIPELINE.into()),
        recipe: None,
    });
    let d = deliver(&h, &serde_json::from_str(BUILD).unwrap(), "image").await;
    assert_eq!(outcomes(&d), [("web".to_string(), FleetOutcome::Changed)]);
    let f = h.settle("web").await;
    assert_eq!(f.spec.image, a, "refused");
    assert_eq!(ids(&h.instances().await), launched, "nothing launched");
    let reasons: Vec<String> = h
        .history("web")
        .await
        .iter()
        .flat_map(|e| &e.changes)
        .filter_map(|c| match c {
            Change::ImageRejected { image, reason } if *image == b => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    for reason in &reasons {
        assert!(
            reason.contains("owned by account 123456789012")
                && reason.contains("PHOENIX_ALLOWED_IMAGE_ACCOUNTS: 111122223333"),
            "{reason}"
        );
    }
    let published: Vec<Value> = h
        .notifications(&inbox)
        .await
        .into_iter()
        .filter(|(dt, _)| dt == "ImageRejected")
        .map(|(_, detail)| detail)
        .collect();
    assert_eq!(published.len(), 3, "{published:?}");
    assert!(published
        .iter()
        .all(|p| p["image"] == b.as_str() && p["fleet"] == "web"));

    // A fleet file naming it, through the CLI (which reads the variable as the functions do):
    // refused with the owner and the allowed accounts, nothing written.
    let dir = std::env::temp_dir().join(format!("phoenix-owner-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, fleet: FleetFile| {
        let path = dir.join(name);
        std::fs::write(&path, fleet.yaml()).unwrap();
        path.to_str().unwrap().to_string()
    };
    let moved = file("web.yaml", FleetFile::new("web", &b, 2));
    let fresh = file("api.yaml", FleetFile::new("api", &a, 1));
    let version = h.fleet("web").await.version;
    for path in [&moved, &fresh] {
        let out = phoenix_allowing(&h, "111122223333", &["fleet", "apply", path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{path}: {err}");
        assert!(
            err.contains("owned by account 123456789012")
                && err.contains("PHOENIX_ALLOWED_IMAGE_ACCOUNTS: 111122223333"),
            "{err}"
        );
    }
    assert_eq!(h.fleet("web").await.version, version);
    assert_eq!(
        h.store().list_fleets_now().await,
        std::slice::from_ref(&web)
    );
    assert!(h.drain().await.is_empty(), "nothing published");

    // Allowing the emulator's account admits the same image, by event and by file.
    h.dispatcher.controller.intake.image_accounts = AllowedImageAccounts::from_list("123456789012");
    h.publish(&Intent::ImageReady {
        fleet: web.clone(),
        image: b.clone(),
    })
    .await;
    assert_eq!(h.settle("web").await.spec.image, b);
    assert!(h
        .fleet_instances("web")
        .await
        .iter()
        .all(|i| i.image == b.as_str()));
    let out = phoenix_allowing(&h, "123456789012", &["fleet", "apply", &fresh]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(h.settle("api").await.spec.image, a);
    assert!(h.dead_letters().await.is_empty());
}

// ---------------------------------------------------------------------------------- instances

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_on_an_instance_replaces_it() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    h.apply(&FleetFile::new("web", &a, 2));
    h.settle("web").await;
    let victim = h.fleet_instances("web").await[0].id.clone();
    let event = about(ALARM, &victim);
    let d = deliver(&h, &event, "health").await;
    assert_eq!(outcomes(&d), [("web".to_string(), FleetOutcome::Changed)]);
    h.settle("web").await;
    let all = h.instances().await;
    assert!(!is_alive(&all, &victim));
    assert_eq!(h.fleet_instances("web").await.len(), 2);
    let rec = record(&h, &victim).await;
    match &rec.health {
        Health::Unhealthy { reason, .. } => {
            assert!(
                reason.starts_with("alarm web-status-check-failed: Threshold Crossed"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(rec.terminated_at.is_some());

    // Redelivered: the instance is already replaced, so nothing is done (not even recorded).
    let before = snapshot(&h).await;
    let again = redeliver(&h, &event, &d, Function::Health).await;
    assert!(outcomes(&again).is_empty(), "{again:#?}");
    assert_eq!(snapshot(&h).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_stopped_or_terminated_outside_phoenix_are_replaced() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    h.apply(&FleetFile::new("web", &a, 3));
    h.settle("web").await;
    let live = ids(&h.fleet_instances("web").await);
    let (stopped, terminated) = (live[0].clone(), live[1].clone());

    // Someone stops one instance ...
    h.ec2
        .stop_instances()
        .instance_ids(&stopped)
        .send()
        .await
        .unwrap();
    let stop_event = about(STOPPED, &stopped);
    let stop_delivery = deliver(&h, &stop_event, "health").await;
    assert_eq!(
        outcomes(&stop_delivery),
        [("web".to_string(), FleetOutcome::Changed)]
    );
    let rec = record(&h, &stopped).await;
    assert!(
        matches!(&rec.health, Health::Unhealthy { reason, .. } if reason.contains("stopped outside phoenix")),
        "{rec:?}"
    );
    // ... and terminates another.
    h.ec2
        .terminate_instances()
        .instance_ids(&terminated)
        .send()
        .await
        .unwrap();
    let term_event = about(TERMINATED, &terminated);
    let term_delivery = deliver(&h, &term_event, "health").await;
    h.settle("web").await;
    let now_live = ids(&h.fleet_instances("web").await);
    assert_eq!(now_live.len(), 3);
    assert!(!now_live.contains(&stopped) && !now_live.contains(&terminated));
    let all = h.instances().await;
    let state = |id: &str| all.iter().find(|i| i.id == id).unwrap().state.clone();
    assert_eq!(
        state(&stopped),
        "terminated",
        "phoenix replaced the stopped instance"
    );
    let history = h.history("web").await;
    assert!(history.iter().any(|e| e.cause.detail_type
        == "EC2 Instance State-change Notification"
        && e.changes.iter().any(
            |c| matches!(c, Change::Vanished { instance, .. } if instance.as_str() == terminated)
        )));

    // EC2 reports phoenix's own termination of the stopped instance too: ignored, no history.
    let before = snapshot(&h).await;
    let d = deliver(&h, &about(TERMINATED, &stopped), "health").await;
    assert!(outcomes(&d).is_empty(), "{d:#?}");
    // Redeliveries of both events: nothing.
    redeliver(&h, &stop_event, &stop_delivery, Function::Health).await;
    redeliver(&h, &term_event, &term_delivery, Function::Health).await;
    assert_eq!(snapshot(&h).await, before);
    assert!(h.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_interruptions_and_rebalance_recommendations_replace_launching_first() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    h.apply(&FleetFile::new("web", &a, 3));
    h.settle("web").await;
    for (fixture, what) in [(SPOT, "Spot interruption"), (REBALANCE, "rebalance")] {
        let victim = h.fleet_instances("web").await[0].id.clone();
        let event = about(fixture, &victim);
        let d = deliver(&h, &event, "health").await;
        // In the same delivery: the replacement launched, then the instance terminated; the
        // fleet never dropped below its capacity.
        let report = &d.report.as_ref().unwrap().fleets[0];
        assert_eq!(report.launched.len(), 1, "{report:#?}");
        assert_eq!(report.terminated, [InstanceId::parse(&victim).unwrap()]);
        let kinds: Vec<&str> = report
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Launched { .. } => Some("launched"),
                Change::Terminated { .. } => Some("terminated"),
                _ => None,
            })
            .collect();
        assert_eq!(kinds, ["launched", "terminated"], "launch first");
        let rec = record(&h, &victim).await;
        let retirement = rec.retirement.clone().unwrap();
        assert!(retirement.reason.contains(what), "{retirement:?}");
        assert_eq!(rec.health, Health::Healthy, "not a failure");
        h.settle("web").await;
        assert_eq!(h.fleet_instances("web").await.len(), 3);

        let before = snapshot(&h).await;
        let again = redeliver(&h, &event, &d, Function::Health).await;
        assert!(
            matches!(&outcomes(&again)[..], [] | [(_, FleetOutcome::Duplicate)]),
            "{again:#?}"
        );
        assert_eq!(snapshot(&h).await, before);
    }
    assert!(h.dead_letters().await.is_empty());
}

fn rfc1123(t: chrono::DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// A Health event for these instances, starting at `start`, under a communication id.
fn health_event(instances: &[&str], start: chrono::DateTime<Utc>, communication: &str) -> Value {
    let mut v: Value = serde_json::from_str(HEALTH).unwrap();
    v["resources"] = json!(instances);
    v["detail"]["affectedEntities"] = json!(instances
        .iter()
        .map(|i| json!({"entityValue": i, "tags": {}}))
        .collect::<Vec<_>>());
    v["detail"]["startTime"] = json!(rfc1123(start));
    v["detail"]["communicationId"] = json!(communication);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_maintenance_replaces_before_it_starts_inside_the_window() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    // A window that opens in two hours, every day.
    let opens = Utc::now() + Duration::hours(2);
    let window = format!(
        "maintenance_window: {{days: [mon, tue, wed, thu, fri, sat, sun], start: \"{}\", duration: 30m}}\n",
        opens.format("%H:%M")
    );
    apply(&h, &FleetFile::new("now", &a, 2), "");
    apply(&h, &FleetFile::new("later", &a, 2), &window);
    apply(&h, &FleetFile::new("soon", &a, 2), &window);
    for f in ["now", "later", "soon"] {
        h.settle(f).await;
    }
    let now_i = h.fleet_instances("now").await[0].id.clone();
    let later_i = h.fleet_instances("later").await[0].id.clone();
    let soon_i = h.fleet_instances("soon").await[0].id.clone();

    // One communication about instances of two fleets, a week out.
    let week = health_event(
        &[&now_i, &later_i],
        Utc::now() + Duration::days(7),
        "comm-week-1",
    );
    let d = deliver(&h, &week, "health").await;
    let mut fleets = outcomes(&d);
    fleets.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        fleets,
        [
            ("later".to_string(), FleetOutcome::Changed),
            ("now".to_string(), FleetOutcome::Changed)
        ]
    );
    // No window: replaced now, launch first.
    h.settle("now").await;
    assert!(!ids(&h.fleet_instances("now").await).contains(&now_i));
    // A window: the replacement waits for it.
    let rec = record(&h, &later_i).await;
    let r = rec.retirement.clone().unwrap();
    let not_before = r.not_before.unwrap();
    assert!((not_before - opens).num_minutes().abs() <= 1, "{r:?}");
    assert!(r.reason.contains("AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED"));
    h.dispatcher.tick().await.unwrap();
    h.drain().await;
    assert!(
        ids(&h.fleet_instances("later").await).contains(&later_i),
        "waits for its window"
    );

    // The same communication again (a new EventBridge id): a duplicate.
    let before = snapshot(&h).await;
    let d = deliver(&h, &week, "health").await;
    assert!(
        outcomes(&d)
            .iter()
            .all(|(_, o)| *o == FleetOutcome::Duplicate),
        "{d:#?}"
    );
    assert_eq!(snapshot(&h).await, before);

    // A change that starts before the next window: replaced now.
    let hour = health_event(&[&soon_i], Utc::now() + Duration::hours(1), "comm-hour-1");
    deliver(&h, &hour, "health").await;
    h.settle("soon").await;
    assert!(!ids(&h.fleet_instances("soon").await).contains(&soon_i));
    assert!(h.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_changes_taint_the_instance_and_replace_it_as_the_fleet_says() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    apply(&h, &FleetFile::new("replace", &a, 2), "");
    apply(&h, &FleetFile::new("record", &a, 2), "taint: record\n");
    apply(&h, &FleetFile::new("off", &a, 1), "taint: off\n");
    for f in ["replace", "record", "off"] {
        h.settle(f).await;
    }
    let replace = ids(&h.fleet_instances("replace").await);
    let record_ = ids(&h.fleet_instances("record").await);
    let off = ids(&h.fleet_instances("off").await);

    // Default (replace): recorded on the instance, and replaced.
    let modify = about(MODIFY, &replace[0]);
    let d = deliver(&h, &modify, "health").await;
    assert_eq!(
        outcomes(&d),
        [("replace".to_string(), FleetOutcome::Changed)]
    );
    let rec = record(&h, &replace[0]).await;
    assert_eq!(rec.taints.len(), 1);
    assert_eq!(
        rec.taints[0].who,
        "arn:aws:sts::123456789012:assumed-role/Admin/alice"
    );
    assert_eq!(rec.taints[0].what, "ModifyInstanceAttribute");
    h.settle("replace").await;
    assert!(!ids(&h.fleet_instances("replace").await).contains(&replace[0]));
    deliver(&h, &about(PROFILE, &replace[1]), "health").await;
    h.settle("replace").await;
    assert!(!ids(&h.fleet_instances("replace").await).contains(&replace[1]));

    // record: recorded, kept.
    deliver(&h, &about(SESSION, &record_[0]), "health").await;
    let rec = record(&h, &record_[0]).await;
    assert_eq!(rec.taints[0].what, "StartSession");
    assert!(rec.taints[0].who.ends_with("Operator/carol"));
    h.settle("record").await;
    assert!(ids(&h.fleet_instances("record").await).contains(&record_[0]));

    // off: nothing at all (the command names an instance of "record" too, which is recorded).
    let mut command = about(COMMAND, &off[0]);
    command["detail"]["requestParameters"]["instanceIds"] = json!([off[0], record_[1]]);
    let version = h.fleet("off").await.version;
    deliver(&h, &command, "health").await;
    assert!(record(&h, &off[0]).await.taints.is_empty());
    assert_eq!(record(&h, &record_[1]).await.taints[0].what, "SendCommand");
    let off_history = h.history("off").await;
    assert!(off_history
        .iter()
        .filter(|e| e.version > version)
        .flat_map(|e| &e.changes)
        .all(|c| matches!(c, Change::Ignored { .. })));
    assert!(ids(&h.fleet_instances("off").await).contains(&off[0]));

    let before = snapshot(&h).await;
    let again = redeliver(&h, &modify, &d, Function::Health).await;
    assert!(outcomes(&again).is_empty(), "already replaced: {again:#?}");
    assert_eq!(snapshot(&h).await, before);
    assert!(h.dead_letters().await.is_empty());
}

// ------------------------------------------------------------------------- unmanaged, bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_about_instances_no_fleet_manages_change_nothing() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    h.apply(&FleetFile::new("web", &a, 2));
    h.settle("web").await;
    let theirs = h
        .launch_unmanaged(&a, 1, &[("team", "someone-else")])
        .await
        .remove(0);
    let before = snapshot(&h).await;
    let start = Utc::now() + Duration::days(3);
    for event in [
        about(ALARM, &theirs),
        about(STOPPED, &theirs),
        about(TERMINATED, &theirs),
        about(SPOT, &theirs),
        about(REBALANCE, &theirs),
        health_event(&[&theirs], start, "comm-unmanaged"),
        about(MODIFY, &theirs),
        about(PROFILE, &theirs),
        about(SESSION, &theirs),
        about(COMMAND, &theirs),
    ] {
        let d = deliver(&h, &event, "health").await;
        assert!(outcomes(&d).is_empty(), "{d:#?}");
    }
    assert_eq!(snapshot(&h).await, before);
    assert!(h.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_or_mistyped_aws_events_are_rejected_with_a_reason() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    h.apply(&FleetFile::new("web", &a, 2));
    h.settle("web").await;
    let victim = h.fleet_instances("web").await[0].id.clone();
    let before = snapshot(&h).await;
    let spot = about(SPOT, &victim).to_string();
    let mistyped = |mut v: Value, path: &[&str], value: Value| {
        let mut at = &mut v;
        for p in path {
            at = &mut at[*p];
        }
        *at = value;
        v.to_string()
    };
    let cases = [
        (
            Function::Health,
            spot[..spot.len() / 2].to_string(),
            "malformed EventBridge event",
        ),
        (
            Function::Health,
            mistyped(about(SPOT, &victim), &["detail", "instance-id"], json!(42)),
            "detail.instance-id: invalid type",
        ),
        (
            Function::Health,
            mistyped(
                about(STOPPED, &victim),
                &["detail", "state"],
                json!("exploded"),
            ),
            "not an EC2 instance state",
        ),
        (
            Function::Health,
            mistyped(
                health_event(&[&victim], Utc::now(), "comm-bad"),
                &["detail", "startTime"],
                json!("next tuesday"),
            ),
            "RFC 1123",
        ),
        (
            Function::Health,
            mistyped(
                about(MODIFY, &victim),
                &["detail", "userIdentity"],
                json!("alice"),
            ),
            "detail.userIdentity",
        ),
        (
            Function::Image,
            mistyped(
                about_image(AMI, &a),
                &["detail", "ImageId"],
                json!("ubuntu"),
            ),
            "not an AMI id",
        ),
        (
            Function::Image,
            mistyped(
                serde_json::from_str(BUILD).unwrap(),
                &["resources"],
                json!([]),
            ),
            "resources[0]",
        ),
        // A Spot warning sent to the image function.
        (Function::Image, spot.clone(), "does not handle"),
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
            "{body}\n gave: {error}\n expected: {expected}"
        );
    }
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), cases.len());
    assert!(dead.iter().all(|(_, reason)| !reason.is_empty()));
    assert_eq!(snapshot(&h).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_accounts_or_sources_not_allowed_are_rejected() {
    let mut h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    h.apply(&FleetFile::new("web", &a, 2));
    h.settle("web").await;
    let victim = h.fleet_instances("web").await[0].id.clone();
    let before = snapshot(&h).await;
    h.dispatcher.controller.intake.policy =
        phoenix_core::aws_events::SourcePolicy::from_lists("123456789012", "");
    let scale = |account: &str, id: &str| {
        let mut e = phoenix_tests::envelope(
            id,
            "ScaleRequested",
            json!({"fleet": "web", "desired": 3}),
            "2030-01-01T00:00:00Z",
        );
        e["account"] = json!(account);
        e.to_string()
    };
    // From a foreign account.
    h.enqueue(Function::Scale, &scale("999999999999", "foreign-1"))
        .await;
    // A forged source.
    let mut forged = phoenix_tests::envelope(
        "forged-1",
        "ImageReady",
        json!({"fleet": "web", "image": a}),
        "2030-01-01T00:00:00Z",
    );
    forged["source"] = json!("phoenix.evil");
    h.enqueue(Function::Image, &forged.to_string()).await;
    // Through the emulator's EventBridge, which leaves `account` out of what it delivers: an
    // event that names no account is not from an allowed one.
    put(&h, &about(SPOT, &victim)).await;
    let d = h.drain().await;
    assert_eq!(d.len(), 3, "{d:#?}");
    let errors: Vec<&str> = d
        .iter()
        .map(|x| {
            x.error
                .as_deref()
                .unwrap_or_else(|| panic!("accepted: {x:#?}"))
        })
        .collect();
    assert!(
        errors
            .iter()
            .all(|e| e.contains("not allowed") || e.contains("names no account")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("account 999999999999")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("\"phoenix.evil\"")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("names no account")),
        "{errors:?}"
    );
    // Sources: with only phoenix's own allowed, AWS's events are refused.
    h.dispatcher.controller.intake.policy =
        phoenix_core::aws_events::SourcePolicy::from_lists("", "phoenix,aws.events");
    put(&h, &about(SPOT, &victim)).await;
    let d = h.drain().await;
    assert!(
        d[0].error
            .as_deref()
            .unwrap()
            .contains("source \"aws.ec2\" is not allowed"),
        "{d:#?}"
    );
    assert_eq!(h.dead_letters().await.len(), 4);
    assert_eq!(snapshot(&h).await, before);
    // From the allowed account, the same event is accepted.
    h.dispatcher.controller.intake.policy =
        phoenix_core::aws_events::SourcePolicy::from_lists("123456789012", "");
    h.enqueue(Function::Scale, &scale("123456789012", "allowed-1"))
        .await;
    let d = h.drain().await;
    assert!(d[0].error.is_none(), "{d:#?}");
    assert_eq!(h.fleet("web").await.spec.capacity, 3);
}

// ------------------------------------------------------------------------------------- rules

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_for_aws_events_are_on_the_default_bus_whatever_bus_phoenix_uses() {
    let emulator = phoenix_tests::Emulator::start().unwrap();
    let sdk = phoenix_aws::config::emulator_sdk_config(&emulator.endpoint).await;
    let settings = phoenix_aws::config::Settings {
        table: "phoenix".into(),
        bus: "phoenix-bus".into(),
    };
    phoenix_local::provision(&sdk, &settings).await.unwrap();
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    let names = |bus: &'static str| {
        let events = events.clone();
        async move {
            let mut names: Vec<String> = events
                .list_rules()
                .event_bus_name(bus)
                .send()
                .await
                .unwrap()
                .rules
                .unwrap_or_default()
                .into_iter()
                .filter_map(|r| r.name)
                .collect();
            names.sort();
            names
        }
    };
    let mut on_default = Vec::new();
    let mut on_phoenix = Vec::new();
    for rule in phoenix_core::patterns::rules() {
        let name = format!("phoenix-{}", rule.name);
        match rule.bus {
            phoenix_core::patterns::RuleBus::Default => on_default.push(name),
            phoenix_core::patterns::RuleBus::Phoenix => on_phoenix.push(name),
        }
    }
    on_default.sort();
    on_phoenix.sort();
    assert_eq!(names("default").await, on_default);
    assert_eq!(names("phoenix-bus").await, on_phoenix);
    let _ = FleetName::parse("web");
}
