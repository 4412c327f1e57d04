//! The four Lambda binaries, run as processes behind a local Lambda Runtime API, handling real
//! EventBridge envelopes against the emulator: what they answer, what they do to EC2 and the fleet
//! state, how they reject bad events (and keep serving), and what they log.

#![allow(clippy::unwrap_used)]

use phoenix_core::model::TAG_FLEET;
use phoenix_tests::runtime_api::{FunctionProcess, Invocation, RuntimeApi};
use phoenix_tests::{envelope, workspace_bin, FleetFile, Harness};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Long enough for a cold start plus a few emulator round trips on a loaded machine.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_TIMEOUT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------------ fixtures

/// A fresh emulator with fleet `web` (2 instances of image A) applied and converged.
async fn web_fleet() -> Harness {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("app-a").await;
    h.apply(&FleetFile::new("web", &a, 2).surge("1"));
    h.settle("web").await;
    h
}

/// One function binary running behind its own runtime API, pointed at the harness's emulator.
struct Function {
    api: RuntimeApi,
    process: FunctionProcess,
}

impl Function {
    async fn start(h: &Harness, bin: &str) -> Function {
        let api = RuntimeApi::start().await.unwrap();
        let process = api.spawn_function(&workspace_bin(bin), &h.env()).unwrap();
        Function { api, process }
    }

    async fn invoke(&self, payload: Value) -> Invocation {
        match self.api.invoke(payload, INVOKE_TIMEOUT).await {
            Ok(invocation) => invocation,
            Err(e) => panic!(
                "{}: {e:#}\nexit status: {:?}\nstderr:\n{}",
                self.process.name(),
                self.process.exit_status(),
                self.process.stderr()
            ),
        }
    }

    /// Invokes and expects a successful response (the controller's report).
    async fn ok(&self, payload: Value) -> Value {
        self.invoke(payload).await.response().unwrap()
    }

    /// Invokes and expects a `phoenix.Rejected` error; returns its message.
    async fn rejected(&self, payload: Value) -> String {
        let (error_type, message) = self.invoke(payload).await.error().unwrap();
        assert_eq!(error_type, "phoenix.Rejected", "{message}");
        message
    }
}

/// A phoenix event, stamped now, with an id unique to this test run.
fn event(detail_type: &str, detail: Value) -> (String, Value) {
    static N: AtomicU64 = AtomicU64::new(0);
    let id = format!(
        "evt-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let now = chrono::Utc::now().to_rfc3339();
    let env = envelope(&id, detail_type, detail, &now);
    (id, env)
}

/// What an EventBridge schedule delivers to the reconcile function.
fn scheduled_event() -> (String, Value) {
    let (id, mut env) = event("Scheduled Event", json!({}));
    env["source"] = json!("aws.events");
    env["resources"] = json!(["arn:aws:events:us-east-1:123456789012:rule/phoenix-reconcile"]);
    (id, env)
}

// ---------------------------------------------------------------------------------- assertions

/// The report of the one fleet an event touched.
fn only_fleet(report: &Value) -> &Value {
    let fleets = report["fleets"].as_array().unwrap();
    assert_eq!(fleets.len(), 1, "{report:#}");
    &fleets[0]
}

/// The kinds of the changes in a fleet report (`launch_decided`, `launched`, ...).
fn change_kinds(fleet: &Value) -> Vec<&str> {
    fleet["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["change"].as_str().unwrap())
        .collect()
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// A field of the span a JSON log line was written in: the current `span`, or any of `spans`.
fn span_field<'a>(line: &'a Value, field: &str) -> Option<&'a Value> {
    let current = line.get("span").into_iter();
    let list = line
        .get("spans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    current.chain(list).find_map(|span| span.get(field))
}

/// Every stdout line is a JSON object; the event's `handled` line, and every other line of the
/// same invocation, carries the event id as the span field `event_id`.
async fn assert_logged_as_handled(f: &Function, event_id: &str) {
    let handled = f
        .process
        .wait_for_line(LOG_TIMEOUT, |l| {
            l.contains("\"handled\"") && l.contains(event_id)
        })
        .await
        .unwrap();
    let handled: Value = serde_json::from_str(&handled).unwrap();
    assert_eq!(handled["fields"]["message"], "handled", "{handled}");
    assert_eq!(
        span_field(&handled, "event_id"),
        Some(&json!(event_id)),
        "{handled}"
    );
    let request_id = span_field(&handled, "requestId").unwrap();
    let lines: Vec<Value> = f
        .process
        .stdout_lines()
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("{} logged a non-JSON line ({e}): {line}", f.process.name())
            })
        })
        .collect();
    assert!(lines.iter().all(Value::is_object));
    for line in lines
        .iter()
        .filter(|l| span_field(l, "requestId") == Some(request_id))
    {
        assert_eq!(
            span_field(line, "event_id"),
            Some(&json!(event_id)),
            "{line}"
        );
    }
}

// --------------------------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_function_starts_replacing_the_fleet_on_image_ready() {
    let h = web_fleet().await;
    let b = h.register_image("app-b").await;
    let f = Function::start(&h, "phoenix-image").await;

    let (id, ev) = event("ImageReady", json!({"fleet": "web", "image": b}));
    let report = f.ok(ev).await;

    assert_eq!(report["event_id"], id.as_str());
    let web = only_fleet(&report);
    assert_eq!(web["fleet"], "web");
    assert_eq!(web["outcome"], "changed", "{report:#}");
    let kinds = change_kinds(web);
    assert!(
        kinds.contains(&"launch_decided") || kinds.contains(&"launched"),
        "{kinds:?}"
    );
    let on_b: Vec<_> = h
        .fleet_instances("web")
        .await
        .into_iter()
        .filter(|i| i.image == b.as_str())
        .collect();
    assert!(!on_b.is_empty(), "no live instance of {b}");
    assert!(on_b
        .iter()
        .all(|i| i.tags.get(TAG_FLEET).map(String::as_str) == Some("web")));
    assert_logged_as_handled(&f, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_function_replaces_a_failed_instance() {
    let h = web_fleet().await;
    let before = h.fleet_instances("web").await;
    let failed = before[0].id.clone();
    let f = Function::start(&h, "phoenix-health").await;

    let (id, ev) = event(
        "HealthCheckFailed",
        json!({"instance": failed, "reason": "http 503"}),
    );
    let report = f.ok(ev).await;

    let web = only_fleet(&report);
    assert_eq!(web["outcome"], "changed", "{report:#}");
    assert_eq!(ids(&web["terminated"]), [failed.as_str()], "{report:#}");
    assert_eq!(ids(&web["launched"]).len(), 1, "{report:#}");
    let gone = h
        .instances()
        .await
        .into_iter()
        .find(|i| i.id == failed)
        .unwrap();
    assert!(!gone.is_alive(), "{gone:?}");
    let live = h.fleet_instances("web").await;
    assert_eq!(live.len(), 2, "{live:#?}");
    assert!(live.iter().all(|i| i.id != failed));
    assert_logged_as_handled(&f, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_function_scales_to_the_desired_capacity() {
    let h = web_fleet().await;
    let f = Function::start(&h, "phoenix-scale").await;

    let (id, ev) = event("ScaleRequested", json!({"fleet": "web", "desired": 3}));
    let report = f.ok(ev).await;

    let web = only_fleet(&report);
    assert_eq!(web["outcome"], "changed", "{report:#}");
    assert_eq!(ids(&web["launched"]).len(), 1, "{report:#}");
    assert_eq!(h.fleet_instances("web").await.len(), 3);
    assert_eq!(h.fleet("web").await.spec.capacity, 3);
    assert_logged_as_handled(&f, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_function_handles_the_scheduled_event() {
    let h = web_fleet().await;
    let version = h.fleet("web").await.version;
    let f = Function::start(&h, "phoenix-reconcile").await;

    let (id, ev) = scheduled_event();
    let report = f.ok(ev).await;

    assert_eq!(report["detail_type"], "Scheduled Event");
    let web = only_fleet(&report);
    assert_eq!(web["fleet"], "web");
    assert_eq!(web["outcome"], "unchanged", "a converged fleet: {report:#}");
    assert_eq!(h.fleet("web").await.version, version);
    assert_eq!(h.fleet_instances("web").await.len(), 2);
    assert_logged_as_handled(&f, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_function_rejects_bad_events_and_keeps_serving() {
    let h = web_fleet().await;
    let b = h.register_image("app-b").await;
    let version = h.fleet("web").await.version;
    let instances = h.instances().await;
    let f = Function::start(&h, "phoenix-image").await;

    let cases = [
        (json!({"hello": 1}), "malformed EventBridge event"),
        (
            event("HealthCheckFailed", json!({"instance": instances[0].id})).1,
            "does not handle HealthCheckFailed",
        ),
        (
            event("ImageReady", json!({"fleet": "nope", "image": b})).1,
            "unknown fleet nope",
        ),
    ];
    for (payload, expected) in cases {
        let message = f.rejected(payload).await;
        assert!(
            message.contains(expected),
            "{message:?} should name {expected:?}"
        );
        assert_eq!(h.fleet("web").await.version, version, "after {message}");
        assert_eq!(h.instances().await, instances, "after {message}");
        assert!(
            f.process.exit_status().is_none(),
            "it exited after {message}"
        );
    }

    let (id, ev) = event("ImageReady", json!({"fleet": "web", "image": b}));
    let report = f.ok(ev).await;
    assert_eq!(only_fleet(&report)["outcome"], "changed", "{report:#}");
    assert_logged_as_handled(&f, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_rejects_malformed_misrouted_and_unknown_events() {
    let h = Harness::start().await.unwrap();
    let cases = [
        (
            "phoenix-image",
            event("ScaleRequested", json!({"fleet": "web", "desired": 3})),
            "the image function does not handle ScaleRequested",
        ),
        (
            "phoenix-health",
            event("HealthCheckFailed", json!({"instance": "i-12345678"})),
            "instance i-12345678 is not managed by any phoenix fleet",
        ),
        (
            "phoenix-scale",
            event("ScaleRequested", json!({"fleet": "ghost", "desired": 3})),
            "unknown fleet ghost",
        ),
        (
            "phoenix-reconcile",
            event("ReconcileRequested", json!({"fleet": "ghost"})),
            "unknown fleet ghost",
        ),
    ];
    for (bin, (_, bad_event), expected) in cases {
        let f = Function::start(&h, bin).await;
        for payload in [json!({"hello": 1}), json!([1, 2]), json!("ImageReady")] {
            let message = f.rejected(payload.clone()).await;
            assert!(
                message.contains("malformed EventBridge event"),
                "{bin} on {payload}: {message}"
            );
        }
        let message = f.rejected(bad_event).await;
        assert!(message.contains(expected), "{bin}: {message:?}");
        assert!(f.process.exit_status().is_none(), "{bin} exited");
    }
    assert!(h.instances().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_api_records_the_first_poll_and_times_out_clearly() {
    let api = RuntimeApi::start().await.unwrap();
    let start = Instant::now();
    let err = api
        .invoke(json!({}), Duration::from_millis(200))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("timed out") && err.contains("never polled"),
        "{err}"
    );
    assert_eq!(api.first_poll_after(start), None);

    // A function with no emulator behind it still starts polling: init needs no AWS call.
    let f = api
        .spawn_function(
            &workspace_bin("phoenix-reconcile"),
            &[("AWS_REGION", "us-east-1")],
        )
        .unwrap();
    let first = api
        .wait_first_poll_after(f.spawned_at(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(first >= f.spawned_at());
    assert!(api.polls() >= 1);
}
