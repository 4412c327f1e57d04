//! Operating and troubleshooting through the CLI, on the emulator: a past moment rebuilt from the
//! history, the causal chain of an instance, the timeline picture, following a rollout and its
//! exit codes, deleting a fleet, and clear errors for what does not exist or does not parse.

#![allow(clippy::unwrap_used)]

use phoenix_core::events::{ControlAction, Intent};
use phoenix_core::FleetName;
use phoenix_tests::{FleetFile, Harness};
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("phoenix-operate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The demo's story: fleet `web` of 4 on A (surge 2), ImageReady B, then one instance fails its
/// health check. Returns the harness, the images, the victim and the HealthCheckFailed event id.
async fn demo() -> (Harness, String, String, String, String) {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    h.apply(&FleetFile::new("web", &a, 4).surge("2"));
    h.settle("web").await;
    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        b.as_str(),
    ]);
    h.settle("web").await;
    let victim = h.fleet_instances("web").await[0].id.clone();
    let published = json(&h.phoenix_ok(&[
        "publish",
        "health-failed",
        "--instance",
        &victim,
        "--reason",
        "GET /health returned 503",
        "-o",
        "json",
    ]));
    let event = published["event_id"].as_str().unwrap().to_string();
    h.settle("web").await;
    (h, a.to_string(), b.to_string(), victim, event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_rebuilds_a_moment_explain_names_the_cause_and_the_timeline_is_drawn() {
    let (h, a, b, victim, event) = Box::pin(demo()).await;
    // The rest only runs the CLI: a plain function keeps this future (and its stack) small.
    check_history_explain_and_timeline(&h, &a, &b, &victim, &event);
}

fn check_history_explain_and_timeline(h: &Harness, a: &str, b: &str, victim: &str, event: &str) {
    // The decisions, and the moment wave 2 of the rollout started.
    let entries = json(&h.phoenix_ok(&["history", "web", "-o", "json"]));
    let entries = entries.as_array().unwrap();
    let wave2 = entries
        .iter()
        .find(|e| {
            e["changes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["change"] == "wave_started" && c["wave"] == 2)
        })
        .unwrap();
    let mid = wave2["at"].as_str().unwrap();

    // --at: a mixed fleet, the rollout in its second wave, the budget in use.
    let snap = json(&h.phoenix_ok(&["history", "web", "--at", mid, "-o", "json"]));
    let images: BTreeSet<&str> = snap["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["image"].as_str().unwrap())
        .collect();
    assert_eq!(images, BTreeSet::from([a, b]), "{snap:#}");
    assert_eq!(snap["rollout"]["wave"], 2);
    assert_eq!(snap["rollout"]["active"], true);
    assert_eq!(snap["budget"]["max_total"], 6);
    assert_eq!(snap["budget"]["min_healthy"], 4);
    assert!(snap["budget"]["in_flight"].as_u64().unwrap() <= 6);
    assert_eq!(snap["version"], wave2["version"]);
    for i in snap["instances"].as_array().unwrap() {
        assert!(i["state"].is_string() && i["health"].is_string(), "{i}");
    }
    let table = h.phoenix_ok(&["history", "web", "--at", mid]);
    assert!(
        table.contains("wave 2") && table.contains(a) && table.contains(b),
        "{table}"
    );
    // Now (a span ago of 0s): the 4 instances of today.
    let now = json(&h.phoenix_ok(&["history", "web", "--at", "0s", "-o", "json"]));
    assert_eq!(now["instances"].as_array().unwrap().len(), 4);

    // --since/--until: exactly the entries recorded in between.
    let first = entries[1]["at"].as_str().unwrap();
    let between = json(&h.phoenix_ok(&[
        "history", "web", "--since", first, "--until", mid, "-o", "json",
    ]));
    let versions: Vec<u64> = between
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = entries
        .iter()
        .filter(|e| {
            let v = e["version"].as_u64().unwrap();
            v >= entries[1]["version"].as_u64().unwrap() && v <= wave2["version"].as_u64().unwrap()
        })
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, expected);

    // explain: launched by the rollout's ImageReady, terminated because of the health event.
    let ex = json(&h.phoenix_ok(&["explain", victim, "-o", "json"]));
    assert_eq!(ex["fleet"], "web");
    assert_eq!(ex["instance"]["id"], victim);
    assert_eq!(ex["instance"]["image"], b);
    let links = ex["links"].as_array().unwrap();
    let kinds: Vec<&str> = links.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"launch_decided"), "{kinds:?}");
    for k in [
        "launched",
        "health_failed",
        "termination_decided",
        "terminated",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    // Launched by the rollout to B: wave 1 by the ImageReady event itself, wave 2 by the
    // reconcile that saw wave 1 healthy; either way the origin names the ImageReady event.
    assert!(
        links[0]["change"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("rollout 1"),
        "{:#}",
        links[0]
    );
    assert_eq!(ex["rollout"]["rollout"], 1);
    assert_eq!(ex["rollout"]["to"], b);
    assert_eq!(ex["rollout"]["started_by"]["detail_type"], "ImageReady");
    let failed = links.iter().find(|l| l["kind"] == "health_failed").unwrap();
    assert_eq!(failed["cause"]["event_id"], event);
    assert_eq!(failed["cause"]["detail_type"], "HealthCheckFailed");
    let decided = links
        .iter()
        .find(|l| l["kind"] == "termination_decided")
        .unwrap();
    assert_eq!(decided["cause"]["event_id"], event);
    assert_eq!(decided["decision"]["budget"]["max_total"], 6);
    assert_eq!(decided["decision"]["policy"]["max_surge"], 2);
    // The AWS calls that launched and terminated it, by request id (what AWS support asks for).
    for kind in ["launched", "terminated"] {
        let link = links.iter().find(|l| l["kind"] == kind).unwrap();
        let ids = link["change"]["request_ids"].as_array().unwrap();
        assert_eq!(ids.len(), 1, "{link:#}");
        assert!(!ids[0].as_str().unwrap().is_empty());
    }
    let table = h.phoenix_ok(&["explain", victim]);
    assert!(table.contains(event), "{table}");
    assert!(table.contains("GET /health returned 503"), "{table}");
    let terminated = links.iter().find(|l| l["kind"] == "terminated").unwrap();
    let request = terminated["change"]["request_ids"][0].as_str().unwrap();
    assert!(
        table.contains(&format!("(AWS request {request})")),
        "{table}"
    );

    // The timeline: 4 on A, 4 on B, 1 replacement; one health failure marked.
    let svg = tmp("web.svg");
    let html = tmp("web.html");
    let written = json(&h.phoenix_ok(&[
        "history",
        "web",
        "--svg",
        svg.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
        "-o",
        "json",
    ]));
    assert_eq!(written["lanes"], 9, "{written:#}");
    assert_eq!(written["images"], serde_json::json!([a, b]));
    assert_eq!(written["markers"]["health_failed"], 1);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"));
    assert_eq!(text.matches(r#"<g class="lane""#).count(), 9);
    assert!(text.contains(&format!(r#"data-instance="{victim}""#)));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains(event));

    // The other JSON outputs parse and carry what they document.
    let list = json(&h.phoenix_ok(&["fleet", "list", "-o", "json"]));
    assert_eq!(list[0]["fleet"], "web");
    assert_eq!(list[0]["converged"], true);
    let show = json(&h.phoenix_ok(&["fleet", "show", "web", "-o", "json"]));
    assert_eq!(show["budget"]["live"], 4);
    assert_eq!(show["spec"]["capacity"], 4);
    let status = json(&h.phoenix_ok(&["status", "web", "-o", "json"]));
    assert_eq!(status["instances"].as_array().unwrap().len(), 4);
    assert!(h.phoenix_ok(&["fleet", "show", "web"]).contains("budget"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_delete_refuses_while_instances_live_and_drains_them_when_asked() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    h.apply(&FleetFile::new("web", &a, 3));
    h.settle("web").await;
    let ids: BTreeSet<String> = h
        .fleet_instances("web")
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();

    let refused = h.phoenix(&["fleet", "delete", "web"]);
    assert_eq!(refused.status.code(), Some(1));
    let why = stderr(&refused);
    assert!(
        why.contains("3 live instances") && why.contains("--terminate-instances"),
        "{why}"
    );
    assert_eq!(
        h.fleet_instances("web").await.len(),
        3,
        "nothing was touched"
    );

    let done = json(&h.phoenix_ok(&[
        "fleet",
        "delete",
        "web",
        "--terminate-instances",
        "-o",
        "json",
    ]));
    let terminated: BTreeSet<String> = done["terminated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(terminated, ids);
    assert!(done["items"].as_u64().unwrap() > 3);
    assert!(h.fleet_instances("web").await.is_empty());
    for i in h.instances().await {
        assert!(!i.is_alive(), "{} is {}", i.id, i.state);
    }
    assert_eq!(
        json(&h.phoenix_ok(&["fleet", "list", "-o", "json"])),
        serde_json::json!([])
    );
    for args in [
        &["status", "web"][..],
        &["history", "web"],
        &["fleet", "delete", "web"],
        &["fleet", "show", "web"],
    ] {
        let o = h.phoenix(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&o).contains("unknown fleet web"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let o = h.phoenix(&["explain", ids.first().unwrap()]);
    assert!(
        stderr(&o).contains("not managed by any phoenix fleet"),
        "{}",
        stderr(&o)
    );

    // Nothing is left behind: the same name starts afresh.
    h.apply(&FleetFile::new("web", &a, 2));
    let f = h.settle("web").await;
    assert_eq!(f.live_instances().count(), 2);
    let history = json(&h.phoenix_ok(&["history", "web", "-o", "json"]));
    assert_eq!(history[0]["version"], 1, "a new history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_what_and_where() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let file = tmp("bad.yaml");
    let cases = [
        (
            format!("name: web\nimage: {a}\ncapacty: 3\ninstance_type: t3.micro\n"),
            vec!["capacty", "line 3"],
        ),
        (
            format!("name: web\nimage: {a}\ncapacity: -3\ninstance_type: t3.micro\n"),
            vec!["capacity", "negative", "line 3"],
        ),
        (
            format!("name: web\nimage: {a}\ncapacity: 3\ninstance_type: t3.micro\npolicy:\n  max_surge: lots\n"),
            vec!["max_surge", "line 6"],
        ),
        (
            "name: web\nimage: ubuntu\ncapacity: 3\ninstance_type: t3.micro\n".to_string(),
            vec!["image", "not an AMI id", "line 2"],
        ),
        (
            format!("name: web\nimage: {a}\ninstance_type: t3.micro\n"),
            vec!["missing field `capacity`"],
        ),
    ];
    for (yaml, expected) in cases {
        std::fs::write(&file, &yaml).unwrap();
        let o = h.phoenix(&["fleet", "apply", file.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{yaml}");
        let err = stderr(&o);
        for e in expected {
            assert!(err.contains(e), "{e:?} not in {err:?} for\n{yaml}");
        }
        assert!(err.contains("bad.yaml"), "the file is named: {err}");
    }
    assert!(h.store().list_fleets_now().await.is_empty());

    let o = h.phoenix(&["status", "nope"]);
    assert!(stderr(&o).contains("unknown fleet nope"), "{}", stderr(&o));
    let o = h.phoenix(&["history", "nope", "--at", "1m"]);
    assert!(stderr(&o).contains("unknown fleet nope"), "{}", stderr(&o));
    let o = h.phoenix(&["explain", "i-0123456789abcdef0"]);
    assert!(
        stderr(&o).contains("i-0123456789abcdef0 is not managed by any phoenix fleet"),
        "{}",
        stderr(&o)
    );
    // A wrong command line is a usage error (64), never mistaken for a failed rollout (2).
    let o = h.phoenix(&["history", "web", "--at", "yesterday"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("RFC 3339"), "{}", stderr(&o));
    assert_eq!(
        h.phoenix(&["rollout", "wiat", "web"]).status.code(),
        Some(64)
    );
}

/// Runs the dispatcher (deliveries and the scheduled reconcile) until dropped, as the deployed
/// functions would, while a CLI command blocks the test.
struct Background {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Background {
    fn dispatch(h: &Arc<Harness>) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let (h, flag) = (h.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !flag.load(Ordering::SeqCst) {
                let _ = h.dispatcher.poll_once(0).await;
                let _ = h.dispatcher.tick().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Background {
            stop,
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

async fn cli(h: &Arc<Harness>, args: &[&str]) -> Output {
    let h = h.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        h.phoenix(&args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_watch_follows_the_waves_and_exit_codes_say_how_a_rollout_ended() {
    let h = Arc::new(Harness::start().await.unwrap());
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    let c = h.register_image("web-c").await;
    h.apply(&FleetFile::new("web", &a, 4).surge("2"));
    h.settle("web").await;

    // watch, plain lines (stdout is not a terminal): the waves, then success.
    let id = json(&h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        b.as_str(),
        "-o",
        "json",
    ]))["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let bg = Background::dispatch(&h);
    let o = cli(
        &h,
        &[
            "rollout",
            "watch",
            "web",
            "--event",
            &id,
            "--timeout",
            "120",
            "--interval",
            "0.2",
        ],
    )
    .await;
    bg.stop().await;
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("rollout 1 wave 1 started"), "{out}");
    assert!(out.contains("rollout 1 wave 2 started"), "{out}");
    assert!(out.lines().last().unwrap().contains("converged"), "{out}");
    assert!(stderr(&o).contains("succeeded"), "{}", stderr(&o));
    assert!(
        !out.contains('\u{1b}'),
        "no terminal control codes when not on a terminal"
    );

    // The same, as JSON lines.
    let o = h.phoenix(&["rollout", "watch", "web", "-o", "json"]);
    assert!(o.status.success());
    for line in stdout(&o).lines() {
        let p = json(line);
        assert_eq!(p["fleet"], "web");
        assert!(p["budget"]["max_total"].is_number());
    }

    // A canary that fails its health check rolls the rollout back: exit 2, saying why.
    h.apply(&FleetFile::new("web", &b, 4).surge("1"));
    h.settle("web").await;
    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        c.as_str(),
    ]);
    h.drain().await;
    let canary = h
        .fleet_instances("web")
        .await
        .into_iter()
        .find(|i| i.image == c.as_str())
        .unwrap();
    let failed = json(&h.phoenix_ok(&[
        "publish",
        "health-failed",
        "--instance",
        &canary.id,
        "--reason",
        "500 on /health",
        "-o",
        "json",
    ]))["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let bg = Background::dispatch(&h);
    let o = cli(
        &h,
        &[
            "rollout",
            "wait",
            "web",
            "--event",
            &failed,
            "--timeout",
            "120",
        ],
    )
    .await;
    bg.stop().await;
    assert_eq!(o.status.code(), Some(2), "{}\n{}", stdout(&o), stderr(&o));
    let why = stderr(&o);
    assert!(
        why.contains("rolled back") && why.contains("500 on /health"),
        "{why}"
    );
    let o = h.phoenix(&["rollout", "watch", "web"]);
    assert_eq!(o.status.code(), Some(2), "watch agrees: {}", stderr(&o));

    // The timeline marks the rollback.
    let svg = tmp("rollback.svg");
    let written = json(&h.phoenix_ok(&[
        "history",
        "web",
        "--svg",
        svg.to_str().unwrap(),
        "-o",
        "json",
    ]));
    assert!(
        written["markers"]["rollback"].as_u64().unwrap() >= 1,
        "{written:#}"
    );

    // An aborted rollout: exit 2 too, at once.
    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        a.as_str(),
    ]);
    h.drain().await;
    h.publish(&Intent::RolloutControl {
        fleet: FleetName::parse("web").unwrap(),
        action: ControlAction::Abort,
    })
    .await;
    h.drain().await;
    let o = h.phoenix(&["rollout", "wait", "web", "--timeout", "30"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("aborted"), "{}", stderr(&o));

    // A timeout is 1.
    let o = h.phoenix(&[
        "rollout",
        "watch",
        "web",
        "--event",
        "never-sent",
        "--timeout",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_handled_event_prints_an_embedded_metric_line_per_fleet() {
    use phoenix_tests::runtime_api::RuntimeApi;
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    h.apply(&FleetFile::new("web", &a, 2));
    h.settle("web").await;

    let api = RuntimeApi::start().await.unwrap();
    let process = api
        .spawn_function(&phoenix_tests::workspace_bin("phoenix-scale"), &h.env())
        .unwrap();
    let id = format!("evt-metrics-{}", std::process::id());
    let event = phoenix_tests::envelope(
        &id,
        "ScaleRequested",
        serde_json::json!({"fleet": "web", "desired": 3}),
        &chrono::Utc::now().to_rfc3339(),
    );
    api.invoke(event, Duration::from_secs(60))
        .await
        .unwrap()
        .response()
        .unwrap();
    let line = process
        .wait_for_line(Duration::from_secs(5), |l| {
            l.contains("CloudWatchMetrics") && l.contains(&id)
        })
        .await
        .unwrap();
    let emf = json(&line);
    let directive = &emf["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "phoenix");
    assert_eq!(directive["Dimensions"], serde_json::json!([["Fleet"]]));
    assert!(emf["_aws"]["Timestamp"].is_i64());
    assert_eq!(emf["Fleet"], "web");
    assert_eq!(emf["InstancesLaunched"], 1);
    assert_eq!(emf["InstancesTerminated"], 0);
    assert_eq!(emf["function"], "scale");
    assert!(emf["HandlerLatency"].as_f64().unwrap() > 0.0);
    let metric_lines = process
        .stdout_lines()
        .iter()
        .filter(|l| l.contains("CloudWatchMetrics"))
        .count();
    assert_eq!(metric_lines, 1, "one line per fleet per event");
}

/// An intent waiting in the fleet's inbox (its event kept losing the race for the fleet) is what
/// an operator sees in `status`, text and JSON, until a pass over the fleet applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_a_queued_intent_until_the_fleet_applies_it() {
    use phoenix_aws::store::EventKey;
    use phoenix_core::events::{Cause, QueuedIntent, ScaleTarget};

    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    h.apply(&FleetFile::new("web", &a, 2));
    h.settle("web").await;

    let name = FleetName::parse("web").unwrap();
    let at = chrono::Utc::now();
    let queued = QueuedIntent {
        intent: Intent::Scale {
            fleet: name.clone(),
            target: ScaleTarget::Desired(3),
        },
        event_time: at,
        cause: Cause {
            event_id: Some("ev-queued-1".into()),
            source: "phoenix".into(),
            detail_type: "ScaleRequested".into(),
            event_time: Some(at),
        },
    };
    let key = EventKey {
        id: "ev-queued-1".into(),
        hash: "0".into(),
    };
    h.store().enqueue(&name, &queued, &key, at).await.unwrap();

    let text = h.phoenix_ok(&["status", "web"]);
    assert!(
        text.contains("queued ScaleRequested of") && text.contains("event ev-queued-1"),
        "{text}"
    );
    let status = json(&h.phoenix_ok(&["status", "web", "-o", "json"]));
    assert_eq!(
        status["queued_intents"][0]["intent"]["kind"], "scale",
        "{status:#}"
    );
    assert_eq!(
        status["queued_intents"][0]["cause"]["event_id"],
        "ev-queued-1"
    );

    let fleet = h.settle("web").await;
    assert_eq!(fleet.spec.capacity, 3);
    let status = json(&h.phoenix_ok(&["status", "web", "-o", "json"]));
    assert_eq!(
        status["queued_intents"],
        serde_json::json!([]),
        "{status:#}"
    );
    assert!(!h.phoenix_ok(&["status", "web"]).contains("queued"));
}

/// Sends `HealthCheckPassed` for every live instance of the fleet not yet healthy, except
/// `silent` (whose reports are lost), then delivers.
async fn pass_all_but(h: &Harness, fleet: &str, silent: &BTreeSet<String>) {
    use phoenix_core::model::Health;
    let f = h.fleet(fleet).await;
    for i in f.live_instances().filter(|i| i.health == Health::Unknown) {
        if !silent.contains(i.id.as_str()) {
            h.publish(&Intent::HealthCheckPassed {
                instance: i.id.clone(),
            })
            .await;
        }
    }
    h.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_rollback_is_shown_by_status_and_rollout_wait_exits_3() {
    use phoenix_core::model::RolloutStatus;
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let b = h.register_image("web-b").await;
    // Instances count healthy only once reported passed; a wave has 5 s to get there.
    h.apply(
        &FleetFile::new("web", &a, 2)
            .surge("1")
            .policy("health_check: event")
            .policy("progress_deadline: 5s"),
    );
    let none = BTreeSet::new();
    for _ in 0..20 {
        h.drain().await;
        h.dispatcher.tick().await.unwrap();
        pass_all_but(&h, "web", &none).await;
        if phoenix_tests::converged(&h.fleet("web").await) {
            break;
        }
    }
    assert!(phoenix_tests::converged(&h.fleet("web").await));

    // A rollout to b: its first instance passes, the wave moves on and replaces an instance on a.
    h.phoenix_ok(&[
        "publish",
        "image-ready",
        "--fleet",
        "web",
        "--image",
        b.as_str(),
    ]);
    for _ in 0..10 {
        h.drain().await;
        pass_all_but(&h, "web", &none).await;
        h.dispatcher.tick().await.unwrap();
        let on_b = h
            .fleet_instances("web")
            .await
            .into_iter()
            .filter(|i| i.image == b.as_str())
            .count();
        if on_b == 2 {
            break;
        }
    }
    // The second instance on b fails: the rollout goes back to a, launching instances of a whose
    // health reports are all lost.
    let failing = h
        .fleet("web")
        .await
        .live_instances()
        .find(|i| i.image == b && !i.is_healthy())
        .map(|i| i.id.clone())
        .expect("a second instance on b");
    h.phoenix_ok(&[
        "publish",
        "health-failed",
        "--instance",
        failing.as_str(),
        "--reason",
        "500",
    ]);
    h.drain().await;
    h.dispatcher.tick().await.unwrap();
    h.drain().await;
    let f = h.fleet("web").await;
    assert_eq!(
        f.rollout.as_ref().unwrap().status,
        RolloutStatus::RollingBack
    );
    let silent: BTreeSet<String> = f
        .live_instances()
        .filter(|i| i.image == a && !i.is_healthy())
        .map(|i| i.id.to_string())
        .collect();
    assert!(!silent.is_empty(), "the rollback launched from a: {f:#?}");

    // Past the deadline the rollback stalls: nothing is guessed, the operator is told.
    tokio::time::sleep(Duration::from_secs(6)).await;
    h.dispatcher.tick().await.unwrap();
    let text = h.phoenix_ok(&["status", "web"]);
    assert!(text.contains("stalled since"), "{text}");
    assert!(text.contains("no passed health report"), "{text}");
    assert!(text.contains("phoenix rollout resume web"), "{text}");
    let status = json(&h.phoenix_ok(&["status", "web", "-o", "json"]));
    let waiting = status["rollout"]["stalled"]["waiting_on"]
        .as_array()
        .unwrap();
    assert!(
        silent.iter().all(|id| waiting
            .iter()
            .any(|w| w.as_str().unwrap().contains(id.as_str()))),
        "{status:#}"
    );
    let o = h.phoenix(&["rollout", "wait", "web", "--timeout", "10"]);
    assert_eq!(o.status.code(), Some(3), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("stalled"), "{}", stderr(&o));
    let history = h.history("web").await;
    assert!(history.iter().any(|e| e
        .changes
        .iter()
        .any(|c| matches!(c, phoenix_core::events::Change::RolloutStalled { .. }))));

    // The reports finally arrive: the rollback moves on and ends; `wait` says it rolled back.
    pass_all_but(&h, "web", &none).await;
    for _ in 0..10 {
        h.dispatcher.tick().await.unwrap();
        h.drain().await;
        pass_all_but(&h, "web", &none).await;
    }
    let o = h.phoenix(&["rollout", "wait", "web", "--timeout", "10"]);
    assert_eq!(o.status.code(), Some(2), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("rolled back"), "{}", stderr(&o));
}

/// `fleet apply --diff` says what a fleet file would change — the fields, whether it rolls and
/// why, the instances that would differ from the spec, the waves — and changes nothing: no
/// write, no event. `status` then shows the drift per instance once the file is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_apply_diff_shows_the_change_the_drift_and_the_waves_and_changes_nothing() {
    let h = Harness::start().await.unwrap();
    let a = h.register_image("web-a").await;
    let file = FleetFile::new("web", &a, 4).surge("2");
    let write = |name: &str, f: &FleetFile| {
        let path = tmp(name);
        std::fs::write(&path, f.yaml()).unwrap();
        path.to_str().unwrap().to_string()
    };

    // A fleet that does not exist yet would be created.
    let new = write("diff-web.yaml", &file);
    let text = h.phoenix_ok(&["fleet", "apply", "--diff", &new]);
    assert!(
        text.contains("fleet web does not exist") && text.contains("launches 4 instances"),
        "{text}"
    );
    assert!(
        h.store().list_fleets_now().await.is_empty(),
        "nothing written"
    );
    assert!(h.drain().await.is_empty(), "nothing published");

    h.apply(&file);
    let before = h.settle("web").await;
    let ids: BTreeSet<String> = before.live_instances().map(|i| i.id.to_string()).collect();
    let entries = h.history("web").await.len();

    // A new instance type: every instance drifts, in 2 waves of 2.
    let small = write(
        "diff-web-small.yaml",
        &file.clone().instance_type("t3.small"),
    );
    let text = h.phoenix_ok(&["fleet", "apply", "--diff", &small]);
    let header = format!(
        "fleet web (version {}): 1 field would change",
        before.version
    );
    assert!(text.contains(&header), "{header:?} not in\n{text}");
    for expected in [
        "instance_type: t3.micro -> t3.small",
        "starts rollout 1: instance_type changed",
        "4 of 4 instances would differ from the spec",
        "2 waves",
        "nothing was written or published",
    ] {
        assert!(text.contains(expected), "{expected:?} not in\n{text}");
    }
    for id in &ids {
        assert!(text.contains(id.as_str()), "{id} not in\n{text}");
    }
    let preview = json(&h.phoenix_ok(&["fleet", "apply", "--diff", &small, "-o", "json"]));
    assert_eq!(preview["action"], "update", "{preview:#}");
    assert_eq!(preview["version"], before.version);
    assert_eq!(preview["fields"][0]["field"], "instance_type");
    assert_eq!(
        preview["rolls"]["definition"],
        serde_json::json!(["instance_type"])
    );
    assert_eq!(preview["drift"].as_array().unwrap().len(), 4);
    assert_eq!(preview["drift"][0]["drift"][0]["kind"], "definition");
    assert_eq!(
        preview["drift"][0]["drift"][0]["reason"],
        "instance_type changed"
    );
    let waves = preview["plan"]["passes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["wave"].is_null())
        .count();
    assert_eq!(waves, 2, "{preview:#}");

    // Nothing changed: same version, same instances, same history, no event.
    assert!(h.drain().await.is_empty(), "nothing published");
    let after = h.fleet("web").await;
    assert_eq!(after.version, before.version);
    assert_eq!(after.spec, before.spec);
    assert_eq!(
        after
            .live_instances()
            .map(|i| i.id.to_string())
            .collect::<BTreeSet<_>>(),
        ids
    );
    assert_eq!(h.history("web").await.len(), entries);
    let live: BTreeSet<String> = h
        .fleet_instances("web")
        .await
        .into_iter()
        .filter(|i| i.is_alive())
        .map(|i| i.id)
        .collect();
    assert_eq!(live, ids, "EC2 untouched");

    // The control: the file as applied rolls nothing.
    let text = h.phoenix_ok(&["fleet", "apply", "--diff", &new]);
    for expected in [
        "no field would change",
        "rolls nothing: the fleet file is unchanged",
        "all 4 instances would match the spec",
    ] {
        assert!(text.contains(expected), "{expected:?} not in\n{text}");
    }
    assert!(!text.contains("waves"), "{text}");

    // A bad file: the error apply gives, and exit 1.
    let bad = tmp("bad-diff.yaml");
    std::fs::write(
        &bad,
        format!("name: web\nimage: {a}\ncapacty: 3\ninstance_type: t3.micro\n"),
    )
    .unwrap();
    let o = h.phoenix(&["fleet", "apply", "--diff", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("bad-diff.yaml") && err.contains("capacty") && err.contains("line 3"),
        "{err}"
    );

    // Applied: until the rollout replaces them, status says which instances differ and why.
    h.phoenix_ok(&["fleet", "apply", &small]);
    let text = h.phoenix_ok(&["status", "web"]);
    assert!(
        text.contains("4 of 4 instances differ from the spec (instance_type changed)"),
        "{text}"
    );
    let status = json(&h.phoenix_ok(&["status", "web", "-o", "json"]));
    assert_eq!(status["spec_drift"]["differ"], 4, "{status:#}");
    assert_eq!(status["instances"][0]["matches_spec"], false);
    assert_eq!(
        status["instances"][0]["drift"][0]["fields"],
        serde_json::json!(["instance_type"])
    );
    h.settle("web").await;
    let text = h.phoenix_ok(&["status", "web"]);
    assert!(text.contains("all 4 instances match the spec"), "{text}");
    // Why an instance went: the definition its rollout rolled out, by what changed.
    let old = ids.first().unwrap();
    let text = h.phoenix_ok(&["explain", old]);
    assert!(
        text.contains("replaced by the new definition (instance_type changed)"),
        "{text}"
    );
    let status = json(&h.phoenix_ok(&["status", "web", "-o", "json"]));
    assert_eq!(status["spec_drift"]["differ"], 0, "{status:#}");
}

/// A floating launch template is resolved by `--diff` as `fleet apply` resolves it: a new
/// version of the template is a change of definition, and rolls the fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_apply_diff_resolves_a_floating_launch_template_as_apply_does() {
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
        .launch_template_name("web")
        .launch_template_data(data(InstanceType::T3Micro))
        .send()
        .await
        .unwrap();
    let file = tmp("diff-template.yaml");
    std::fs::write(
        &file,
        format!("name: web\nimage: {a}\ncapacity: 2\nlaunch_template: {{name: web, version: $Latest}}\n"),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    h.phoenix_ok(&["fleet", "apply", file]);
    let before = h.settle("web").await;
    assert_eq!(before.template_version.as_deref(), Some("1"));
    let show = h.phoenix_ok(&["fleet", "show", "web"]);
    assert!(
        show.contains("launch_template web $Latest (resolved to version 1)"),
        "{show}"
    );
    let text = h.phoenix_ok(&["fleet", "apply", "--diff", file]);
    assert!(
        text.contains("rolls nothing: the fleet file is unchanged"),
        "{text}"
    );

    // A new version: the same file now changes what instances are launched from.
    h.ec2
        .create_launch_template_version()
        .launch_template_name("web")
        .launch_template_data(data(InstanceType::T3Small))
        .send()
        .await
        .unwrap();
    let text = h.phoenix_ok(&["fleet", "apply", "--diff", file]);
    for expected in [
        "template_version: 1 -> 2",
        "starts rollout 1: launch_template changed",
        "2 of 2 instances would differ from the spec",
        "launch_template changed",
    ] {
        assert!(text.contains(expected), "{expected:?} not in\n{text}");
    }
    let after = h.fleet("web").await;
    assert_eq!(after.version, before.version, "nothing written");
    assert_eq!(after.template_version.as_deref(), Some("1"));
}
