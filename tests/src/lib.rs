//! Test harness: a private AWS emulator per test, the local stack provisioned on it, the phoenix
//! CLI and dispatcher pointed at it, and builders for fleets and events.

#![allow(clippy::unwrap_used)]

pub mod bench;
pub mod chaos;
pub mod faults;
pub mod runtime_api;
pub mod target_groups;
pub mod traffic;
pub mod traffic_report;

use anyhow::{bail, Context, Result};
use aws_sdk_ec2::types::{Filter, InstanceStateName};
use phoenix_aws::config::{emulator_sdk_config, Settings};
use phoenix_aws::{Aws, AwsController, DynamoStore};
use phoenix_core::history::HistoryEntry;
use phoenix_core::model::Fleet;
use phoenix_core::{FleetName, ImageId};
use phoenix_local::{self as local, Delivery, Dispatcher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub type LocalDispatcher = Dispatcher<Aws>;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A binary of the workspace, built by `cargo build --workspace` next to the test executables
/// (`target/debug/deps/..`), or next to the harness's own binary (`target/debug`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let debug = if dir.ends_with("deps") {
        dir.parent().unwrap()
    } else {
        dir
    };
    let bin = debug.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` first (make test does)",
        bin.display()
    );
    bin
}

/// A moto server on a free loopback port, stopped when dropped.
pub struct Emulator {
    child: Child,
    pub endpoint: String,
}

impl Emulator {
    pub fn start() -> Result<Self> {
        let moto = repo_root().join(".venv/bin/moto_server");
        if !moto.exists() {
            bail!(
                "{} is missing: run `make venv` (make test does)",
                moto.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the emulator")?;
        let mut emulator = Emulator {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(emulator);
            }
            if let Some(status) = emulator.child.try_wait()? {
                bail!("the emulator exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the emulator did not open port {port}")
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One test's world: emulator, provisioned stack, dispatcher, and raw clients for assertions.
pub struct Harness {
    pub emulator: Emulator,
    /// Where the controller, the CLI and the dispatcher send their calls: the emulator, or a
    /// proxy in front of it (`start_behind`).
    pub endpoint: String,
    pub sdk: aws_config::SdkConfig,
    pub settings: Settings,
    pub dispatcher: LocalDispatcher,
    pub ec2: aws_sdk_ec2::Client,
    /// Seconds the dispatcher's clock runs ahead of the real one (windows, leases).
    pub clock: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// The Image Builder builds the controller knows (the emulator has no Image Builder).
    pub builds: phoenix_protocol::ports::StaticImageResolver,
}

/// An EC2 instance as the tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2Instance {
    pub id: String,
    pub state: String,
    pub image: String,
    pub tags: std::collections::BTreeMap<String, String>,
}

impl Ec2Instance {
    pub fn is_alive(&self) -> bool {
        self.state == "pending" || self.state == "running"
    }
}

impl Harness {
    pub async fn start() -> Result<Self> {
        let emulator = Emulator::start()?;
        let endpoint = emulator.endpoint.clone();
        Self::start_behind(emulator, &endpoint).await
    }

    /// A harness whose controller, CLI and dispatcher reach `emulator` through `endpoint` (a
    /// proxy in front of it); the raw clients for assertions go through it too.
    pub async fn start_behind(emulator: Emulator, endpoint: &str) -> Result<Self> {
        let sdk = emulator_sdk_config(endpoint).await;
        let settings = Settings {
            table: "phoenix".into(),
            bus: "default".into(),
        };
        local::provision(&sdk, &settings).await?;
        let mut controller = controller(&sdk, &settings);
        let clock = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        controller.time = phoenix_aws::time::SystemTime::skewed(clock.clone());
        let builds = phoenix_protocol::ports::StaticImageResolver::default();
        controller.intake.images = std::sync::Arc::new(builds.clone());
        let dispatcher = Dispatcher::connect(&sdk, controller).await?;
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        Ok(Harness {
            emulator,
            endpoint: endpoint.to_string(),
            sdk,
            settings,
            dispatcher,
            ec2,
            clock,
            builds,
        })
    }

    pub fn store(&self) -> Store<'_> {
        Store(&self.dispatcher.controller.store)
    }

    /// The environment the CLI and the functions need to reach this emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("PHOENIX_TABLE", self.settings.table.clone()),
            ("PHOENIX_BUS", self.settings.bus.clone()),
        ]
    }

    /// Runs the `phoenix` CLI against this emulator.
    pub fn phoenix(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(workspace_bin("phoenix"));
        cmd.args(args)
            .env_remove("RUST_LOG")
            .env_remove("AWS_PROFILE");
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// Runs the CLI and returns its stdout, failing the test with its stderr if it failed.
    pub fn phoenix_ok(&self, args: &[&str]) -> String {
        let out = self.phoenix(args);
        assert!(
            out.status.success(),
            "phoenix {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub async fn register_image(&self, name: &str) -> ImageId {
        local::register_image(&self.sdk, name).await.unwrap()
    }

    /// Writes a fleet file and applies it with the CLI.
    pub fn apply(&self, fleet: &FleetFile) -> String {
        let path = fleet.write();
        self.phoenix_ok(&["fleet", "apply", path.to_str().unwrap()])
    }

    /// Writes a fleet file and runs `phoenix fleet adopt FILE <how...>`.
    pub fn adopt(&self, fleet: &FleetFile, how: &[&str]) -> Output {
        let path = fleet.write();
        let mut args = vec!["fleet", "adopt", path.to_str().unwrap()];
        args.extend_from_slice(how);
        self.phoenix(&args)
    }

    /// Delivers every queued event.
    pub async fn drain(&self) -> Vec<Delivery> {
        self.dispatcher.drain().await.unwrap()
    }

    /// Delivers events and runs scheduled reconciles `every` apart until the fleet has converged
    /// (for work that waits on real time: a drain, a delay), at most `within`.
    pub async fn settle_over(&self, fleet: &str, every: Duration, within: Duration) -> Fleet {
        let deadline = std::time::Instant::now() + within;
        loop {
            self.drain().await;
            let f = self.fleet(fleet).await;
            if converged(&f) {
                return f;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "fleet {fleet} did not converge within {within:?}: {f:#?}"
            );
            self.dispatcher.tick().await.unwrap();
            tokio::time::sleep(every).await;
        }
    }

    /// Delivers events and runs scheduled reconciles until the fleet has converged.
    pub async fn settle(&self, fleet: &str) -> Fleet {
        self.settle_with(fleet, |_| {}).await
    }

    /// `settle`, calling `observe` after every delivery and reconcile.
    pub async fn settle_with(&self, fleet: &str, mut observe: impl FnMut(&Fleet)) -> Fleet {
        for _ in 0..60 {
            self.drain().await;
            let f = self.fleet(fleet).await;
            observe(&f);
            if converged(&f) {
                return f;
            }
            self.dispatcher.tick().await.unwrap();
            observe(&self.fleet(fleet).await);
        }
        panic!(
            "fleet {fleet} did not converge: {:#?}",
            self.fleet(fleet).await
        );
    }

    pub async fn fleet(&self, name: &str) -> Fleet {
        self.store()
            .load_fleet(&FleetName::parse(name).unwrap())
            .await
            .unwrap()
    }

    pub async fn history(&self, name: &str) -> Vec<HistoryEntry> {
        self.store()
            .history(&FleetName::parse(name).unwrap(), 10_000)
            .await
            .unwrap()
    }

    /// Every instance EC2 knows, in any state.
    pub async fn instances(&self) -> Vec<Ec2Instance> {
        list_instances(&self.ec2).await.unwrap()
    }

    /// Live (pending or running) instances of a fleet, by its tag.
    pub async fn fleet_instances(&self, fleet: &str) -> Vec<Ec2Instance> {
        self.instances()
            .await
            .into_iter()
            .filter(|i| {
                i.is_alive() && i.tags.get("phoenix:fleet").map(String::as_str) == Some(fleet)
            })
            .collect()
    }

    /// Instances launched outside phoenix (no phoenix tags), as a user's other servers would be.
    pub async fn launch_unmanaged(
        &self,
        image: &ImageId,
        count: i32,
        tags: &[(&str, &str)],
    ) -> Vec<String> {
        use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
        let mut req = self
            .ec2
            .run_instances()
            .image_id(image.as_str())
            .min_count(count)
            .max_count(count)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro);
        if !tags.is_empty() {
            let tags = tags
                .iter()
                .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                .collect();
            req = req.tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tags))
                    .build(),
            );
        }
        let out = req.send().await.unwrap();
        out.instances
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.instance_id)
            .collect()
    }

    /// How many instances are running with both status checks ok, among the given ids.
    pub async fn healthy_count(&self, fleet: &str) -> (usize, usize) {
        let live = self.fleet_instances(fleet).await;
        let running: Vec<String> = live
            .iter()
            .filter(|i| i.state == InstanceStateName::Running.as_str())
            .map(|i| i.id.clone())
            .collect();
        if running.is_empty() {
            return (0, live.len());
        }
        let out = self
            .ec2
            .describe_instance_status()
            .set_instance_ids(Some(running))
            .send()
            .await
            .unwrap();
        let ok = out
            .instance_statuses
            .unwrap_or_default()
            .iter()
            .filter(|s| {
                s.instance_status
                    .as_ref()
                    .and_then(|x| x.status.as_ref())
                    .map(|x| x.as_str())
                    == Some("ok")
                    && s.system_status
                        .as_ref()
                        .and_then(|x| x.status.as_ref())
                        .map(|x| x.as_str())
                        == Some("ok")
            })
            .count();
        (ok, live.len())
    }

    /// Puts a raw message on a function's queue: what a (re)delivery of `body` looks like.
    pub async fn enqueue(&self, function: phoenix_core::patterns::Function, body: &str) {
        let sqs = aws_sdk_sqs_client(&self.sdk);
        let url = sqs
            .get_queue_url()
            .queue_name(local::queue_name(function))
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        sqs.send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    /// Messages in the dead-letter queue with their `reason` attribute.
    pub async fn dead_letters(&self) -> Vec<(String, String)> {
        let sqs = aws_sdk_sqs_client(&self.sdk);
        let url = sqs
            .get_queue_url()
            .queue_name(local::DLQ)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let mut out = Vec::new();
        loop {
            let got = sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .send()
                .await
                .unwrap();
            let msgs = got.messages.unwrap_or_default();
            if msgs.is_empty() {
                return out;
            }
            for m in msgs {
                let reason = m
                    .message_attributes
                    .as_ref()
                    .and_then(|a| a.get("reason"))
                    .and_then(|v| v.string_value.clone())
                    .unwrap_or_default();
                out.push((m.body.unwrap_or_default(), reason));
                sqs.delete_message()
                    .queue_url(&url)
                    .receipt_handle(m.receipt_handle.unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    /// Publishes a phoenix event on the bus, as the CLI or a pipeline would; returns its id.
    pub async fn publish(&self, intent: &phoenix_core::events::Intent) -> String {
        use phoenix_aws::bus::{Bus, OutgoingEvent};
        let (detail_type, detail) = intent.to_detail();
        let event = OutgoingEvent {
            detail_type: detail_type.into(),
            detail,
            resources: Vec::new(),
        };
        self.dispatcher
            .controller
            .bus
            .publish(&[event])
            .await
            .unwrap()
            .remove(0)
    }

    /// Routes the events phoenix publishes about its fleets (RolloutStarted, ReplacementHalted, ...)
    /// to a queue, as a user routes them to chat or paging. Returns the queue to read.
    pub async fn subscribe(&self) -> String {
        let kinds = [
            "RolloutStarted",
            "WaveStarted",
            "WaveHealthy",
            "CheckpointReached",
            "RolloutSucceeded",
            "RolloutRollingBack",
            "RolloutRolledBack",
            "RolloutStalled",
            "InstanceReplaced",
            "ReplacementHalted",
            "ImageQuarantined",
            "ImageRejected",
            "InstanceLaunching",
            "InstanceTerminating",
            "TargetGroupMissing",
        ];
        let pattern = serde_json::json!({"source": ["phoenix"], "detail-type": kinds});
        subscribe(&self.sdk, "notifications", &pattern)
            .await
            .unwrap()
    }

    /// The events received on a subscription queue so far: (detail-type, detail).
    pub async fn notifications(&self, url: &str) -> Vec<(String, serde_json::Value)> {
        receive_all(&self.sdk, url).await.unwrap()
    }

    pub fn filter(name: &str, value: &str) -> Filter {
        Filter::builder().name(name).values(value).build()
    }
}

/// A rule on the default bus whose events matching `pattern` go to a new queue `name`, as a user
/// routes phoenix's notifications to chat or paging. Returns the queue's URL.
pub async fn subscribe(
    sdk: &aws_config::SdkConfig,
    name: &str,
    pattern: &serde_json::Value,
) -> Result<String> {
    use aws_sdk_eventbridge::types::Target;
    use aws_sdk_sqs::types::QueueAttributeName;
    let sqs = aws_sdk_sqs_client(sdk);
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await?
        .queue_url
        .context("a queue without a URL")?;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .context("a queue without an ARN")?;
    let events = aws_sdk_eventbridge::Client::new(sdk);
    events
        .put_rule()
        .name(name)
        .event_pattern(pattern.to_string())
        .send()
        .await?;
    events
        .put_targets()
        .rule(name)
        .targets(Target::builder().id("q").arn(arn).build()?)
        .send()
        .await?;
    Ok(url)
}

/// Every event waiting on a subscription queue (`subscribe`), received and deleted:
/// (detail-type, detail).
pub async fn receive_all(
    sdk: &aws_config::SdkConfig,
    url: &str,
) -> Result<Vec<(String, serde_json::Value)>> {
    let sqs = aws_sdk_sqs_client(sdk);
    let mut out = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await?;
        let msgs = got.messages.unwrap_or_default();
        if msgs.is_empty() {
            return Ok(out);
        }
        for m in msgs {
            let v: serde_json::Value = serde_json::from_str(m.body.as_deref().unwrap_or("{}"))?;
            out.push((
                v["detail-type"].as_str().unwrap_or_default().to_string(),
                v["detail"].clone(),
            ));
            sqs.delete_message()
                .queue_url(url)
                .set_receipt_handle(m.receipt_handle)
                .send()
                .await?;
        }
    }
}

fn aws_sdk_sqs_client(sdk: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(sdk)
}

pub fn controller(sdk: &aws_config::SdkConfig, settings: &Settings) -> AwsController {
    phoenix_aws::controller(sdk, settings, Default::default())
}

/// Converged: every instance on the fleet's image, healthy, at capacity, nothing in flight.
pub fn converged(f: &Fleet) -> bool {
    let live: Vec<_> = f.live_instances().collect();
    f.pending.is_empty()
        && f.inbox.is_empty()
        && f.rollout.as_ref().is_none_or(|r| !r.status.is_active())
        && live.len() == f.spec.capacity as usize
        && live
            .iter()
            .all(|i| i.image == f.spec.image && i.is_healthy() && i.disposal.is_none())
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A fleet file builder.
#[derive(Debug, Clone)]
pub struct FleetFile {
    pub name: String,
    pub image: String,
    pub capacity: i64,
    pub max_surge: String,
    pub max_unavailable: String,
    pub tags: Vec<(String, String)>,
    pub instance_type: String,
    /// Extra lines under `policy:` (already indented by two spaces).
    pub policy_extra: Vec<String>,
    /// Extra top-level lines (`launch_template: ...`, `user_data: ...`).
    pub extra: Vec<String>,
}

impl FleetFile {
    pub fn new(name: &str, image: &ImageId, capacity: i64) -> Self {
        FleetFile {
            name: name.into(),
            image: image.to_string(),
            capacity,
            max_surge: "1".into(),
            max_unavailable: "0".into(),
            tags: vec![("team".into(), "web".into())],
            instance_type: "t3.micro".into(),
            policy_extra: Vec::new(),
            extra: Vec::new(),
        }
    }
    /// Adds a top-level line, e.g. `launch_template: {name: web}`.
    pub fn line(mut self, line: &str) -> Self {
        self.extra.push(line.into());
        self
    }
    pub fn surge(mut self, q: &str) -> Self {
        self.max_surge = q.into();
        self
    }
    pub fn unavailable(mut self, q: &str) -> Self {
        self.max_unavailable = q.into();
        self
    }
    pub fn image(mut self, image: &ImageId) -> Self {
        self.image = image.to_string();
        self
    }
    pub fn instance_type(mut self, t: &str) -> Self {
        self.instance_type = t.into();
        self
    }
    /// Adds a line to the policy, e.g. `canary: 1` or `checkpoints: [{percent: 50}]`.
    pub fn policy(mut self, line: &str) -> Self {
        self.policy_extra.push(format!("  {line}"));
        self
    }
    pub fn capacity(mut self, c: i64) -> Self {
        self.capacity = c;
        self
    }
    /// The file, written to a fresh path.
    pub fn write(&self) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("phoenix-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}-{}.yaml", self.name, uuid_like()));
        std::fs::write(&path, self.yaml()).unwrap();
        path
    }

    pub fn yaml(&self) -> String {
        let quote = |q: &str| {
            if q.ends_with('%') {
                format!("\"{q}\"")
            } else {
                q.to_string()
            }
        };
        // An empty instance type leaves the line out (`instance_types` or a template instead).
        let instance_type = if self.instance_type.is_empty() {
            String::new()
        } else {
            format!("instance_type: {}\n", self.instance_type)
        };
        let mut s = format!(
            "name: {}\nimage: {}\ncapacity: {}\n{instance_type}policy:\n  max_surge: {}\n  max_unavailable: {}\n",
            self.name,
            self.image,
            self.capacity,
            quote(&self.max_surge),
            quote(&self.max_unavailable)
        );
        for line in &self.policy_extra {
            s.push_str(line);
            s.push('\n');
        }
        for line in &self.extra {
            s.push_str(line);
            s.push('\n');
        }
        if !self.tags.is_empty() {
            s.push_str("tags:\n");
            for (k, v) in &self.tags {
                s.push_str(&format!("  {k}: {v}\n"));
            }
        }
        s
    }
}

/// An EventBridge envelope as AWS delivers it to a target.
pub fn envelope(
    id: &str,
    detail_type: &str,
    detail: serde_json::Value,
    time: &str,
) -> serde_json::Value {
    serde_json::json!({
        "version": "0",
        "id": id,
        "detail-type": detail_type,
        "source": "phoenix",
        "account": "123456789012",
        "time": time,
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    })
}

/// The store, with a few conveniences for assertions.
pub struct Store<'a>(pub &'a DynamoStore);

impl std::ops::Deref for Store<'_> {
    type Target = DynamoStore;
    fn deref(&self) -> &DynamoStore {
        self.0
    }
}

impl Store<'_> {
    pub async fn list_fleets_now(&self) -> Vec<FleetName> {
        self.0.list_fleets().await.unwrap()
    }
}

/// Every instance EC2 knows, in any state, ordered by id.
pub async fn list_instances(ec2: &aws_sdk_ec2::Client) -> Result<Vec<Ec2Instance>> {
    let mut out = Vec::new();
    let mut pages = ec2.describe_instances().into_paginator().send();
    while let Some(page) = pages.next().await {
        for r in page?.reservations.unwrap_or_default() {
            for i in r.instances.unwrap_or_default() {
                out.push(Ec2Instance {
                    id: i.instance_id.unwrap_or_default(),
                    state: i
                        .state
                        .and_then(|s| s.name)
                        .map(|n| n.as_str().to_string())
                        .unwrap_or_default(),
                    image: i.image_id.unwrap_or_default(),
                    tags: i
                        .tags
                        .unwrap_or_default()
                        .into_iter()
                        .map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default()))
                        .collect(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}
