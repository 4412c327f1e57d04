//! `rollout wait` and `rollout watch`: follow a fleet until it has converged or its rollout has
//! ended, and say how it ended in the exit code (0 converged or succeeded, 2 rolled back or
//! aborted, 3 stalled, 1 timeout or error).

use crate::output::{Printer, Progress};
use crate::Exit;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use phoenix_aws::AwsController;
use phoenix_core::model::{Fleet, Rollout, RolloutStatus, Timestamp};
use phoenix_core::FleetName;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub const EXIT_FAILED_ROLLOUT: i32 = 2;
/// The rollout stalled: it waits past its progress deadline on something that is not the
/// image's fault (see `phoenix status`), for the operator to decide.
pub const EXIT_STALLED: i32 = 3;

fn timeout_exit(message: String) -> anyhow::Error {
    Exit { code: 1, message }.into()
}

/// Waits until the event has been handled for the fleet; returns when its first change was
/// recorded.
async fn event_handled(
    controller: &AwsController,
    name: &FleetName,
    id: &str,
    deadline: Option<Instant>,
) -> Result<Timestamp> {
    loop {
        let recent = controller.store.history(name, 100).await?;
        if let Some(e) = recent
            .iter()
            .find(|e| e.cause.event_id.as_deref() == Some(id))
        {
            return Ok(e.at);
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(timeout_exit(format!(
                "event {id} was not handled for fleet {name} in time"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The rollout a wait is about: the fleet's latest, unless it had ended before `since`.
fn concerned(fleet: &Fleet, since: Option<Timestamp>) -> Option<&Rollout> {
    fleet
        .rollout
        .as_ref()
        .filter(|r| since.is_none_or(|s| r.finished_at.is_none_or(|f| f >= s)))
}

pub fn status_word(s: RolloutStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default()
}

/// Exit 2 when the rollout concerned ended rolled back or aborted, saying which and why; exit 3
/// when it stalled, saying on what and what the operator can do.
fn failed(fleet: &Fleet, since: Option<Timestamp>) -> Option<Exit> {
    let r = concerned(fleet, since)?;
    if let Some(s) = r.stalled.as_ref().filter(|_| r.status.is_active()) {
        return Some(Exit {
            code: EXIT_STALLED,
            message: format!(
                "rollout {} of fleet {} to {} stalled: {}; waiting on {}; {}",
                r.id,
                fleet.spec.name,
                r.to,
                s.reason,
                s.waiting_on.join(", "),
                crate::output::stall_choices(&fleet.spec.name)
            ),
        });
    }
    if !matches!(r.status, RolloutStatus::RolledBack | RolloutStatus::Aborted) {
        return None;
    }
    let why = r.reason.clone().unwrap_or_else(|| {
        format!(
            "no reason recorded; `phoenix history {}` shows the decisions",
            fleet.spec.name
        )
    });
    let from = r
        .from
        .as_ref()
        .map(|i| format!(" (back on {i})"))
        .filter(|_| r.status == RolloutStatus::RolledBack)
        .unwrap_or_default();
    Some(Exit {
        code: EXIT_FAILED_ROLLOUT,
        message: format!(
            "rollout {} of fleet {} to {} {}{from}: {why}",
            r.id,
            fleet.spec.name,
            r.to,
            status_word(r.status)
        ),
    })
}

/// `rollout wait`: until converged (0), the rollout rolled back or aborted (2), stalled (3), or
/// timeout (1).
pub async fn wait(
    controller: &AwsController,
    name: &FleetName,
    event: Option<&str>,
    timeout: Duration,
    out: &Printer,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let since = match event {
        Some(id) => Some(event_handled(controller, name, id, Some(deadline)).await?),
        None => None,
    };
    let mut last = String::new();
    loop {
        let fleet = controller.store.load_fleet(name).await?;
        let progress = Progress::of(&fleet);
        let line = progress.line();
        if line != last {
            out.progress(&progress)?;
            last = line;
        }
        if let Some(exit) = failed(&fleet, since) {
            return Err(exit.into());
        }
        if progress.converged {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(timeout_exit(format!(
                "fleet {name} did not converge within {}s: {last}",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub struct WatchOptions {
    pub event: Option<String>,
    pub timeout: Option<Duration>,
    pub interval: Duration,
}

/// The bar's message: the wave and the budget in use (kept short: one terminal line).
fn bar_message(p: &Progress) -> String {
    let wave = p
        .rollout
        .as_ref()
        .map(|r| {
            let status = match r.status {
                RolloutStatus::InProgress => String::new(),
                other => format!("{} ", status_word(other)),
            };
            format!("{status}wave {} ({} healthy) · ", r.wave, r.healthy_waves)
        })
        .unwrap_or_default();
    let launching = match p.pending_launches {
        0 => String::new(),
        n => format!(", {n} launching"),
    };
    format!(
        "{wave}{}/{} healthy{launching} · max {} / min {}",
        p.healthy, p.live, p.budget.max_total, p.budget.min_healthy
    )
}

/// `rollout watch`: follows the rollout until it is no longer active.
pub async fn watch(
    controller: &AwsController,
    name: &FleetName,
    opts: WatchOptions,
    out: &Printer,
) -> Result<()> {
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let since = match &opts.event {
        Some(id) => Some(event_handled(controller, name, id, deadline).await?),
        None => None,
    };
    let bar = (!out.json && std::io::stdout().is_terminal()).then(|| {
        let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stdout());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:.bold} [{bar:24.green/white}] {pos}/{len} on new image · {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("█▉ "),
        );
        bar.set_prefix(name.to_string());
        bar
    });
    let mut last_line = String::new();
    let mut seen_waves: Option<(u64, u32, u32)> = None;
    loop {
        let fleet = controller.store.load_fleet(name).await?;
        let progress = Progress::of(&fleet);
        let rollout = concerned(&fleet, since);

        // Waves started and waves healthy, as lines of their own (table output).
        if let (Some(r), false) = (rollout, out.json) {
            let healthy = r.waves.iter().filter(|w| w.healthy_at.is_some()).count() as u32;
            let now = (r.id, r.waves.len() as u32, healthy);
            let (seen_started, seen_healthy) = match seen_waves {
                Some((id, s, h)) if id == r.id => (s, h),
                _ => (0, 0),
            };
            let mut lines = Vec::new();
            if seen_waves.is_none_or(|(id, _, _)| id != r.id) {
                lines.push(format!(
                    "rollout {} of fleet {name}: {} -> {} ({})",
                    r.id,
                    r.from
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_else(|| "-".into()),
                    r.to,
                    status_word(r.status)
                ));
            }
            for w in r.waves.iter().filter(|w| w.number > seen_started) {
                lines.push(format!(
                    "rollout {} wave {} started at {}",
                    r.id,
                    w.number,
                    w.started_at.format("%H:%M:%S")
                ));
            }
            if healthy > seen_healthy && seen_waves.is_some() {
                lines.push(format!(
                    "rollout {}: {healthy} of {} waves healthy",
                    r.id,
                    r.waves.len()
                ));
            }
            for l in lines {
                match &bar {
                    Some(b) => b.println(l),
                    None => out.line(&l),
                }
            }
            seen_waves = Some(now);
        }

        let line = progress.line();
        match &bar {
            Some(b) => {
                b.set_length(u64::from(progress.capacity.max(1)));
                b.set_position(progress.healthy_on_image as u64);
                b.set_message(bar_message(&progress));
            }
            None if line != last_line => out.progress(&progress)?,
            None => {}
        }
        last_line = line;

        let active = rollout.is_some_and(|r| r.status.is_active());
        if !active {
            if let Some(b) = &bar {
                b.finish_and_clear();
                out.progress(&progress)?;
            }
            if let Some(exit) = failed(&fleet, since) {
                return Err(exit.into());
            }
            match rollout {
                Some(r) => out.note(&format!(
                    "rollout {} of fleet {name} to {}: {}",
                    r.id,
                    r.to,
                    status_word(r.status)
                )),
                None => out.note(&format!("fleet {name} has no rollout in progress")),
            }
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            if let Some(b) = &bar {
                b.abandon();
            }
            return Err(timeout_exit(format!(
                "the rollout of fleet {name} was still {} after {}s",
                rollout.map(|r| status_word(r.status)).unwrap_or_default(),
                opts.timeout.map_or(0, |t| t.as_secs())
            )));
        }
        tokio::time::sleep(opts.interval).await;
    }
}
