//! The request meter of the benchmark report (`make bench-aws`), on what a user cares about:
//! replacing one instance makes exactly one RunInstances and one TerminateInstances, and the
//! work of one health event does not depend on the fleet's size. And the capacity rules it
//! computes DynamoDB's cost by.

#![allow(clippy::unwrap_used)]

use phoenix_core::events::Intent;
use phoenix_tests::bench::{dynamodb_capacity, item_size, Bench};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replacing_one_instance_launches_once_terminates_once_whatever_the_fleet_size() {
    // Without the EC2 call budget: its admissions depend on the clock (none while the process
    // holds room in the current second), and the counts compared here must not.
    let b = Bench::start_with(3, 1, phoenix_protocol::Intake::default())
        .await
        .unwrap();
    let image = b.world.images[0].clone();

    // Through the controller: the event, then the reconciles until the fleet converged again.
    b.create_fleet("web", &image, 4, 1, "").await.unwrap();
    let victim = b.world.live_ids("web").await.unwrap()[0].clone();
    let env = b.world.event(
        &Intent::HealthCheckFailed {
            instance: phoenix_core::InstanceId::parse(&victim).unwrap(),
            reason: "test".into(),
        },
        b.world.now(),
    );
    let m = b.until_converged("web", &env, 10).await.unwrap();
    let u = &m.usage;
    assert_eq!(u.count("ec2:RunInstances"), 1, "{}", u.breakdown());
    assert_eq!(u.count("ec2:TerminateInstances"), 1, "{}", u.breakdown());
    assert!(
        u.count("dynamodb:TransactWriteItems") >= 1,
        "{}",
        u.breakdown()
    );
    assert!(!b.world.live_ids("web").await.unwrap().contains(&victim));
    assert!(u.capacity().wcu > 0.0 && u.response_bytes() > 0);

    // One health event's handler in a fleet of 10 and one of 50: the same requests.
    b.seed_fleet("small", &image, 10).await.unwrap();
    b.seed_fleet("large", &image, 50).await.unwrap();
    let small = b.health_event("small").await.unwrap();
    let large = b.health_event("large").await.unwrap();
    assert_eq!(
        small.ops.keys().collect::<Vec<_>>(),
        large.ops.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        small.requests(),
        large.requests(),
        "10 instances: {}\n50 instances: {}",
        small.breakdown(),
        large.breakdown()
    );
    for u in [&small, &large] {
        assert_eq!(u.count("ec2:RunInstances"), 1, "{}", u.breakdown());
        assert_eq!(u.count("ec2:TerminateInstances"), 1, "{}", u.breakdown());
    }
}

#[test]
fn item_sizes_follow_dynamodb_rules() {
    let item = serde_json::json!({
        "pk": {"S": "FLEET#web"},
        "version": {"N": "12"},
        "gone": {"BOOL": true},
        "m": {"M": {"a": {"S": "xy"}}},
    });
    // pk 2 + 9; version 7 + 2 (two digits: one byte, plus one); gone 4 + 1; m 1 + (3 + 1 + 2 + 1).
    assert_eq!(item_size(&item), 11 + 9 + 5 + 8);
}

#[test]
fn transactions_cost_two_units_per_kb_per_item() {
    let request = serde_json::json!({
        "TransactItems": [
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "x".repeat(1500)}}}},
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "a"}}}},
            {"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "a"}}}},
        ]
    });
    let c = dynamodb_capacity(
        "dynamodb:TransactWriteItems",
        request.to_string().as_bytes(),
        b"{}",
    );
    assert_eq!(c.wcu, 2.0 * 2.0 + 2.0);
    assert_eq!(c.rcu, 2.0);
    assert_eq!(c.items_written, 2);
}

#[test]
fn reads_round_up_to_4kb_and_cost_half_when_eventually_consistent() {
    let answer = serde_json::json!({"Item": {"d": {"S": "x".repeat(5000)}}}).to_string();
    let consistent = dynamodb_capacity(
        "dynamodb:GetItem",
        br#"{"ConsistentRead":true}"#,
        answer.as_bytes(),
    );
    assert_eq!(consistent.rcu, 2.0);
    let eventual = dynamodb_capacity("dynamodb:GetItem", b"{}", answer.as_bytes());
    assert_eq!(eventual.rcu, 1.0);
    // Items a filter dropped are read all the same: 3 items of ~100 bytes, one page.
    let query =
        serde_json::json!({"Items": [{"d": {"S": "x".repeat(99)}}], "Count": 1, "ScannedCount": 3});
    let c = dynamodb_capacity(
        "dynamodb:Query",
        br#"{"ConsistentRead":true}"#,
        query.to_string().as_bytes(),
    );
    assert_eq!(c.rcu, 1.0);
}
