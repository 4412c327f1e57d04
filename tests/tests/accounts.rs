//! Fleets in other accounts and regions, on the emulator (which keeps each account's EC2 apart
//! once a role there is assumed): a fleet whose file names another account is launched there,
//! through the role it names; an AWS event about one of its instances that names that account
//! repairs it, and the same instance id sent as if from a third account is ignored. A role that
//! cannot be assumed, or a region without the image, is refused and changes nothing.

#![allow(clippy::unwrap_used)]

use aws_config::sts::AssumeRoleProvider;
use aws_config::SdkConfig;
use phoenix_core::events::Change;
use phoenix_core::model::TAG_FLEET;
use phoenix_core::patterns::Function;
use phoenix_tests::traffic::{ElbApiProxy, InFlight};
use phoenix_tests::{Emulator, FleetFile, Harness};
use serde_json::json;

const MEMBER: &str = "111111111111";
const ROLE: &str = "arn:aws:iam::111111111111:role/phoenix-member";

/// The emulator as the member account sees it, through the role.
async fn member(endpoint: &str) -> SdkConfig {
    let base = phoenix_aws::config::emulator_sdk_config(endpoint).await;
    let provider = AssumeRoleProvider::builder(ROLE)
        .session_name("test")
        .configure(&base)
        .build()
        .await;
    base.to_builder()
        .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
            provider,
        ))
        .build()
}

/// Live instances carrying `phoenix:fleet=web` in an account's EC2.
async fn tagged(ec2: &aws_sdk_ec2::Client) -> Vec<(String, String)> {
    let out = ec2.describe_instances().send().await.unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            i.tags()
                .iter()
                .any(|t| t.key() == Some(TAG_FLEET) && t.value() == Some("web"))
        })
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_string(),
                i.state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .filter(|(_, state)| state == "running" || state == "pending")
        .collect()
}

/// EC2's state-change notification for `instance`, as the member account's forwarding rule
/// delivers it (from `account`).
fn stopped(instance: &str, account: &str, id: &str) -> String {
    json!({
        "version": "0",
        "id": id,
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": account,
        "time": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1:{account}:instance/{instance}")],
        "detail": {"instance-id": instance, "state": "stopped"},
    })
    .to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_in_another_account_lives_there_and_only_its_accounts_events_act_on_it() {
    let emulator = Emulator::start().unwrap();
    let proxy = ElbApiProxy::start(&emulator.endpoint, InFlight::default())
        .await
        .unwrap();
    let endpoint = proxy.endpoint();
    let h = Harness::start_behind(emulator, &endpoint).await.unwrap();
    let member = member(&h.emulator.endpoint).await;
    let member_ec2 = aws_sdk_ec2::Client::new(&member);
    let image = phoenix_local::register_image(&member, "web-1")
        .await
        .unwrap();
    let file = |account: &str| {
        FleetFile::new("web", &image, 2)
            .unavailable("1")
            .line(account)
    };

    // Refused, nothing changed: the image is the member account's, not this one's; the role
    // cannot be assumed; the image is not in that region.
    let refusals = [
        ("", "does not exist or is not available in this account"),
        (
            "account: {role_arn: \"arn:aws:iam::111111111111:role/locked\"}",
            "cannot assume arn:aws:iam::111111111111:role/locked",
        ),
        (
            "account: {role_arn: \"arn:aws:iam::111111111111:role/phoenix-member\"}\nregion: eu-west-1",
            "account 111111111111 in eu-west-1",
        ),
        (
            "account: {id: \"222222222222\", role_arn: \"arn:aws:iam::111111111111:role/phoenix-member\"}",
            "is not the account of role",
        ),
    ];
    proxy.deny_role("arn:aws:iam::111111111111:role/locked");
    for (account, why) in refusals {
        let out = h.phoenix(&["fleet", "apply", file(account).write().to_str().unwrap()]);
        assert!(!out.status.success(), "{account} was accepted");
        assert!(stderr(&out).contains(why), "{account}: {}", stderr(&out));
    }
    assert!(!h.phoenix(&["fleet", "show", "web"]).status.success());

    // Launched in the member account, none here.
    let account = format!(
        "account:\n  role_arn: \"{ROLE}\"\n  external_id: ext-1\n  session_tags: {{team: web}}"
    );
    h.apply(&file(&account));
    h.settle("web").await;
    let there = tagged(&member_ec2).await;
    assert_eq!(there.len(), 2, "{there:?}");
    assert!(tagged(&h.ec2).await.is_empty());
    let status = h.phoenix_ok(&["status", "web"]);
    assert!(status.contains(&there[0].0), "{status}");

    // One of them stops. Sent as if from a third account, the same instance id is someone
    // else's: ignored, the fleet unchanged.
    let victim = there[0].0.clone();
    member_ec2
        .stop_instances()
        .instance_ids(&victim)
        .send()
        .await
        .unwrap();
    let before = h.fleet("web").await.version;
    h.enqueue(
        Function::Health,
        &stopped(&victim, "222222222222", "third-1"),
    )
    .await;
    let d = h.drain().await;
    assert!(d.iter().all(|d| d.error.is_none()), "{d:#?}");
    assert_eq!(h.fleet("web").await.version, before);

    // From the member account: repaired there.
    h.enqueue(Function::Health, &stopped(&victim, MEMBER, "member-1"))
        .await;
    h.drain().await;
    let f = h.settle("web").await;
    assert!(!f.live_instances().any(|i| i.id.as_str() == victim));
    assert_eq!(f.live_instances().count(), 2);
    let there = tagged(&member_ec2).await;
    assert_eq!(there.len(), 2, "{there:?}");
    assert!(!there.iter().any(|(id, _)| *id == victim));
    let history = h.history("web").await;
    let repaired_by = history
        .iter()
        .find(|e| {
            e.changes.iter().any(|c| {
                matches!(c, Change::TerminationDecided { instance, .. } if instance.as_str() == victim)
            })
        })
        .map(|e| e.cause.event_id.clone());
    assert_eq!(repaired_by, Some(Some("member-1".to_string())));
}
