//! `phoenix`: publish events from pipelines, apply fleets, and see status and history.
//!
//! Honours the standard AWS environment (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL`), so the
//! same commands work against AWS and against the local emulator.

mod output;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use phoenix_aws::bus::{Bus, OutgoingEvent};
use phoenix_aws::config::{load_sdk_config, Settings};
use phoenix_aws::local::{self, Dispatcher};
use phoenix_aws::store::StateStore;
use phoenix_aws::{telemetry, AwsController};
use phoenix_core::events::{Intent, ScaleTarget};
use phoenix_core::model::FleetSpec;
use phoenix_core::{FleetName, ImageId, InstanceId};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "phoenix",
    version,
    about = "Immutable fleets on AWS: replace, never repair"
)]
struct Cli {
    /// Output format.
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
    /// Create, change and list fleets.
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Publish a phoenix event to the bus (what a pipeline does).
    #[command(subcommand)]
    Publish(PublishCmd),
    /// A fleet's state: spec, rollout, instances.
    Status { fleet: FleetName },
    /// A fleet's recorded decisions, oldest first.
    History {
        fleet: FleetName,
        /// Show at most this many of the newest entries.
        #[arg(long, default_value_t = 200)]
        limit: usize,
    },
    /// Follow rollouts.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// The local stack on the AWS emulator.
    #[command(subcommand)]
    Local(LocalCmd),
}

#[derive(Subcommand)]
enum FleetCmd {
    /// Create or update a fleet from a YAML or JSON file; the fleet is then reconciled.
    Apply { file: std::path::PathBuf },
    /// List fleets.
    List,
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

#[derive(Subcommand)]
enum RolloutCmd {
    /// Wait until the fleet has converged: every instance on the fleet's image, healthy, at
    /// capacity. Prints progress; exits non-zero on timeout.
    Wait {
        fleet: FleetName,
        /// Seconds to wait before failing.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// First wait until the event with this id (as `publish` prints it) has been handled, so
        /// a wait right after a publish cannot pass on the state from before it.
        #[arg(long)]
        event: Option<String>,
    },
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

#[tokio::main]
async fn main() {
    telemetry::init_human("warn");
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let out = output::Printer {
        json: cli.output == Format::Json,
    };
    let controller = AwsController::from_env().await;
    match cli.command {
        Top::Fleet(FleetCmd::Apply { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let spec =
                FleetSpec::from_yaml(&text).with_context(|| format!("{}", file.display()))?;
            let name = spec.name.clone();
            let report = controller.apply_fleet(spec).await?;
            publish(&controller, &Intent::Reconcile { fleet: Some(name) }).await?;
            out.fleet_report(&report)
        }
        Top::Fleet(FleetCmd::List) => {
            let names = controller.store.list_fleets().await?;
            let mut fleets = Vec::new();
            for n in names {
                fleets.push(controller.store.load_fleet(&n).await?);
            }
            out.fleet_list(&fleets)
        }
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
        Top::History { fleet, limit } => {
            let entries = controller.store.history(&fleet, limit).await?;
            out.history(&entries)
        }
        Top::Rollout(RolloutCmd::Wait {
            fleet,
            timeout,
            event,
        }) => {
            wait(
                &controller,
                &fleet,
                event.as_deref(),
                Duration::from_secs(timeout),
                &out,
            )
            .await
        }
        Top::Local(cmd) => local_cmd(cmd, controller, &out).await,
    }
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

/// Polls the fleet until it has converged, printing a line whenever its progress changes.
async fn wait(
    controller: &AwsController,
    name: &FleetName,
    event: Option<&str>,
    timeout: Duration,
    out: &output::Printer,
) -> Result<()> {
    let start = Instant::now();
    if let Some(id) = event {
        loop {
            let recent = controller.store.history(name, 100).await?;
            if recent
                .iter()
                .any(|e| e.cause.event_id.as_deref() == Some(id))
            {
                break;
            }
            if start.elapsed() > timeout {
                bail!(
                    "event {id} was not handled for fleet {name} within {}s",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut last = String::new();
    loop {
        let fleet = controller.store.load_fleet(name).await?;
        let progress = output::Progress::of(&fleet);
        let line = progress.line();
        if line != last {
            out.progress(&progress)?;
            last = line;
        }
        if progress.converged {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "fleet {name} did not converge within {}s: {last}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
