//! The reliability mechanisms one at a time, on the emulator behind the fault proxy: the event
//! record's status and expiry (a duplicate in flight returns without acting; a record whose
//! invocation died expires and the retry finishes the work), the invocation's deadline, a launch
//! whose answer was lost, a fleet-wide event that keeps losing the race for its fleet, the
//! outbox of notifications (a crash between the commit and PutEvents, or after PutEvents; a
//! PutEvents that fails), and the proxy's faults as the SDK sees them.

#![allow(clippy::unwrap_used)]

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use phoenix_aws::bus::EventBridgeBus;
use phoenix_aws::ec2::Ec2Client;
use phoenix_aws::table::DynamoTable;
use phoenix_aws::time::SystemTime;
use phoenix_aws::Apis;
use phoenix_aws::{
    Controller, Deadline, DynamoStore, Error, FleetOutcome, Ports, DEADLINE_RESERVE,
};
use phoenix_core::events::{self, Cause, Change, Envelope, Intent, ScaleTarget};
use phoenix_core::history::HistoryEntry;
use phoenix_core::images::ImageFacts;
use phoenix_core::model::{Fleet, LaunchTemplateRef, TAG_FLEET, TAG_TOKEN};
use phoenix_core::planner::{Step, LEASE};
use phoenix_core::FleetName;
use phoenix_protocol::ports::ec2::{
    Ec2, Ec2Instance, InstanceStatus, Instances, Ran, RunInstances, Subnet, TemplateVersions,
};
use phoenix_protocol::ports::Time;
use phoenix_tests::chaos::World;
use phoenix_tests::faults::{FaultConfig, FaultKind, FaultProxy};
use phoenix_tests::Emulator;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A converged fleet `web` of two on the first image; returns the world and one instance.
/// `faults`: the proxy answers retried calls with the same idempotency token as AWS does.
async fn fleet_of_two_with(faults: bool) -> (World, String) {
    let w = World::start_with(3, 1, faults).await.unwrap();
    let a = w.images[0].clone();
    w.create_fleet("web", &a, 2, 1).await.unwrap();
    let victim = w.live_ids("web").await.unwrap()[0].clone();
    (w, victim)
}

async fn fleet_of_two() -> (World, String) {
    fleet_of_two_with(false).await
}

fn health_failed(w: &World, victim: &str) -> Envelope {
    w.event(
        &Intent::HealthCheckFailed {
            instance: victim.parse().unwrap(),
            reason: "http 503".into(),
        },
        w.now(),
    )
}

/// Instances EC2 ever had for the fleet, in any state.
async fn ever(w: &World) -> usize {
    w.instances()
        .await
        .unwrap()
        .iter()
        .filter(|i| i.tags.get("phoenix:fleet").map(String::as_str) == Some("web"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_arriving_while_the_first_is_in_flight_returns_without_acting() {
    let (w, victim) = fleet_of_two().await;
    let w = Arc::new(w);
    let env = health_failed(&w, &victim);
    // RunInstances takes 3 s: the first delivery holds the event in progress meanwhile.
    let mut slow = FaultConfig::default();
    slow.delays
        .insert("RunInstances".into(), Duration::from_secs(3));
    w.proxy.set_faults(slow);
    let first = {
        let (w, env) = (w.clone(), env.clone());
        tokio::spawn(async move { w.invoke(&env, None).await })
    };
    let record = loop {
        if let Some(r) = w.store.event_record(&env.id).await.unwrap() {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(record.status, "INPROGRESS");
    assert!(record.in_progress_until.unwrap() > w.now());
    let version = w.fleet("web").await.unwrap().version;

    let dup = w.invoke(&env, None).await.unwrap();
    assert_eq!(dup.fleets[0].outcome, FleetOutcome::InFlight);
    assert!(dup.fleets[0].changes.is_empty() && dup.fleets[0].launched.is_empty());
    assert_eq!(
        w.fleet("web").await.unwrap().version,
        version,
        "the duplicate wrote nothing"
    );

    let first = first.await.unwrap().unwrap();
    assert_eq!(first.fleets[0].outcome, FleetOutcome::Changed);
    assert_eq!(first.fleets[0].launched.len(), 1);
    assert_eq!(
        w.store.event_record(&env.id).await.unwrap().unwrap().status,
        "COMPLETED"
    );
    // Once completed, a redelivery returns at once, doing nothing either.
    let late = w.invoke(&env, None).await.unwrap();
    assert_eq!(late.fleets[0].outcome, FleetOutcome::Duplicate);
    assert!(late.fleets[0].changes.is_empty());
    assert_eq!(ever(&w).await, 3, "two, and one replacement");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_progress_record_whose_invocation_died_expires_and_the_retry_finishes_the_work() {
    let (w, victim) = fleet_of_two().await;
    let env = health_failed(&w, &victim);
    // Calls 1-2 read the instance and its fleet (Query on the index, one BatchGetItem); call 3
    // commits the decision and claims the event. The invocation dies right after it.
    assert!(w.deliver_crashing(&env, 3).await);
    let record = w.store.event_record(&env.id).await.unwrap().unwrap();
    assert_eq!(record.status, "INPROGRESS");

    // Delivered again at once: its owner may still be alive, so nothing is done.
    let again = w.invoke(&env, None).await.unwrap();
    assert_eq!(again.fleets[0].outcome, FleetOutcome::InFlight);
    assert_eq!(ever(&w).await, 2, "nothing launched");
    assert!(w.live_ids("web").await.unwrap().contains(&victim));

    // After the dead invocation's deadline and its decisions' lease: the retry finishes the
    // replacement, without applying the event a second time.
    w.advance(LEASE + chrono::Duration::seconds(1));
    let retry = w.invoke(&env, None).await.unwrap();
    assert_eq!(retry.fleets[0].outcome, FleetOutcome::Duplicate);
    assert_eq!(retry.fleets[0].launched.len(), 1, "{retry:#?}");
    assert_eq!(
        retry.fleets[0]
            .terminated
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>(),
        vec![victim.clone()]
    );
    assert_eq!(ever(&w).await, 3);
    let history = w
        .store
        .history(&FleetName::parse("web").unwrap(), 1000)
        .await
        .unwrap();
    let applied = history
        .iter()
        .filter(|e| e.cause.event_id.as_deref() == Some(env.id.as_str()))
        .flat_map(|e| &e.changes)
        .filter(|c| matches!(c, Change::HealthChanged { .. }))
        .count();
    assert_eq!(applied, 1, "the failure was recorded once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_for_other_content_is_rejected_and_a_redelivery_that_no_longer_plans_is_a_duplicate(
) {
    let (w, victim) = fleet_of_two().await;
    let env = health_failed(&w, &victim);
    w.invoke(&env, None).await.unwrap();
    let mut other = env.clone();
    other.detail = serde_json::json!({"instance": victim, "reason": "something else"});
    let err = w.invoke(&other, None).await.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert!(err.to_string().contains("different content"), "{err}");
    assert!(!err.is_retryable());

    // Capacity 2, delta -2 applied: a redelivery would plan a negative capacity. It is a
    // duplicate, not bad input (it must not end in the dead-letter queue).
    let name = FleetName::parse("web").unwrap();
    let scale = w.event(
        &Intent::Scale {
            fleet: name,
            target: ScaleTarget::Delta(-2),
        },
        w.now() + chrono::Duration::minutes(1),
    );
    let first = w.invoke(&scale, None).await.unwrap();
    assert_eq!(first.fleets[0].outcome, FleetOutcome::Changed);
    let again = w.invoke(&scale, None).await.unwrap();
    assert_eq!(again.fleets[0].outcome, FleetOutcome::Duplicate);
    assert_eq!(w.fleet("web").await.unwrap().spec.capacity, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_its_deadline_an_invocation_starts_nothing_new_and_the_next_reconcile_finishes() {
    let (w, victim) = fleet_of_two().await;
    let version = w.fleet("web").await.unwrap().version;

    // Too little time from the start: nothing is done, and the event is retried.
    let env = health_failed(&w, &victim);
    let err = w
        .invoke(&env, Some(Deadline::at(w.now() + DEADLINE_RESERVE / 2)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Deadline(_)), "{err}");
    assert!(err.is_retryable());
    assert!(w.store.event_record(&env.id).await.unwrap().is_none());
    assert_eq!(w.fleet("web").await.unwrap().version, version);

    // Time for the decision and the launch, not for what follows: RunInstances takes 3 s of
    // the 4.5 s beyond the reserve. The termination waiting for that launch is left over.
    let mut slow = FaultConfig::default();
    slow.delays
        .insert("RunInstances".into(), Duration::from_secs(3));
    w.proxy.set_faults(slow);
    let report = w
        .invoke(
            &env,
            Some(Deadline::at(
                w.now() + DEADLINE_RESERVE + Duration::from_millis(2500),
            )),
        )
        .await
        .unwrap();
    w.proxy.clear_faults();
    let f = &report.fleets[0];
    assert_eq!(f.launched.len(), 1, "{report:#?}");
    assert!(f.terminated.is_empty(), "{report:#?}");
    assert!(
        f.failures.iter().any(|m| m.starts_with("deferred")),
        "{:?}",
        f.failures
    );
    assert!(w.live_ids("web").await.unwrap().contains(&victim));
    assert_eq!(
        w.store.event_record(&env.id).await.unwrap().unwrap().status,
        "INPROGRESS",
        "not completed: work is left"
    );

    // The next reconcile after the lease carries out the termination.
    w.advance(LEASE + chrono::Duration::seconds(1));
    w.reconcile("web").await.unwrap();
    assert!(!w.live_ids("web").await.unwrap().contains(&victim));
    let fleet = w.fleet("web").await.unwrap();
    assert_eq!(fleet.live_instances().count(), 2);
    assert!(fleet.pending.is_empty());
    assert_eq!(ever(&w).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_whose_answer_was_lost_is_adopted_by_its_token_not_reaped() {
    let (w, victim) = fleet_of_two_with(true).await;
    // Every RunInstances reaches EC2 and its answer is lost, on every SDK attempt.
    let mut lost = FaultConfig::default();
    lost.rates.insert("ec2", 1.0);
    lost.only = vec!["RunInstances".into()];
    lost.kinds = vec![FaultKind::ResetAfterForward];
    w.proxy.set_faults(lost);
    let env = health_failed(&w, &victim);
    let report = w.invoke(&env, None).await.unwrap();
    w.proxy.clear_faults();
    let f = &report.fleets[0];
    assert!(f.launched.is_empty());
    assert!(
        f.failures.iter().any(|m| m.contains("outcome unknown")),
        "{:?}",
        f.failures
    );
    assert_eq!(ever(&w).await, 3, "EC2 did launch it");
    assert!(
        !w.fleet("web").await.unwrap().pending.is_empty(),
        "the decision stays pending"
    );

    w.advance(LEASE + chrono::Duration::seconds(1));
    w.settle("web", false, 10).await.unwrap();
    let all = w.instances().await.unwrap();
    let ours: Vec<_> = all
        .iter()
        .filter(|i| i.tags.get("phoenix:fleet").map(String::as_str) == Some("web"))
        .collect();
    assert_eq!(ours.len(), 3, "adopted, not launched again");
    let adopted = ours
        .iter()
        .filter(|i| i.tags.contains_key(TAG_TOKEN) && i.is_alive())
        .count();
    assert_eq!(adopted, 2);
    let history = w
        .store
        .history(&FleetName::parse("web").unwrap(), 1000)
        .await
        .unwrap();
    assert!(!history.iter().flat_map(|e| &e.changes).any(|c| matches!(
        c,
        Change::TerminationDecided { reason, .. } if reason.contains("owned by no phoenix decision")
    )));
    assert!(!w.live_ids("web").await.unwrap().contains(&victim));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_proxy_fails_each_service_the_way_aws_does() {
    let emulator = Emulator::start().unwrap();
    let proxy = FaultProxy::start(&emulator.endpoint, 1).await.unwrap();
    let creds = aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "t");
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&proxy.endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_millis(500))
                .build(),
        )
        .load()
        .await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    for kind in [
        FaultKind::Throttle,
        FaultKind::ServerError,
        FaultKind::Reset,
        FaultKind::Timeout,
    ] {
        let mut c = FaultConfig::default();
        for s in ["ec2", "dynamodb", "events", "sqs"] {
            c.rates.insert(s, 1.0);
        }
        c.kinds = vec![kind];
        c.hold = Duration::from_secs(1);
        proxy.set_faults(c);
        let got: Vec<(&str, String, Error)> = vec![
            {
                let e = ec2.describe_instances().send().await.unwrap_err();
                (
                    "ec2",
                    e.code().unwrap_or_default().to_string(),
                    phoenix_aws::error::sdk_error("ec2", e),
                )
            },
            {
                let e = ddb.list_tables().send().await.unwrap_err();
                (
                    "dynamodb",
                    e.code().unwrap_or_default().to_string(),
                    phoenix_aws::error::sdk_error("dynamodb", e),
                )
            },
            {
                let e = events.list_rules().send().await.unwrap_err();
                (
                    "events",
                    e.code().unwrap_or_default().to_string(),
                    phoenix_aws::error::sdk_error("eventbridge", e),
                )
            },
            {
                let e = sqs.list_queues().send().await.unwrap_err();
                (
                    "sqs",
                    e.code().unwrap_or_default().to_string(),
                    phoenix_aws::error::sdk_error("sqs", e),
                )
            },
        ];
        for (service, code, err) in got {
            match kind {
                FaultKind::Throttle => {
                    let expected = match service {
                        "ec2" => "RequestLimitExceeded",
                        "sqs" => "RequestThrottled",
                        _ => "ThrottlingException",
                    };
                    assert_eq!(code, expected, "{service}");
                    assert!(matches!(err, Error::Throttled { .. }), "{service}: {err}");
                }
                _ => assert!(
                    matches!(err, Error::Transient { .. }),
                    "{service} {kind:?}: {err}"
                ),
            }
            assert!(err.is_retryable());
        }
    }
    let stats = proxy.stats();
    assert_eq!(stats.faults, 16);
    assert_eq!(stats.by_service.len(), 4);
}

/// EC2 as the controller sees it, but while it answers each of the first `races` reads of a
/// fleet another writer commits to that fleet: every plan made from those reads loses its race.
struct Contended {
    ec2: Ec2Client,
    store: DynamoStore,
    races: AtomicUsize,
    time: SystemTime,
}

impl Ec2 for Contended {
    async fn describe_instances(&self, which: &Instances) -> phoenix_aws::Result<Vec<Ec2Instance>> {
        let seen = self.ec2.describe_instances(which).await?;
        let Instances::Tagged { key, value } = which else {
            return Ok(seen);
        };
        let race = key == TAG_FLEET
            && self
                .races
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if race {
            let f = self.store.load_fleet(&FleetName::parse(value)?).await?;
            let mut step = Step::unchanged(&f);
            step.changes.push(Change::Ignored {
                reason: "another writer".into(),
            });
            let cause = Cause {
                event_id: None,
                source: "test".into(),
                detail_type: "another writer".into(),
                event_time: None,
            };
            self.store
                .commit(&f, &step, &cause, None, self.time.now())
                .await?;
        }
        Ok(seen)
    }
    async fn instance_status(&self, ids: &[String]) -> phoenix_aws::Result<Vec<InstanceStatus>> {
        self.ec2.instance_status(ids).await
    }
    async fn run_instances(&self, request: &RunInstances) -> phoenix_aws::Result<Ran> {
        self.ec2.run_instances(request).await
    }
    async fn terminate_instances(&self, ids: &[String]) -> phoenix_aws::Result<Option<String>> {
        self.ec2.terminate_instances(ids).await
    }
    async fn describe_launch_template(
        &self,
        template: &LaunchTemplateRef,
    ) -> phoenix_aws::Result<Option<TemplateVersions>> {
        self.ec2.describe_launch_template(template).await
    }
    async fn describe_image(&self, image: &str) -> phoenix_aws::Result<Option<ImageFacts>> {
        self.ec2.describe_image(image).await
    }
    async fn create_tags(
        &self,
        ids: &[String],
        tags: &std::collections::BTreeMap<String, String>,
    ) -> phoenix_aws::Result<()> {
        self.ec2.create_tags(ids, tags).await
    }
    async fn delete_tags(&self, ids: &[String], keys: &[String]) -> phoenix_aws::Result<()> {
        self.ec2.delete_tags(ids, keys).await
    }
    async fn describe_subnets(
        &self,
        ids: &[String],
    ) -> phoenix_aws::Result<std::collections::BTreeMap<String, Subnet>> {
        self.ec2.describe_subnets(ids).await
    }
}

/// The contended controller's fleets are all at home.
struct HomeOnly;

impl phoenix_protocol::ports::Reach for HomeOnly {
    type Ec2 = Contended;
    type Elb = phoenix_aws::elb::ElbClient;
    type AutoScaling = phoenix_aws::autoscaling::AutoScalingClient;
    async fn reach(
        &self,
        location: &phoenix_core::model::Location,
    ) -> phoenix_aws::Result<(Self::Ec2, Self::Elb, Self::AutoScaling)> {
        Err(phoenix_aws::Error::NotFound(location.describe()))
    }
}

/// The adapters of `contended`: AWS's, with the contended EC2.
struct ContendedPorts;

impl Ports for ContendedPorts {
    type Table = DynamoTable;
    type Ec2 = Contended;
    type Elb = phoenix_aws::elb::ElbClient;
    type AutoScaling = phoenix_aws::autoscaling::AutoScalingClient;
    type Reach = HomeOnly;
    type Bus = EventBridgeBus;
    type Time = SystemTime;
}

/// A controller whose every EC2 read of a fleet, among the first `races`, loses its race.
fn contended(w: &World, races: usize) -> Controller<ContendedPorts> {
    let time = w.controller.time.clone();
    Controller::new(
        DynamoTable::new(aws_sdk_dynamodb::Client::new(&w.direct), "phoenix"),
        Apis::new(
            Contended {
                ec2: Ec2Client::new(w.ec2.clone()),
                store: w.store.clone(),
                races: races.into(),
                time: time.clone(),
            },
            phoenix_aws::elb::ElbClient::new(aws_sdk_elasticloadbalancingv2::Client::new(
                &w.direct,
            )),
            phoenix_aws::autoscaling::AutoScalingClient::new(aws_sdk_autoscaling::Client::new(
                &w.direct,
            )),
        ),
        HomeOnly,
        EventBridgeBus::new(aws_sdk_eventbridge::Client::new(&w.direct), "default"),
        time,
        Default::default(),
    )
}

/// This event's history entries, oldest first.
async fn entries_of(w: &World, name: &FleetName, event: &Envelope) -> Vec<HistoryEntry> {
    w.store
        .history(name, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.cause.event_id.as_deref() == Some(event.id.as_str()))
        .collect()
}

fn scale_by(w: &World, name: &FleetName, delta: i64) -> Envelope {
    w.event(
        &Intent::Scale {
            fleet: name.clone(),
            target: ScaleTarget::Delta(delta),
        },
        w.now(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_request_that_keeps_losing_races_is_queued_then_carried_out() {
    let (w, _) = fleet_of_two().await;
    let name = FleetName::parse("web").unwrap();
    // Five lost races: three before the intent is queued, two of the three attempts the
    // reconcile after it makes.
    let controller = contended(&w, 5);
    let scale = scale_by(&w, &name, 2);
    let report = controller.handle(&scale, None).await.unwrap();
    let f = &report.fleets[0];
    assert_eq!(f.outcome, FleetOutcome::Changed);
    assert!(f.failures.is_empty(), "{:?}", f.failures);
    assert_eq!(f.launched.len(), 2, "{report:#?}");
    assert_eq!(
        controller.home.compute.ec2().races.load(Ordering::SeqCst),
        0
    );

    // After three lost races the intent went to the fleet's inbox, and the reconcile that
    // followed (losing the other two races first) applied it: recorded with this event as the
    // cause, the capacity first, and carried out.
    let mine = entries_of(&w, &name, &scale).await;
    assert!(matches!(
        mine[0].changes.first(),
        Some(Change::CapacityChanged { from: 2, to: 4 })
    ));
    assert!(mine
        .iter()
        .flat_map(|e| &e.changes)
        .any(|c| matches!(c, Change::Launched { .. })));
    assert_eq!(
        w.store
            .event_record(&scale.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        "COMPLETED"
    );
    assert!(w.fleet("web").await.unwrap().inbox.is_empty());
    assert_eq!(w.live_ids("web").await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_intent_waits_for_the_next_reconcile_and_is_applied_once() {
    let (w, _) = fleet_of_two().await;
    let name = FleetName::parse("web").unwrap();
    // Every race lost for as long as the invocation tries: the intent is queued, and the
    // reconcile after it gives up.
    let controller = contended(&w, 100);
    let scale = scale_by(&w, &name, 1);
    let report = controller.handle(&scale, None).await.unwrap();
    let f = &report.fleets[0];
    assert_eq!(f.outcome, FleetOutcome::Queued, "{report:#?}");
    assert_eq!(f.failures.len(), 1, "{:?}", f.failures);
    let record = w.store.event_record(&scale.id).await.unwrap().unwrap();
    assert_eq!(
        (record.status.as_str(), record.version),
        ("COMPLETED", None)
    );
    let fleet = w.fleet("web").await.unwrap();
    assert_eq!(fleet.spec.capacity, 2, "not applied yet");
    assert_eq!(fleet.inbox.len(), 1);
    assert_eq!(
        fleet.inbox[0].cause.event_id.as_deref(),
        Some(scale.id.as_str())
    );

    // The schedule's reconcile applies it, with the event as the cause, and empties the inbox.
    let fleet = w.settle("web", true, 10).await.unwrap();
    assert_eq!(fleet.spec.capacity, 3);
    assert!(fleet.inbox.is_empty());
    assert_eq!(w.live_ids("web").await.unwrap().len(), 3);
    let mine = entries_of(&w, &name, &scale).await;
    assert!(matches!(
        mine[0].changes.first(),
        Some(Change::CapacityChanged { from: 2, to: 3 })
    ));
    assert!(mine
        .iter()
        .flat_map(|e| &e.changes)
        .any(|c| matches!(c, Change::Launched { .. })));
    // Its record, written without a version when queued, points at the entry it caused.
    let record = w.store.event_record(&scale.id).await.unwrap().unwrap();
    assert_eq!(record.version, Some(mine[0].version));
    assert_eq!(record.status, "COMPLETED");

    // A redelivery finds the event handled, and reconciling again changes nothing: applied once.
    assert_eq!(
        w.controller.handle(&scale, None).await.unwrap().fleets[0].outcome,
        FleetOutcome::Duplicate
    );
    w.tick().await.unwrap();
    assert_eq!(w.fleet("web").await.unwrap().spec.capacity, 3);
    assert_eq!(w.live_ids("web").await.unwrap().len(), 3);
    assert_eq!(entries_of(&w, &name, &scale).await.len(), mine.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_intent_that_no_longer_applies_is_recorded_as_ignored() {
    let (w, _) = fleet_of_two().await;
    let name = FleetName::parse("web").unwrap();
    // Scale in by two, then by one, both queued (every race lost). Applied in event order, the
    // second would take the capacity below zero when its turn comes.
    let first = scale_by(&w, &name, -2);
    w.advance(chrono::Duration::seconds(1));
    let second = scale_by(&w, &name, -1);
    for event in [&first, &second] {
        let report = contended(&w, 100).handle(event, None).await.unwrap();
        assert_eq!(report.fleets[0].outcome, FleetOutcome::Queued);
    }
    assert_eq!(w.fleet("web").await.unwrap().inbox.len(), 2);

    let fleet = w.settle("web", true, 10).await.unwrap();
    assert!(fleet.inbox.is_empty());
    assert_eq!(fleet.spec.capacity, 0);
    assert_eq!(w.live_ids("web").await.unwrap().len(), 0);
    let applied = entries_of(&w, &name, &first).await;
    assert!(
        matches!(
            applied[0].changes.first(),
            Some(Change::CapacityChanged { from: 2, to: 0 })
        ),
        "{applied:#?}"
    );
    let ignored = entries_of(&w, &name, &second).await;
    assert_eq!(ignored.len(), 1, "{ignored:#?}");
    assert!(
        matches!(ignored[0].changes.first(), Some(Change::Ignored { reason }) if reason.contains("outside")),
        "{ignored:#?}"
    );
}

/// The notification a replacement's outcome commit records (`InstanceReplaced`), as the history
/// says it is published: detail-type and detail, `notification_id` included.
async fn replaced_notification(w: &World) -> (String, serde_json::Value) {
    let name = FleetName::parse("web").unwrap();
    let history = w.store.history(&name, 1000).await.unwrap();
    let entry = history
        .iter()
        .rev()
        .find(|e| {
            e.changes
                .iter()
                .any(|c| matches!(c, Change::InstanceReplaced { .. }))
        })
        .expect("the replacement was committed");
    let incarnation = w.fleet("web").await.unwrap().incarnation();
    let mut notes = events::notifications(&name, &incarnation, entry.version, &entry.changes);
    assert_eq!(notes.len(), 1, "{notes:?}");
    let note = notes.remove(0);
    (note.detail_type, note.detail)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_committed_before_a_crash_is_published_by_the_next_reconcile_with_its_id() {
    let (w, victim) = fleet_of_two().await;
    let env = health_failed(&w, &victim);
    // Calls 1-6 read the instance and its fleet, commit the decision, launch, re-validate and
    // terminate; call 7 commits the outcomes, `InstanceReplaced` among them. The invocation dies
    // right after it, before PutEvents.
    w.proxy.reset_calls();
    assert!(w.deliver_crashing(&env, 7).await);
    let calls = w.proxy.call_log();
    assert_eq!(calls.len(), 7, "{calls:?}");
    assert_eq!(calls[6], "dynamodb:TransactWriteItems", "{calls:?}");
    let expected = replaced_notification(&w).await;
    assert_eq!(expected.1["instance"], victim.as_str());
    assert!(w.notifications().await.unwrap().is_empty(), "not published");

    // The next scheduled reconcile publishes what the crash left, with the id of its commit.
    w.advance(LEASE);
    w.tick().await.unwrap();
    assert_eq!(w.notifications().await.unwrap(), vec![expected.clone()]);
    // Once: it is not left for the next one.
    w.advance(LEASE);
    w.tick().await.unwrap();
    assert_eq!(w.notifications().await.unwrap(), vec![expected]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_publishing_publishes_again_with_the_same_id() {
    let (w, victim) = fleet_of_two().await;
    let env = health_failed(&w, &victim);
    // Call 8 is the PutEvents of `InstanceReplaced`; the invocation dies right after it, before
    // it could tell the notification was sent.
    w.proxy.reset_calls();
    w.deliver_crashing(&env, 8).await;
    let calls = w.proxy.call_log();
    assert_eq!(
        calls.get(7).map(String::as_str),
        Some("events:PutEvents"),
        "{calls:?}"
    );
    let expected = replaced_notification(&w).await;
    assert_eq!(w.notifications().await.unwrap(), vec![expected.clone()]);

    // At least once: the next reconcile publishes it again, and a consumer recognises the copy
    // by its id.
    w.advance(LEASE);
    w.tick().await.unwrap();
    let got = w.notifications().await.unwrap();
    assert_eq!(got, vec![expected.clone(), expected.clone()]);
    w.advance(LEASE);
    w.tick().await.unwrap();
    assert_eq!(
        w.notifications().await.unwrap().len(),
        2,
        "published, then no more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_whose_publish_failed_waits_for_the_next_pass() {
    let (w, victim) = fleet_of_two().await;
    // Every PutEvents is throttled, through the SDK's retries.
    let mut throttled = FaultConfig::default();
    throttled.rates.insert("events", 1.0);
    throttled.only = vec!["PutEvents".into()];
    throttled.kinds = vec![FaultKind::Throttle];
    w.proxy.set_faults(throttled);
    let report = w.invoke(&health_failed(&w, &victim), None).await.unwrap();
    w.proxy.clear_faults();
    assert_eq!(report.fleets[0].terminated.len(), 1, "{report:#?}");
    let expected = replaced_notification(&w).await;
    assert!(w.notifications().await.unwrap().is_empty());

    // A pass right away leaves it to the invocation that committed it (which may still be
    // publishing); one after the grace publishes it.
    w.tick().await.unwrap();
    assert!(w.notifications().await.unwrap().is_empty());
    w.advance(LEASE);
    w.tick().await.unwrap();
    assert_eq!(w.notifications().await.unwrap(), vec![expected]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_fleet_is_looked_at_quickly_and_what_changes_outside_is_still_repaired() {
    let (w, victim) = fleet_of_two().await;
    // The first scheduled pass over the settled fleet decides nothing and records it quiet.
    w.tick().await.unwrap();
    let version = w.fleet("web").await.unwrap().version;

    // The next is a quick look: the fleet index, the record with its outbox, the inbox's first
    // key, the instances; no status checks, no instance items, no write.
    w.proxy.reset_calls();
    w.tick().await.unwrap();
    assert_eq!(
        w.proxy.call_log(),
        [
            "dynamodb:Query",
            "dynamodb:Query",
            "dynamodb:Query",
            "ec2:DescribeInstances"
        ]
    );
    assert_eq!(w.fleet("web").await.unwrap().version, version);

    // An instance terminated outside phoenix changes what EC2 reports: the next scheduled pass
    // is a full one (it records what it sees), and the fleet replaces it.
    w.ec2
        .terminate_instances()
        .instance_ids(&victim)
        .send()
        .await
        .unwrap();
    w.proxy.reset_calls();
    w.tick().await.unwrap();
    let calls = w.proxy.call_log();
    assert!(
        calls.iter().any(|c| c == "dynamodb:TransactWriteItems"),
        "a full pass, which records the termination: {calls:?}"
    );
    let mut f = w.fleet("web").await.unwrap();
    for _ in 0..20 {
        if f.live_instances().all(|i| i.id.as_str() != victim) {
            break;
        }
        w.advance(chrono::Duration::minutes(1));
        w.tick().await.unwrap();
        f = w.fleet("web").await.unwrap();
    }
    assert!(
        f.live_instances().all(|i| i.id.as_str() != victim),
        "{f:#?}"
    );
    let f = w.settle("web", true, 20).await.unwrap();
    assert_eq!(f.live_instances().count(), 2);

    // Quiet again; an hour on, the quiet has run out: a full pass (the instance items read,
    // status checks of none), which finds nothing to do and records the fleet quiet once more.
    w.tick().await.unwrap();
    w.proxy.reset_calls();
    w.tick().await.unwrap();
    assert_eq!(w.proxy.call_log().len(), 4, "{:?}", w.proxy.call_log());
    w.advance(chrono::Duration::minutes(61));
    w.proxy.reset_calls();
    w.tick().await.unwrap();
    let calls = w.proxy.call_log();
    assert_eq!(
        calls,
        [
            "dynamodb:Query",
            "dynamodb:Query",
            "dynamodb:Query",
            "ec2:DescribeInstances",
            "dynamodb:TransactWriteItems"
        ],
        "a full pass: the fleet index, the record, the instances, EC2, the quiet written"
    );
}

/// A fleet of 12 on the first image whose controller runs under an EC2 call budget of
/// `per_second` (none: no budget), and the peak of EC2 requests in one second while two health
/// events arrive at once (as many as the breaker lets be repaired at once) and the fleet then
/// settles; whether every event was handled.
async fn storm_of_failures(per_second: Option<u32>) -> (usize, bool, Fleet) {
    let intake = phoenix_protocol::Intake {
        ec2_calls_per_second: per_second,
        ..Default::default()
    };
    let w = World::start_custom(
        7,
        1,
        false,
        phoenix_tests::chaos::ControllerClients::new,
        intake,
    )
    .await
    .unwrap();
    let a = w.images[0].clone();
    w.create_fleet("web", &a, 12, 2).await.unwrap();
    let victims: Vec<String> = w.live_ids("web").await.unwrap()[..2].to_vec();
    w.proxy.reset_calls();
    let w = Arc::new(w);
    let mut storm = tokio::task::JoinSet::new();
    for victim in victims {
        let w = w.clone();
        storm.spawn(async move {
            let env = health_failed(&w, &victim);
            w.deliver(&env).await
        });
    }
    let mut handled = true;
    while let Some(done) = storm.join_next().await {
        handled &= done.unwrap();
    }
    let f = w.settle("web", true, 40).await.unwrap();
    (w.proxy.ec2_peak_per_second(), handled, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_failures_stays_within_the_ec2_call_budget_and_every_event_is_handled() {
    let (peak, handled, f) = storm_of_failures(Some(2)).await;
    assert!(handled, "every health event handled, none dead-lettered");
    assert!(
        peak <= 2,
        "{peak} EC2 requests in one second, over the budget of 2"
    );
    assert_eq!(f.live_instances().count(), 12);
    assert!(phoenix_tests::converged(&f));
    // The control: the same storm without a budget sends more than 2 in some second.
    let (peak, handled, _) = storm_of_failures(None).await;
    assert!(handled);
    assert!(
        peak > 2,
        "without a budget the storm peaked at only {peak} a second"
    );
}

/// A clock that moves only when slept on.
#[derive(Clone)]
struct ManualTime(Arc<std::sync::Mutex<chrono::DateTime<chrono::Utc>>>);

impl Time for ManualTime {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        *self.0.lock().unwrap()
    }
    async fn sleep(&self, d: Duration) {
        *self.0.lock().unwrap() += chrono::Duration::from_std(d).unwrap();
    }
    fn jitter(&self, _n: u64) -> u64 {
        0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_budget_admits_its_share_a_second_and_backs_off_after_a_throttle() {
    use phoenix_protocol::budget::{Admit, Budget};
    let emulator = Emulator::start().unwrap();
    let sdk = phoenix_aws::config::emulator_sdk_config(&emulator.endpoint).await;
    let table = DynamoTable::new(aws_sdk_dynamodb::Client::new(&sdk), "phoenix");
    table.create_table().await.unwrap();
    let start = chrono::DateTime::from_timestamp(1_900_000_000, 0).unwrap();
    let clock = ManualTime(Arc::new(std::sync::Mutex::new(start)));
    let budget = Budget::new(table.clone(), clock.clone(), "test".into(), 4);
    let second = |c: &ManualTime| c.now().timestamp() - start.timestamp();

    // Four a second, without waiting; the fifth waits for the next second.
    for _ in 0..4 {
        budget.admit(1, Deadline::NONE).await.unwrap();
    }
    assert_eq!(second(&clock), 0);
    budget.admit(1, Deadline::NONE).await.unwrap();
    assert_eq!(second(&clock), 1);

    // EC2 throttled a request: the next ten seconds are half spent for everyone.
    budget.throttled().await;
    clock.sleep(Duration::from_secs(1)).await;
    budget.admit(1, Deadline::NONE).await.unwrap();
    budget.admit(1, Deadline::NONE).await.unwrap();
    assert_eq!(second(&clock), 2);
    budget.admit(1, Deadline::NONE).await.unwrap();
    assert_eq!(second(&clock), 3, "half of second 2 was spent in advance");

    // Another process's view: the counters are the table's, so a second budget on the same
    // account finds second 3 as full as this one left it (the back-off's two and one more):
    // room for one, then the next second.
    let other = Budget::new(table.clone(), clock.clone(), "test".into(), 4);
    other.admit(1, Deadline::NONE).await.unwrap();
    assert_eq!(second(&clock), 3);
    other.admit(1, Deadline::NONE).await.unwrap();
    assert_eq!(second(&clock), 4);

    // A budget spent for longer than an invocation may wait: refused, nothing sent.
    let deadline = Deadline::at(clock.now() + chrono::Duration::seconds(11));
    let mut refused = None;
    for _ in 0..10 {
        if let Err(e) = other.admit(1, deadline).await {
            refused = Some(e);
            break;
        }
    }
    assert!(
        matches!(
            refused,
            Some(Error::Throttled { .. }) | Some(Error::Deadline(_))
        ),
        "{refused:?}"
    );
}
