//! Fleets people already have, on the emulator: tagged instances adopted and rolled to the
//! fleet's image under the budget; adoptions that cannot be are refused with the reason and change
//! nothing; released instances keep running untagged; an Auto Scaling group taken over with none
//! of its instances terminated and the fleet serving throughout (and, as the control, a group
//! emptied at once fails requests).

#![allow(clippy::unwrap_used)]

use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, Tag as AsgTag};
use aws_sdk_ec2::types::RequestLaunchTemplateData;
use phoenix_core::events::Change;
use phoenix_core::model::{RolloutStatus, TAG_FLEET};
use phoenix_tests::target_groups::Served;
use phoenix_tests::traffic::{LoadConfig, Tag};
use phoenix_tests::{FleetFile, Harness};
use std::time::Duration;

const EVERY: Duration = Duration::from_millis(300);
const WITHIN: Duration = Duration::from_secs(120);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn tagged_instances_are_adopted_and_rolled_to_the_fleets_image_within_the_budget() {
    let h = Harness::start().await.unwrap();
    let one = h.register_image("web-1").await;
    let two = h.register_image("web-2").await;
    let web = h.launch_unmanaged(&one, 4, &[("app", "web")]).await;
    let api = h.launch_unmanaged(&one, 1, &[("app", "api")]).await;
    let file = FleetFile::new("web", &two, 4).surge("1").unavailable("1");
    let out = h.adopt(&file, &["--select", "tag:app=web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("adopted"), "{text}");

    // Recorded and tagged at once, nothing launched or terminated by the adoption itself.
    let f = h.fleet("web").await;
    let mut adopted: Vec<String> = f.live_instances().map(|i| i.id.to_string()).collect();
    adopted.sort();
    let mut expected = web.clone();
    expected.sort();
    assert_eq!(adopted, expected);
    assert!(f.live_instances().all(|i| i.adopted.is_some()));
    assert_eq!(h.fleet_instances("web").await.len(), 4);
    assert_eq!(
        f.rollout.as_ref().unwrap().status,
        RolloutStatus::InProgress
    );

    // Rolled under the budget: never more than capacity + surge, never fewer than capacity -
    // unavailable that are not on their way out.
    let f = h
        .settle_with("web", |f| {
            let total = f.live_instances().count() as u32 + f.pending_count();
            assert!(total <= 5, "{total} instances at once");
            let staying = f.live_instances().filter(|i| i.disposal.is_none()).count();
            assert!(staying >= 3, "{staying} staying");
        })
        .await;
    assert!(f.live_instances().all(|i| i.image == two));
    assert_eq!(f.live_instances().count(), 4);
    for id in &web {
        let i = h
            .instances()
            .await
            .into_iter()
            .find(|i| i.id == *id)
            .unwrap();
        assert!(!i.is_alive(), "{id} still {}", i.state);
    }
    // What was not selected is untouched.
    let other = h
        .instances()
        .await
        .into_iter()
        .find(|i| i.id == api[0])
        .unwrap();
    assert!(other.is_alive());
    assert!(!other.tags.contains_key(TAG_FLEET));
    // The history says where they came from; explain too.
    let history = h.history("web").await;
    assert!(history
        .iter()
        .flat_map(|e| &e.changes)
        .any(|c| matches!(c, Change::Adopted { from, instances, .. } if from == "tag:app=web" && instances.len() == 4)));
    let why = h.phoenix_ok(&["explain", &web[0]]);
    assert!(why.contains("adopted"), "{why}");
}

async fn tags(h: &Harness, id: &str) -> std::collections::BTreeMap<String, String> {
    h.instances()
        .await
        .into_iter()
        .find(|i| i.id == id)
        .unwrap()
        .tags
}

#[tokio::test(flavor = "multi_thread")]
async fn adoptions_that_cannot_be_are_refused_and_change_nothing() {
    let h = Harness::start().await.unwrap();
    let one = h.register_image("web-1").await;
    h.apply(&FleetFile::new("db", &one, 1));
    let db = h.settle("db").await;
    let owned = db.live_instances().next().unwrap().id.to_string();
    let stopped = h.launch_unmanaged(&one, 1, &[]).await;
    h.ec2
        .stop_instances()
        .instance_ids(&stopped[0])
        .send()
        .await
        .unwrap();
    let free = h.launch_unmanaged(&one, 1, &[]).await;
    let file = FleetFile::new("web", &one, 2);
    let both = format!("{},{}", free[0], stopped[0]);
    let refusals = [
        (vec!["--instances", owned.as_str()], "fleet db's"),
        (vec!["--instances", stopped[0].as_str()], "stopped"),
        (vec!["--instances", both.as_str()], "stopped"),
        (vec!["--instances", "i-0123456789abcdef0"], "does not exist"),
        (vec!["--select", "tag:app=nothing"], "no instance carries"),
        (vec!["--from-asg", "nowhere"], "does not exist"),
    ];
    for (how, why) in refusals {
        let out = h.adopt(&file, &how);
        assert!(!out.status.success(), "{how:?} was accepted");
        assert!(stderr(&out).contains(why), "{how:?}: {}", stderr(&out));
    }
    // Usage errors never reach AWS.
    let out = h.adopt(&file, &["--select", "app=web"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("tag:KEY=VALUE"), "{}", stderr(&out));
    // Nothing changed: no fleet web, db's instance still db's, the free one still untagged.
    let out = h.phoenix(&["fleet", "show", "web"]);
    assert!(!out.status.success());
    assert_eq!(
        tags(&h, &owned).await.get(TAG_FLEET).map(String::as_str),
        Some("db")
    );
    assert!(!tags(&h, &free[0]).await.contains_key(TAG_FLEET));

    // Control: the free one alone is adopted.
    let out = h.adopt(&file, &["--instances", &free[0]]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        tags(&h, &free[0]).await.get(TAG_FLEET).map(String::as_str),
        Some("web")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn released_instances_keep_running_untagged_and_the_history_stays() {
    let h = Harness::start().await.unwrap();
    let one = h.register_image("web-1").await;
    let ids = h.launch_unmanaged(&one, 2, &[("app", "web")]).await;
    let out = h.adopt(
        &FleetFile::new("web", &one, 2),
        &["--select", "tag:app=web"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    h.settle("web").await;
    assert_eq!(h.fleet_instances("web").await.len(), 2);

    let text = h.phoenix_ok(&["fleet", "release", "web"]);
    assert!(text.contains("released"), "{text}");
    for _ in 0..3 {
        h.dispatcher.tick().await.unwrap();
        h.drain().await;
    }
    let all = h.instances().await;
    for id in &ids {
        let i = all.iter().find(|i| i.id == *id).unwrap();
        assert!(i.is_alive(), "{id} is {}", i.state);
        assert!(
            !i.tags.keys().any(|k| k.starts_with("phoenix:")),
            "{:?}",
            i.tags
        );
    }
    // Nothing launched in their place.
    assert_eq!(all.iter().filter(|i| i.is_alive()).count(), 2);
    let f = h.fleet("web").await;
    assert_eq!(f.spec.capacity, 0);
    assert_eq!(f.live_instances().count(), 0);
    assert!(h
        .history("web")
        .await
        .iter()
        .flat_map(|e| &e.changes)
        .any(|c| matches!(c, Change::Released { instances } if instances.len() == 2)));
    // Given back, they may be adopted again (by any fleet).
    let out = h.adopt(
        &FleetFile::new("api", &one, 2),
        &["--select", "tag:app=web"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A launch template and an Auto Scaling group of 4 on it behind `group`, its instances tagged
/// `app=web`. The group's name.
async fn auto_scaling_group(s: &Served, image: &str) -> String {
    let direct = phoenix_aws::config::emulator_sdk_config(&s.h.emulator.endpoint).await;
    let ec2 = aws_sdk_ec2::Client::new(&direct);
    ec2.create_launch_template()
        .launch_template_name("web-asg")
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(image)
                .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let asg = aws_sdk_autoscaling::Client::new(&direct);
    asg.create_auto_scaling_group()
        .auto_scaling_group_name("web-asg")
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_name("web-asg")
                .version("$Latest")
                .build(),
        )
        .min_size(4)
        .max_size(4)
        .desired_capacity(4)
        .vpc_zone_identifier(&s.network.subnets[0])
        .target_group_arns(&s.group)
        .tags(
            AsgTag::builder()
                .key("app")
                .value("web")
                .propagate_at_launch(true)
                .build(),
        )
        .send()
        .await
        .unwrap();
    "web-asg".into()
}

async fn group_now(s: &Served, name: &str) -> aws_sdk_autoscaling::types::AutoScalingGroup {
    let direct = phoenix_aws::config::emulator_sdk_config(&s.h.emulator.endpoint).await;
    aws_sdk_autoscaling::Client::new(&direct)
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .unwrap()
        .auto_scaling_groups()
        .first()
        .cloned()
        .unwrap()
}

fn members(g: &aws_sdk_autoscaling::types::AutoScalingGroup) -> Vec<String> {
    let mut ids: Vec<String> = g
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auto_scaling_group_is_taken_over_with_none_terminated_and_serving_throughout() {
    let mut s = Served::start_serving("web", true, 1, Tag::new("app", "web"))
        .await
        .unwrap();
    let one = s.h.register_image("web-1").await;
    let name = auto_scaling_group(&s, one.as_str()).await;
    let before = members(&group_now(&s, &name).await);
    assert_eq!(before.len(), 4);
    s.start_traffic(4, LoadConfig::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // In the group's subnet (its zone): nothing to rebalance.
    let mut file = FleetFile::new("web", &one, 4)
        .unavailable("1")
        .line(&format!("subnets: [{}]", s.network.subnets[0]))
        .line(&format!("load_balancing:\n  target_groups: [{}]", s.group));
    file.tags.push(("app".into(), "web".into()));
    // Refused while the group is being refreshed, and while the file leaves out a target group
    // it serves behind: nothing changed.
    s.world.proxy.set_refreshing(&name, true);
    let out = s.h.adopt(&file, &["--from-asg", &name]);
    assert!(
        stderr(&out).contains("instance refresh under way"),
        "{}",
        stderr(&out)
    );
    s.world.proxy.set_refreshing(&name, false);
    let bare = FleetFile::new("web", &one, 4).line(&format!("subnets: [{}]", s.network.subnets[0]));
    let out = s.h.adopt(&bare, &["--from-asg", &name]);
    assert!(stderr(&out).contains("does not name"), "{}", stderr(&out));
    let mut strict = file.clone();
    strict.max_unavailable = "0".into();
    let out = s.h.adopt(&strict, &["--from-asg", &name]);
    assert!(stderr(&out).contains("max_unavailable"), "{}", stderr(&out));
    let g = group_now(&s, &name).await;
    assert!(g.suspended_processes().is_empty());
    assert!(!s.h.phoenix(&["fleet", "show", "web"]).status.success());

    let out = s.h.adopt(&file, &["--from-asg", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = s.h.phoenix_ok(&["status", "web"]);
    assert!(
        status.contains("taking over Auto Scaling group web-asg"),
        "{status}"
    );

    let f = s.h.settle_over("web", EVERY, WITHIN).await;
    // The group let every instance go, launched none, terminated none: they are the fleet's.
    let g = group_now(&s, &name).await;
    assert!(g.instances().is_empty(), "{:?}", members(&g));
    assert_eq!(g.desired_capacity(), Some(0));
    let suspended: Vec<&str> = g
        .suspended_processes()
        .iter()
        .filter_map(|p| p.process_name())
        .collect();
    assert!(suspended.contains(&"Launch") && suspended.contains(&"Terminate"));
    let mut live: Vec<String> = f.live_instances().map(|i| i.id.to_string()).collect();
    live.sort();
    assert_eq!(live, before);
    assert!(f.takeover.is_none());
    let alive =
        s.h.instances()
            .await
            .into_iter()
            .filter(|i| i.is_alive())
            .count();
    assert_eq!(alive, 4);
    let history = s.h.history("web").await;
    let detaches: Vec<usize> = history
        .iter()
        .flat_map(|e| &e.changes)
        .filter_map(|c| match c {
            Change::DetachDecided { instances, .. } => Some(instances.len()),
            _ => None,
        })
        .collect();
    // One at a time: max_unavailable 1.
    assert_eq!(detaches, vec![1, 1, 1, 1]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = s.report().await.unwrap();
    println!("takeover: {report}");
    assert!(report.sent > 50, "{report}");
    assert_eq!(report.failed, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn control_a_group_emptied_at_once_fails_requests() {
    let mut s = Served::start_serving("web", true, 1, Tag::new("app", "web"))
        .await
        .unwrap();
    let one = s.h.register_image("web-1").await;
    let name = auto_scaling_group(&s, one.as_str()).await;
    let ids = members(&group_now(&s, &name).await);
    s.start_traffic(4, LoadConfig::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // What a takeover without batches and re-registration does: every instance out at once,
    // through the same API proxy.
    let via_proxy = phoenix_aws::config::emulator_sdk_config(&s.world.proxy.endpoint()).await;
    aws_sdk_autoscaling::Client::new(&via_proxy)
        .detach_instances()
        .auto_scaling_group_name(&name)
        .set_instance_ids(Some(ids))
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = s.report().await.unwrap();
    println!("emptied at once: {report}");
    assert!(report.failed > 0, "{report}");
}
