//! AWS's own events, in the shapes AWS sends them (`tests/fixtures/aws/`): each fixture parses
//! into its typed detail inside the EventBridge envelope and round-trips (the pattern of
//! `aws_lambda_events`' own fixture tests), and means what phoenix says it means. Then a
//! deterministic "fuzz smoke": the fixtures truncated, retyped and sprayed with bytes, every input
//! ending in a meaning or in an error with a reason — never a panic. (The coverage-guided fuzz
//! targets live in `fuzz/` and need a nightly toolchain.)

#![allow(clippy::unwrap_used)]

use aws_lambda_events::eventbridge::EventBridgeEvent;
use phoenix_aws::lambda::envelope_from_json;
use phoenix_core::aws_events::{self, AwsEvent};
use phoenix_core::events::Intent;
use phoenix_core::notice::Notice;
use phoenix_core::{ImageId, InstanceId};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use std::fmt::Debug;

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!("../fixtures/aws/", $name, ".json")),
        )
    };
}

/// Every AWS fixture.
pub const AWS: [(&str, &str); 13] = [
    fixture!("ec2-ami-state-change-available"),
    fixture!("imagebuilder-image-state-change-available"),
    fixture!("cloudwatch-alarm-state-change-alarm"),
    fixture!("ec2-instance-state-change-stopped"),
    fixture!("ec2-instance-state-change-terminated"),
    fixture!("ec2-spot-instance-interruption-warning"),
    fixture!("ec2-instance-rebalance-recommendation"),
    fixture!("health-ec2-instance-retirement-scheduled"),
    fixture!("cloudtrail-ec2-modify-instance-attribute"),
    fixture!("cloudtrail-ec2-associate-iam-instance-profile"),
    fixture!("cloudtrail-ssm-start-session"),
    fixture!("cloudtrail-ssm-send-command"),
    fixture!("cloudtrail-ec2-create-launch-template-version"),
];

/// Parses a fixture with its typed detail, serializes it and parses that again: equal.
fn round_trip<T>(name: &str, json: &str) -> EventBridgeEvent<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let parsed: EventBridgeEvent<T> =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{name}: {e}"));
    let output = serde_json::to_string(&parsed).unwrap();
    let reparsed: EventBridgeEvent<T> = serde_json::from_str(&output).unwrap();
    assert_eq!(parsed, reparsed, "{name}");
    // The untyped envelope round-trips too, losslessly.
    let raw: EventBridgeEvent<Value> = serde_json::from_str(json).unwrap();
    let again: EventBridgeEvent<Value> =
        serde_json::from_str(&serde_json::to_string(&raw).unwrap()).unwrap();
    assert_eq!(raw, again, "{name}");
    assert_eq!(raw.version.as_deref(), Some("0"), "{name}");
    assert!(
        raw.id.is_some() && raw.time.is_some() && raw.account.is_some(),
        "{name}"
    );
    assert!(raw.region.is_some() && raw.resources.is_some(), "{name}");
    parsed
}

fn meaning(json: &str) -> AwsEvent {
    let env = envelope_from_json(serde_json::from_str(json).unwrap()).unwrap();
    AwsEvent::from_envelope(&env)
        .expect("an AWS event phoenix knows")
        .unwrap()
}

fn instance() -> InstanceId {
    InstanceId::parse("i-0123456789abcdef0").unwrap()
}

#[test]
fn every_fixture_round_trips_through_its_typed_detail() {
    use aws_events::*;
    for (name, json) in AWS {
        match name {
            "ec2-ami-state-change-available" => {
                let e = round_trip::<AmiStateChange>(name, json);
                assert_eq!(e.detail.state, "available");
            }
            "imagebuilder-image-state-change-available" => {
                let e = round_trip::<ImageBuilderStateChange>(name, json);
                assert_eq!(e.detail.state.status, "AVAILABLE");
            }
            "cloudwatch-alarm-state-change-alarm" => {
                let e = round_trip::<AlarmStateChange>(name, json);
                let metric = &e.detail.configuration.metrics[0];
                let dims = &metric.metric_stat.as_ref().unwrap().metric.dimensions;
                assert_eq!(dims["InstanceId"], "i-0123456789abcdef0");
            }
            n if n.starts_with("ec2-instance-state-change") => {
                round_trip::<InstanceStateChange>(name, json);
            }
            "ec2-spot-instance-interruption-warning" => {
                let e = round_trip::<SpotInterruption>(name, json);
                assert_eq!(e.detail.instance_action, "terminate");
            }
            "ec2-instance-rebalance-recommendation" => {
                round_trip::<RebalanceRecommendation>(name, json);
            }
            "health-ec2-instance-retirement-scheduled" => {
                let e = round_trip::<HealthEvent>(name, json);
                assert_eq!(
                    e.detail.communication_id.as_deref(),
                    Some("1234abc01232a4012345678-1")
                );
            }
            n if n.starts_with("cloudtrail-") => {
                let e = round_trip::<ApiCall>(name, json);
                assert!(e.detail.user_identity.arn.is_some(), "{name}");
            }
            other => panic!("no typed detail for fixture {other}"),
        }
    }
}

#[test]
fn every_fixture_means_what_the_event_reference_says() {
    let (_, ami) = AWS[0];
    assert_eq!(
        meaning(ami),
        AwsEvent::ImageAvailable {
            image: ImageId::parse("ami-0123456789abcdef0").unwrap()
        }
    );
    let (_, build) = AWS[1];
    assert_eq!(
        meaning(build),
        AwsEvent::ImageBuilt {
            arn: "arn:aws:imagebuilder:us-east-1:123456789012:image/web-recipe/1.0.0/2".into()
        }
    );
    let (_, alarm) = AWS[2];
    match meaning(alarm) {
        AwsEvent::HealthCheckFailed {
            instance: i,
            reason,
        } => {
            assert_eq!(i, instance());
            assert!(reason.starts_with("alarm web-status-check-failed: Threshold Crossed"));
        }
        other => panic!("{other:?}"),
    }
    let (_, template) = AWS[12];
    assert_eq!(
        meaning(template),
        AwsEvent::TemplateChanged {
            id: Some("lt-0abcd1234efgh5678".into()),
            name: Some("web-lt".into()),
        }
    );
    for (name, json) in &AWS[3..12] {
        let AwsEvent::Notice { instances, notice } = meaning(json) else {
            panic!("{name}: not a notice");
        };
        assert_eq!(instances, [instance()], "{name}");
        let ok = match *name {
            "ec2-instance-state-change-stopped" => {
                notice
                    == Notice::State {
                        state: phoenix_core::model::Lifecycle::Stopped,
                    }
            }
            "ec2-instance-state-change-terminated" => {
                notice
                    == Notice::State {
                        state: phoenix_core::model::Lifecycle::Terminated,
                    }
            }
            "ec2-spot-instance-interruption-warning" => matches!(
                &notice,
                Notice::Interruption { action, at } if action == "terminate"
                    && *at == "2030-01-07T12:02:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap()
            ),
            "ec2-instance-rebalance-recommendation" => notice == Notice::Rebalance,
            "health-ec2-instance-retirement-scheduled" => {
                notice
                    == Notice::Maintenance {
                        code: "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED".into(),
                        start: "2030-01-14T08:00:00Z".parse().unwrap(),
                    }
            }
            "cloudtrail-ec2-modify-instance-attribute" => {
                notice
                    == Notice::Mutated {
                        who: "arn:aws:sts::123456789012:assumed-role/Admin/alice".into(),
                        what: "ModifyInstanceAttribute".into(),
                    }
            }
            "cloudtrail-ec2-associate-iam-instance-profile" => {
                matches!(&notice, Notice::Mutated { who, what } if who.ends_with("user/bob") && what == "AssociateIamInstanceProfile")
            }
            "cloudtrail-ssm-start-session" => {
                matches!(&notice, Notice::Mutated { what, .. } if what == "StartSession")
            }
            "cloudtrail-ssm-send-command" => {
                matches!(&notice, Notice::Mutated { what, .. } if what == "SendCommand")
            }
            other => panic!("unexpected fixture {other}"),
        };
        assert!(ok, "{name}: {notice:?}");
    }
}

#[test]
fn events_that_ask_nothing_are_ignored_with_a_reason() {
    let retype = |json: &str, path: &[&str], value: Value| {
        let mut v: Value = serde_json::from_str(json).unwrap();
        let mut at = &mut v;
        for p in path {
            at = &mut at[*p];
        }
        *at = value;
        v.to_string()
    };
    let cases = [
        retype(AWS[0].1, &["detail", "State"], "pending".into()),
        retype(AWS[1].1, &["detail", "state", "status"], "BUILDING".into()),
        retype(AWS[2].1, &["detail", "state", "value"], "OK".into()),
        retype(
            AWS[2].1,
            &["detail", "configuration", "metrics"],
            serde_json::json!([{"id": "m", "metricStat": {"metric": {"name": "HTTPCode_ELB_5XX_Count", "dimensions": {"LoadBalancer": "app/web/1"}}}}]),
        ),
        retype(AWS[3].1, &["detail", "state"], "running".into()),
        retype(AWS[7].1, &["detail", "eventTypeCategory"], "issue".into()),
        retype(
            AWS[8].1,
            &["detail", "errorCode"],
            "Client.UnauthorizedOperation".into(),
        ),
        retype(
            AWS[8].1,
            &["detail", "eventName"],
            "DescribeInstances".into(),
        ),
    ];
    for json in cases {
        match meaning(&json) {
            AwsEvent::Ignored { reason } => assert!(!reason.is_empty()),
            other => panic!("{json}: {other:?}"),
        }
    }
}

#[test]
fn truncated_or_mistyped_events_are_rejected_with_a_reason() {
    let mistype = |json: &str, path: &[&str], value: Value| {
        let mut v: Value = serde_json::from_str(json).unwrap();
        let mut at = &mut v;
        for p in path {
            at = &mut at[*p];
        }
        *at = value;
        v
    };
    let cases = [
        (
            mistype(AWS[3].1, &["detail", "instance-id"], 42.into()),
            "invalid type",
        ),
        (
            mistype(AWS[3].1, &["detail", "state"], "exploded".into()),
            "not an EC2 instance state",
        ),
        (
            mistype(AWS[5].1, &["detail", "instance-id"], "web-1".into()),
            "instance-id",
        ),
        (
            mistype(AWS[0].1, &["detail", "ImageId"], "ubuntu".into()),
            "not an AMI id",
        ),
        (
            mistype(AWS[1].1, &["resources"], serde_json::json!([])),
            "resources[0]",
        ),
        (
            mistype(AWS[7].1, &["detail", "startTime"], "next tuesday".into()),
            "RFC 1123",
        ),
        (
            mistype(AWS[2].1, &["detail", "state"], "ALARM".into()),
            "invalid type",
        ),
        (
            mistype(AWS[8].1, &["detail", "userIdentity"], Value::Null),
            "userIdentity",
        ),
        (
            mistype(AWS[6].1, &["detail"], "i-0123456789abcdef0".into()),
            "must be a JSON object",
        ),
    ];
    for (event, expected) in cases {
        let env = envelope_from_json(event.clone()).unwrap();
        let err = AwsEvent::from_envelope(&env)
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected),
            "{event}\n gave {err}\n expected {expected}"
        );
    }
    let cut = &AWS[5].1[..AWS[5].1.len() / 2];
    let err = serde_json::from_str::<Value>(cut).unwrap_err().to_string();
    assert!(!err.is_empty());
}

// ------------------------------------------------------------------------------- fuzz smoke

/// SplitMix64: seeded, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// What phoenix makes of raw bytes: the meaning, or the reason it refuses them.
fn verdict(bytes: &[u8]) -> Result<String, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let env = envelope_from_json(value).map_err(|e| e.to_string())?;
    match AwsEvent::from_envelope(&env) {
        Some(r) => r.map(|e| format!("{e:?}")).map_err(|e| e.to_string()),
        None => Intent::from_envelope(&env)
            .map(|i| format!("{i:?}"))
            .map_err(|e| e.to_string()),
    }
}

/// Every value's path in a JSON document.
fn paths(v: &Value, here: Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(here.clone());
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let mut p = here.clone();
                p.push(k.clone());
                paths(child, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let mut p = here.clone();
                p.push(i.to_string());
                paths(child, p, out);
            }
        }
        _ => {}
    }
}

fn at_mut<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(v, |v, p| match v {
        Value::Array(items) => &mut items[p.parse::<usize>().unwrap()],
        other => &mut other[p.as_str()],
    })
}

fn flip(rng: &mut Rng, old: &Value) -> Value {
    let choices = [
        Value::Null,
        Value::Bool(true),
        serde_json::json!(-1),
        serde_json::json!(1e308),
        serde_json::json!(18_446_744_073_709_551_615u64),
        Value::String(String::new()),
        Value::String("i-0123456789abcdef0".into()),
        Value::String("\u{0}\u{fffd}é𝄞".into()),
        serde_json::json!([]),
        serde_json::json!({}),
        serde_json::json!([old.clone()]),
    ];
    choices[rng.below(choices.len())].clone()
}

fn mutate(rng: &mut Rng, json: &str) -> Vec<u8> {
    let bytes = json.as_bytes();
    match rng.below(5) {
        // Truncation, anywhere (even inside a multi-byte character).
        0 => bytes[..rng.below(bytes.len())].to_vec(),
        // Random bytes over random positions.
        1 => {
            let mut b = bytes.to_vec();
            for _ in 0..=rng.below(8) {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            b
        }
        // A value of another type at a random path.
        2 | 3 => {
            let mut v: Value = serde_json::from_str(json).unwrap();
            let mut all = Vec::new();
            paths(&v, Vec::new(), &mut all);
            let path = all[rng.below(all.len())].clone();
            let target = at_mut(&mut v, &path);
            *target = flip(rng, target);
            v.to_string().into_bytes()
        }
        // A field removed.
        _ => {
            let mut v: Value = serde_json::from_str(json).unwrap();
            let mut all = Vec::new();
            paths(&v, Vec::new(), &mut all);
            let path = all[rng.below(all.len())].clone();
            if let Some((last, parent)) = path.split_last() {
                if let Value::Object(map) = at_mut(&mut v, parent) {
                    map.remove(last);
                }
            }
            v.to_string().into_bytes()
        }
    }
}

#[test]
fn fuzz_smoke_every_mutated_fixture_is_understood_or_refused_with_a_reason() {
    let phoenix = [
        phoenix_tests::envelope(
            "p1",
            "ImageReady",
            serde_json::json!({"fleet": "web", "image": "ami-0123456789abcdef0"}),
            "2030-01-07T10:00:00Z",
        )
        .to_string(),
        phoenix_tests::envelope(
            "p2",
            "HealthCheckFailed",
            serde_json::json!({"instance": "i-0123456789abcdef0", "reason": "503"}),
            "2030-01-07T10:00:00Z",
        )
        .to_string(),
        phoenix_tests::envelope(
            "p3",
            "ScaleRequested",
            serde_json::json!({"fleet": "web", "delta": -1}),
            "2030-01-07T10:00:00Z",
        )
        .to_string(),
    ];
    let inputs: Vec<String> = AWS
        .iter()
        .map(|(_, j)| j.to_string())
        .chain(phoenix)
        .collect();
    let mut rng = Rng(0x5eed_f00d);
    let (mut accepted, mut refused) = (0usize, 0usize);
    for json in &inputs {
        assert!(
            verdict(json.as_bytes()).is_ok(),
            "the fixture itself: {json}"
        );
        for _ in 0..400 {
            let input = mutate(&mut rng, json);
            let result = std::panic::catch_unwind(|| verdict(&input));
            match result {
                Ok(Ok(_)) => accepted += 1,
                Ok(Err(reason)) => {
                    assert!(
                        !reason.trim().is_empty(),
                        "refused without a reason: {}",
                        String::from_utf8_lossy(&input)
                    );
                    refused += 1;
                }
                Err(_) => panic!("panicked on {:?}", String::from_utf8_lossy(&input)),
            }
        }
    }
    // The mutations reach both sides.
    assert!(
        accepted > 100 && refused > 1000,
        "{accepted} accepted, {refused} refused"
    );
}
