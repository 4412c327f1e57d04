//! `phoenix`: publish events from pipelines, apply fleets, and see status and history.
//!
//! Honours the standard AWS environment (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL`), so the
//! same commands work against AWS and against the local emulator.
//!
//! Exit codes: 0 success; 1 error or timeout; 2 the rollout waited on ended rolled back or
//! aborted (`rollout wait`, `rollout watch`); 64 the command line itself is wrong.

mod fleet;
mod fleetfile;
mod output;
mod rollout;
mod when;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use phoenix_aws::bus::{Bus, OutgoingEvent};
use phoenix_aws::config::{load_sdk_config, Settings};
use phoenix_aws::controller::Selection;
use phoenix_aws::{telemetry, AwsController};
use phoenix_core::events::{Cause, ControlAction, Intent, ScaleTarget};
use phoenix_core::history;
use phoenix_core::model::{HookKind, HookResult, Timestamp, TAG_PROTECTED};
use phoenix_core::timeline::{self, Timeline, Window};
use phoenix_core::{FleetName, ImageId, InstanceId};
use phoenix_local::{self as local, Dispatcher};
use phoenix_protocol::ports::Deadline;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "phoenix",
    version,
    about = "Immutable fleets on AWS: replace, never repair",
    after_help = "Exit codes: 0 success; 1 error or timeout; 2 the rollout waited on ended rolled \
                  back or aborted; 64 usage error."
)]
struct Cli {
    /// Output format: tables for people, JSON (documented in docs/cli.md) for scripts.
    #[arg(long, short, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Top,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Top {
    /// Create, change, inspect, list and delete fleets.
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Publish a phoenix event to the bus (what a pipeline does).
    #[command(subcommand)]
    Publish(PublishCmd),
    /// A fleet's state: spec, rollout, instances.
    Status { fleet: FleetName },
    /// A fleet's recorded decisions, the fleet at a past moment, or its timeline as a picture.
    History(HistoryArgs),
    /// Why an instance exists or existed: the events and decisions that launched and
    /// terminated it, with the policy and budget at each decision.
    Explain { instance: InstanceId },
    /// Follow and steer rollouts.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// What a new image's rollout would do, wave by wave, with no side effect; and the
    /// instances that retire for age in the next day.
    Plan {
        fleet: FleetName,
        /// The image to plan a rollout to (without: only the retirements).
        #[arg(long)]
        image: Option<ImageId>,
        /// Seconds between reconcile passes (the schedule: 60 in AWS).
        #[arg(long, default_value_t = 60)]
        interval: i64,
    },
    /// Images refused for a fleet after a failed rollout.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Let repairs go on while the mass-failure breaker holds them (once the cause is known).
    ResumeRepairs { fleet: FleetName },
    /// Answer the lifecycle hook an instance waits on, as the hook's own handler would.
    #[command(subcommand)]
    Lifecycle(LifecycleCmd),
    /// Protect an instance from voluntary disruption, or stop protecting it.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// The local stack on the AWS emulator.
    #[command(subcommand)]
    Local(LocalCmd),
}

#[derive(Subcommand)]
enum InstanceCmd {
    /// Tag the instance `phoenix:protected`: no rollout, retirement for age, rebalance or
    /// scale-in takes it (a rollout waits for it, and `status` says so); if it fails or AWS
    /// reclaims it, it is replaced all the same. Its fleet is reconciled at once.
    Protect { instance: InstanceId },
    /// Remove the tag: the fleet's policy applies to it again.
    Unprotect { instance: InstanceId },
}

#[derive(Subcommand)]
enum FleetCmd {
    /// Create or update a fleet from a YAML or JSON file; the fleet is then reconciled.
    Apply {
        file: PathBuf,
        /// Apply nothing: print what the file changes, whether it starts a rollout and why,
        /// which instances would differ from the spec, and the waves it would take.
        #[arg(long)]
        diff: bool,
        /// With --diff: seconds between reconcile passes (the schedule: 60 in AWS).
        #[arg(long, default_value_t = 60, requires = "diff")]
        interval: i64,
    },
    /// Take running instances into a fleet without replacing them: recorded, tagged
    /// `phoenix:fleet`, then the fleet's policy applies (instances on another image than the
    /// file's are rolled to it under the disruption budget). Creates the fleet from FILE, or
    /// updates it as `apply` does. Instances another fleet owns, or not running, are refused.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["select", "instances", "from_asg"])))]
    Adopt {
        file: PathBuf,
        /// Instances carrying this tag, as `tag:KEY=VALUE`; several must all match.
        #[arg(long, value_parser = parse_select)]
        select: Vec<(String, String)>,
        /// These instance ids (comma-separated, or the option repeated).
        #[arg(long, value_delimiter = ',')]
        instances: Vec<InstanceId>,
        /// Every instance of this Auto Scaling group, with zero downtime: the group's processes
        /// suspended, its instances adopted, then detached a batch at a time within the budget
        /// (its desired capacity decremented, so it launches no replacement). The group is left
        /// empty and suspended, never deleted. The target groups it serves behind must be the
        /// file's.
        #[arg(long, value_name = "NAME")]
        from_asg: Option<String>,
    },
    /// Give a fleet's instances back: phoenix's tags removed, the instances left running, the
    /// capacity set to 0 so nothing replaces them. The fleet and its history stay
    /// (`fleet delete` removes them). Refused while a rollout, launches or terminations are
    /// under way.
    Release { fleet: FleetName },
    /// List fleets.
    List,
    /// One fleet in full: spec and policy, disruption budget in use, rollout, instances.
    Show { fleet: FleetName },
    /// Delete a fleet's records. Refused while it has instances, unless --terminate-instances.
    Delete {
        fleet: FleetName,
        /// Scale the fleet to 0 first (the usual replacement path, recorded in its history),
        /// wait until every instance is terminated, then delete.
        #[arg(long)]
        terminate_instances: bool,
        /// Seconds to wait for the instances to be terminated.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum PublishCmd {
    /// A new image is approved for a fleet.
    ImageReady {
        #[arg(long)]
        fleet: FleetName,
        #[arg(long)]
        image: ImageId,
    },
    /// An instance failed a health check.
    HealthFailed {
        #[arg(long)]
        instance: InstanceId,
        #[arg(long)]
        reason: Option<String>,
    },
    /// An instance passed a health check.
    HealthPassed {
        #[arg(long)]
        instance: InstanceId,
    },
    /// Change a fleet's capacity.
    Scale(ScaleArgs),
    /// Ask for a reconcile now (of one fleet, or all).
    Reconcile {
        #[arg(long)]
        fleet: Option<FleetName>,
    },
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["desired", "delta"])))]
struct ScaleArgs {
    #[arg(long)]
    fleet: FleetName,
    /// The new capacity.
    #[arg(long)]
    desired: Option<i64>,
    /// Add (or with a minus sign, remove) this many instances.
    #[arg(long, allow_hyphen_values = true)]
    delta: Option<i64>,
}

/// Times are RFC 3339 (`2025-03-01T12:00:00Z`) or a span ago (`90s`, `10m`, `2h`, `1d`, `1h30m`).
#[derive(Args)]
struct HistoryArgs {
    fleet: FleetName,
    /// Show at most this many of the newest entries (without --since/--until).
    #[arg(long, default_value_t = 200)]
    limit: usize,
    /// The fleet as it was at this moment, rebuilt from its history: instances with image, state
    /// and health, the rollout and its wave, the disruption budget in use.
    #[arg(long, value_parser = when::parse, conflicts_with_all = ["since", "until", "svg", "html"])]
    at: Option<Timestamp>,
    /// Only decisions recorded at or after this moment.
    #[arg(long, value_parser = when::parse)]
    since: Option<Timestamp>,
    /// Only decisions recorded at or before this moment.
    #[arg(long, value_parser = when::parse)]
    until: Option<Timestamp>,
    /// Write the timeline (one lane per instance, coloured by image) as an SVG picture.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Write the timeline and the decisions as a standalone HTML page.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

#[derive(Subcommand)]
enum RolloutCmd {
    /// Wait until the fleet has converged: every instance on the fleet's image, healthy, at
    /// capacity. Prints progress. Exits 0 once converged, 2 if the rollout ends rolled back or
    /// aborted, 1 on timeout.
    Wait {
        fleet: FleetName,
        /// Seconds to wait before failing.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// First wait until the event with this id (as `publish` prints it) has been handled, so
        /// a wait right after a publish cannot pass on the state from before it; a rollout that
        /// had ended before that event is then not the one waited on.
        #[arg(long)]
        event: Option<String>,
    },
    /// Pause the rollout where it is (also at a checkpoint it is already paused at).
    Pause { fleet: FleetName },
    /// Resume a paused rollout (after a checkpoint, or a pause).
    Resume {
        fleet: FleetName,
        /// Also let it go on now, outside the fleet's rollout windows and freezes (this rollout
        /// only).
        #[arg(long)]
        now: bool,
    },
    /// Stop the rollout for good; the fleet stays as it is until the next image.
    Abort { fleet: FleetName },
    /// Roll back: during a rollout, to the previous image (without quarantine); after it, a new
    /// rollout back to the image before.
    Undo { fleet: FleetName },
    /// Follow the rollout live until it is no longer active: waves, healthy/total, a progress
    /// bar on a terminal, plain lines otherwise. Exits like `wait`.
    Watch {
        fleet: FleetName,
        /// Seconds to follow before failing (default: as long as the rollout runs).
        #[arg(long)]
        timeout: Option<u64>,
        /// First wait until the event with this id has been handled (see `wait`).
        #[arg(long)]
        event: Option<String>,
        /// Seconds between two looks at the fleet.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
}

#[derive(Subcommand)]
enum LifecycleCmd {
    /// Complete the lifecycle action of an instance: CONTINUE counts a new instance (or lets a
    /// drained one be terminated); ABANDON fails a new one (it is replaced and counts for the
    /// rollout's health gate) or terminates a drained one all the same.
    Complete {
        instance: InstanceId,
        #[arg(long, value_enum)]
        hook: HookArg,
        #[arg(long, value_enum, default_value_t = ResultArg::Continue)]
        result: ResultArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum HookArg {
    Launching,
    Terminating,
}

#[derive(Clone, Copy, ValueEnum)]
enum ResultArg {
    Continue,
    Abandon,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Allow a quarantined image again for the fleet.
    ClearQuarantine { fleet: FleetName, image: ImageId },
}

#[derive(Subcommand)]
enum LocalCmd {
    /// Create the table, queues and rules on the emulator (idempotent).
    Provision,
    /// Deliver bus events to the handlers, and run the scheduled reconcile every --tick seconds.
    Dispatch {
        #[arg(long, default_value_t = 2)]
        tick: u64,
        /// Deliver what is queued, run one reconcile, and exit.
        #[arg(long)]
        once: bool,
    },
    /// Register a machine image on the emulator (it has no image builder) and print its id.
    RegisterImage { name: String },
}

/// An error with its own exit code (see the module doc).
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Exit code of a usage error (BSD `EX_USAGE`), kept apart from 2, which `rollout` commands use.
const EXIT_USAGE: i32 = 64;

#[tokio::main]
async fn main() {
    telemetry::init_human("warn");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    if let Err(e) = run(cli).await {
        let code = e.downcast_ref::<Exit>().map_or(1, |x| x.code);
        eprintln!("error: {e:#}");
        std::process::exit(code);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let out = output::Printer {
        json: cli.output == Format::Json,
    };
    let controller = phoenix_aws::from_env().await;
    match cli.command {
        Top::Fleet(cmd) => fleet_cmd(cmd, &controller, &out).await,
        Top::Publish(cmd) => {
            let intent = match cmd {
                PublishCmd::ImageReady { fleet, image } => Intent::ImageReady { fleet, image },
                PublishCmd::HealthFailed { instance, reason } => Intent::HealthCheckFailed {
                    instance,
                    reason: reason.unwrap_or_else(|| "health check failed".into()),
                },
                PublishCmd::HealthPassed { instance } => Intent::HealthCheckPassed { instance },
                PublishCmd::Scale(a) => {
                    let target = match (a.desired, a.delta) {
                        (Some(n), _) => {
                            ScaleTarget::Desired(phoenix_core::model::validate_capacity(n)?)
                        }
                        (_, Some(d)) => ScaleTarget::Delta(d),
                        _ => bail!("give --desired or --delta"),
                    };
                    Intent::Scale {
                        fleet: a.fleet,
                        target,
                    }
                }
                PublishCmd::Reconcile { fleet } => Intent::Reconcile { fleet },
            };
            let id = publish(&controller, &intent).await?;
            out.published(&intent, &id)
        }
        Top::Status { fleet } => {
            let fleet = controller.store.load_fleet(&fleet).await?;
            out.status(&fleet)
        }
        Top::History(args) => history_cmd(args, &controller, &out).await,
        Top::Explain { instance } => {
            let fleet = controller.store.load_for_instance(&instance).await?;
            let entries = controller
                .store
                .history_between(&fleet.spec.name, None, None)
                .await?;
            let explanation = history::explain(&entries, &instance).with_context(|| {
                format!(
                    "no recorded decision of fleet {} mentions {instance}",
                    fleet.spec.name
                )
            })?;
            out.explanation(&explanation)
        }
        Top::Rollout(RolloutCmd::Pause { fleet }) => {
            control(&controller, &out, fleet, ControlAction::Pause).await
        }
        Top::Rollout(RolloutCmd::Resume { fleet, now }) => {
            let action = if now {
                ControlAction::ResumeNow
            } else {
                ControlAction::Resume
            };
            control(&controller, &out, fleet, action).await
        }
        Top::Rollout(RolloutCmd::Abort { fleet }) => {
            control(&controller, &out, fleet, ControlAction::Abort).await
        }
        Top::Rollout(RolloutCmd::Undo { fleet }) => {
            control(&controller, &out, fleet, ControlAction::Undo).await
        }
        Top::Instance(cmd) => {
            let (instance, protect) = match cmd {
                InstanceCmd::Protect { instance } => (instance, true),
                InstanceCmd::Unprotect { instance } => (instance, false),
            };
            let fleet = controller.store.load_for_instance(&instance).await?;
            if !fleet.instances.get(&instance).is_some_and(|i| i.is_live()) {
                bail!(
                    "{instance} is no live instance of fleet {}",
                    fleet.spec.name
                );
            }
            // In the fleet's account and region.
            let at = controller.apis(&fleet.spec).await?;
            let ids = [instance.to_string()];
            if protect {
                let tag = [(TAG_PROTECTED.to_string(), "true".to_string())];
                at.compute
                    .set_tags(&ids, &tag.into(), Deadline::NONE)
                    .await?;
            } else {
                at.compute
                    .remove_tags(&ids, &[TAG_PROTECTED.to_string()], Deadline::NONE)
                    .await?;
            }
            // The record follows the tag; reconciled now rather than at the next pass.
            let cause = Cause::internal(if protect {
                "InstanceProtected"
            } else {
                "InstanceUnprotected"
            });
            let report = controller
                .reconcile_fleet(&fleet.spec.name, None, chrono::Utc::now(), &cause, None)
                .await?;
            out.fleet_report(&report)
        }
        Top::ResumeRepairs { fleet } => {
            control(&controller, &out, fleet, ControlAction::ResumeRepairs).await
        }
        Top::Lifecycle(LifecycleCmd::Complete {
            instance,
            hook,
            result,
        }) => {
            let hook = match hook {
                HookArg::Launching => HookKind::Launching,
                HookArg::Terminating => HookKind::Terminating,
            };
            let result = match result {
                ResultArg::Continue => HookResult::Continue,
                ResultArg::Abandon => HookResult::Abandon,
            };
            // Refused here, with the reason, when the instance waits on no such hook: the event
            // would only be recorded as ignored.
            let fleet = controller.store.load_for_instance(&instance).await?;
            let waits = fleet.instances.get(&instance).is_some_and(|i| match hook {
                HookKind::Launching => {
                    i.disposal.is_none() && i.launch_hook.as_ref().is_some_and(|h| h.is_waiting())
                }
                HookKind::Terminating => matches!(
                    i.disposal.as_ref().map(|d| &d.stage),
                    Some(phoenix_core::model::Stage::Hook { .. })
                ),
            });
            if !waits {
                bail!(
                    "{instance} (fleet {}) does not wait on a {} hook",
                    fleet.spec.name,
                    hook.as_str()
                );
            }
            let intent = Intent::LifecycleActionCompleted {
                instance,
                hook,
                result,
            };
            let id = publish(&controller, &intent).await?;
            out.published(&intent, &id)
        }
        Top::Image(ImageCmd::ClearQuarantine { fleet, image }) => {
            let intent = Intent::ClearQuarantine { fleet, image };
            let id = publish(&controller, &intent).await?;
            out.published(&intent, &id)
        }
        Top::Plan {
            fleet,
            image,
            interval,
        } => {
            let f = controller.store.load_fleet(&fleet).await?;
            let now = chrono::Utc::now();
            match image {
                Some(image) => {
                    let plan = phoenix_core::dryrun::plan_rollout(
                        &f,
                        &image,
                        now,
                        chrono::Duration::seconds(interval.max(1)),
                    )?;
                    out.plan(&plan)?;
                    if !out.json {
                        out.retirements(&f, now)?;
                    }
                    Ok(())
                }
                None => out.retirements(&f, now),
            }
        }
        Top::Rollout(RolloutCmd::Wait {
            fleet,
            timeout,
            event,
        }) => {
            rollout::wait(
                &controller,
                &fleet,
                event.as_deref(),
                Duration::from_secs(timeout),
                &out,
            )
            .await
        }
        Top::Rollout(RolloutCmd::Watch {
            fleet,
            timeout,
            event,
            interval,
        }) => {
            rollout::watch(
                &controller,
                &fleet,
                rollout::WatchOptions {
                    event,
                    timeout: timeout.map(Duration::from_secs),
                    interval: Duration::from_secs_f64(interval.clamp(0.1, 60.0)),
                },
                &out,
            )
            .await
        }
        Top::Local(cmd) => local_cmd(cmd, controller, &out).await,
    }
}

async fn fleet_cmd(cmd: FleetCmd, controller: &AwsController, out: &output::Printer) -> Result<()> {
    match cmd {
        FleetCmd::Apply {
            file,
            diff: true,
            interval,
        } => {
            let spec = fleetfile::read(&file)?;
            let preview = controller
                .preview_fleet(spec, chrono::Duration::seconds(interval.max(1)))
                .await?;
            out.preview(&preview)
        }
        FleetCmd::Apply { file, .. } => {
            let spec = fleetfile::read(&file)?;
            let name = spec.name.clone();
            let report = controller.apply_fleet(spec).await?;
            publish(controller, &Intent::Reconcile { fleet: Some(name) }).await?;
            out.fleet_report(&report)
        }
        FleetCmd::Adopt {
            file,
            select,
            instances,
            from_asg,
        } => {
            let spec = fleetfile::read(&file)?;
            let selection = match (from_asg, instances.is_empty()) {
                (Some(group), _) => Selection::Group(group),
                (None, false) => Selection::Ids(instances),
                (None, true) => Selection::Tags(select),
            };
            let adopted = controller.adopt(spec, &selection).await?;
            publish(
                controller,
                &Intent::Reconcile {
                    fleet: Some(adopted.fleet.clone()),
                },
            )
            .await?;
            out.adopted(&adopted)
        }
        FleetCmd::Release { fleet } => {
            let (released, _) = controller.release(&fleet).await?;
            out.released(&fleet, &released)
        }
        FleetCmd::List => {
            let names = controller.store.list_fleets().await?;
            let mut fleets = Vec::new();
            for n in names {
                fleets.push(controller.store.load_fleet(&n).await?);
            }
            out.fleet_list(&fleets)
        }
        FleetCmd::Show { fleet } => {
            let fleet = controller.store.load_fleet(&fleet).await?;
            out.fleet_show(&fleet)
        }
        FleetCmd::Delete {
            fleet,
            terminate_instances,
            timeout,
        } => {
            let deleted = fleet::delete(
                controller,
                &fleet,
                terminate_instances,
                Duration::from_secs(timeout),
                out,
            )
            .await?;
            out.deleted(&deleted)
        }
    }
}

/// `tag:KEY=VALUE` as (KEY, VALUE).
fn parse_select(text: &str) -> std::result::Result<(String, String), String> {
    let rest = text
        .strip_prefix("tag:")
        .ok_or_else(|| format!("{text:?}: expected tag:KEY=VALUE"))?;
    match rest.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?}: expected tag:KEY=VALUE")),
    }
}

/// Fails with "unknown fleet" when the fleet does not exist.
async fn ensure_fleet(controller: &AwsController, name: &FleetName) -> Result<()> {
    controller.store.load_partial(name, &[]).await?;
    Ok(())
}

async fn history_cmd(
    args: HistoryArgs,
    controller: &AwsController,
    out: &output::Printer,
) -> Result<()> {
    let store = &controller.store;
    let name = &args.fleet;
    if let Some(at) = args.at {
        let entries = store.history_between(name, None, Some(at)).await?;
        if entries.is_empty() {
            ensure_fleet(controller, name).await?;
        }
        let snapshot = history::snapshot(&entries, at).with_context(|| {
            format!(
                "fleet {name} did not exist yet at {}",
                at.format("%Y-%m-%dT%H:%M:%S%.3fZ")
            )
        })?;
        return out.snapshot(&snapshot);
    }
    if args.svg.is_some() || args.html.is_some() {
        let entries = store.history_between(name, None, args.until).await?;
        if entries.is_empty() {
            ensure_fleet(controller, name).await?;
        }
        let window = Window {
            since: args.since,
            until: args.until,
        };
        let tl = Timeline::from_history(&entries, window)
            .with_context(|| format!("fleet {name} has no history in that time"))?;
        let mut written = Vec::new();
        if let Some(path) = &args.svg {
            std::fs::write(path, timeline::render_svg(&tl))
                .with_context(|| format!("cannot write {}", path.display()))?;
            written.push(path.clone());
        }
        if let Some(path) = &args.html {
            std::fs::write(path, timeline::render_html(&tl, &entries))
                .with_context(|| format!("cannot write {}", path.display()))?;
            written.push(path.clone());
        }
        return out.timeline_written(&tl, &written);
    }
    let entries = if args.since.is_some() || args.until.is_some() {
        store.history_between(name, args.since, args.until).await?
    } else {
        store.history(name, args.limit).await?
    };
    if entries.is_empty() {
        ensure_fleet(controller, name).await?;
    }
    out.history(&entries)
}

/// Publishes an operator's `RolloutControl` event, as a pipeline or a chat bot could.
async fn control(
    controller: &AwsController,
    out: &output::Printer,
    fleet: FleetName,
    action: ControlAction,
) -> Result<()> {
    let intent = Intent::RolloutControl { fleet, action };
    let id = publish(controller, &intent).await?;
    out.published(&intent, &id)
}

async fn publish(controller: &AwsController, intent: &Intent) -> Result<String> {
    let (detail_type, detail) = intent.to_detail();
    let ids = controller
        .bus
        .publish(&[OutgoingEvent {
            detail_type: detail_type.into(),
            detail,
            resources: Vec::new(),
        }])
        .await?;
    ids.into_iter()
        .next()
        .context("the bus returned no event id")
}

async fn local_cmd(cmd: LocalCmd, controller: AwsController, out: &output::Printer) -> Result<()> {
    let sdk = load_sdk_config().await;
    match cmd {
        LocalCmd::Provision => {
            local::provision(&sdk, &Settings::from_env()).await?;
            out.message("provisioned: table, queues and rules")
        }
        LocalCmd::RegisterImage { name } => {
            let id = local::register_image(&sdk, &name).await?;
            output::say!("{id}");
            Ok(())
        }
        LocalCmd::Dispatch { tick, once } => {
            let dispatcher = Dispatcher::connect(&sdk, controller).await?;
            if once {
                let delivered = dispatcher.drain().await?;
                dispatcher.tick().await?;
                return out.message(&format!("delivered {} events", delivered.len()));
            }
            let tick = Duration::from_secs(tick.max(1));
            let mut next_tick = Instant::now();
            loop {
                for d in dispatcher.poll_once(1).await? {
                    out.delivery(&d)?;
                }
                if Instant::now() >= next_tick {
                    if let Err(e) = dispatcher.tick().await {
                        eprintln!("reconcile failed: {e}");
                    }
                    next_tick = Instant::now() + tick;
                }
            }
        }
    }
}
