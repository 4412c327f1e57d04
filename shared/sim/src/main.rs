//! `phoenix-sim`: runs the deterministic simulation over many seeds, or replays one.
//!
//! ```text
//! phoenix-sim --steps N [--seeds FIRST | --seed N] [--seed-steps K] [--fan-out F] [--variant NAME] [--chatty] [--drift] [--traffic] [--placement] [--adoption] [--releases] [--takeovers] [--trace] [--quiet]
//! ```

use phoenix_sim::{run_seed, Config, Report, Stats, Variant};
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "\
usage: phoenix-sim [--steps N] [--seeds FIRST | --seed N] [--seed-steps K] [--fan-out F] [--variant NAME] [--chatty] [--drift] [--traffic] [--placement] [--adoption] [--releases] [--takeovers] [--trace] [--quiet]

  --steps N        run seeds FIRST, FIRST+1, ... until N steps in all (default 100000)
  --seeds FIRST    first seed of the range (default 1)
  --seed N         run (replay) that one seed; its output is the same on every run
  --seed-steps K   chaos steps per seed before the world calms down (default 2000)
  --fan-out F      up to F due events delivered at once (default 2): more invocations racing for
                   the fleet, more intents queued after lost races
  --variant NAME   drive a deliberately broken planner or protocol, or the real one in a broken
                   world: real (default);
                   planners: drop-after-launch, replace-in-place, launch-quarantined,
                   surge-blind, ignore-health-failures, ignore-windows, ignore-drift,
                   ignore-launch-hook, ignore-target-health, skip-terminating-hook,
                   place-blind, never-detach;
                   protocols: relaunch-blind,
                   act-before-deciding, lapsed-as-completed, keep-queued,
                   ignore-deadline-reserve, terminate-unchecked, remove-before-publish,
                   publish-only-after-commit, skip-drain, no-call-budget, quiet-blind;
                   worlds (with --adoption): world-forgets-tags, world-keeps-tags,
                   world-tags-neighbour, world-detaches-nothing
  --storm N        a zone fails: the fleet runs N instances, and once it is at rest every one's
                   health check fails at once, one event each (delivered up to --fan-out at a
                   time); none may be dead-lettered (use few --seed-steps: it settles first)
  --chatty         the health checker reports every healthy instance passed every 30 s
                   (fleets of up to ten)
  --drift          every seed draws rollout windows or freezes, a floating launch template and an
                   operator who edits the fleet file (without it, some seeds do)
  --traffic        every seed draws load balancer target groups and lifecycle hooks (without it,
                   some seeds do)
  --placement      every seed draws a list of instance types to fall back on, a
                   max_instance_lifetime (fleets of up to six) and an operator who protects
                   instances (without it, some seeds do)
  --adoption       every seed (with a capacity) adopts its fleet from instances launched outside
                   phoenix, beside decoys it must leave alone, and some release it (without it,
                   one seed in five does)
  --releases       seeds that release their fleet also release it during the chaos, and at rest
                   interleaved with the passes (without it, only at rest, alone)
  --takeovers      every adopting seed takes over the Auto Scaling group its instances are in,
                   rather than adopting them by id
  --trace          print every step of the trace
  --quiet          print only the summary (and failures)

Exits 1 if any seed breaks an invariant, printing the seed, the step, the last steps of its trace
and the command that replays it.";

struct Args {
    steps: u64,
    first: u64,
    single: Option<u64>,
    seed_steps: u64,
    fan_out: u64,
    variant: Variant,
    trace: bool,
    chatty: bool,
    drift: bool,
    traffic: bool,
    placement: bool,
    adoption: bool,
    releases: bool,
    takeovers: bool,
    storm: Option<u32>,
    quiet: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        steps: 100_000,
        first: 1,
        single: None,
        seed_steps: Config::new(0).chaos_steps,
        fan_out: Config::new(0).fan_out as u64,
        variant: Variant::Real,
        trace: false,
        chatty: false,
        drift: false,
        traffic: false,
        placement: false,
        adoption: false,
        releases: false,
        takeovers: false,
        storm: None,
        quiet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.replace('_', "")
                .parse()
                .map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match arg.as_str() {
            "--steps" => a.steps = num("--steps")?,
            "--seeds" => a.first = num("--seeds")?,
            "--seed" => a.single = Some(num("--seed")?),
            "--seed-steps" => a.seed_steps = num("--seed-steps")?,
            "--fan-out" => a.fan_out = num("--fan-out")?.max(1),
            "--variant" => {
                let v = it.next().ok_or("--variant needs a value")?;
                a.variant = Variant::parse(&v).ok_or(format!("unknown variant {v:?}"))?;
            }
            "--trace" => a.trace = true,
            "--chatty" => a.chatty = true,
            "--drift" => a.drift = true,
            "--traffic" => a.traffic = true,
            "--placement" => a.placement = true,
            "--adoption" => a.adoption = true,
            "--releases" => a.releases = true,
            "--takeovers" => a.takeovers = true,
            "--storm" => a.storm = Some(num("--storm")?.clamp(1, 5_000) as u32),
            "--quiet" => a.quiet = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

fn config(a: &Args, seed: u64) -> Config {
    let mut cfg = Config::new(seed);
    cfg.chaos_steps = a.seed_steps;
    cfg.fan_out = a.fan_out as usize;
    cfg.variant = a.variant;
    cfg.trace = a.trace;
    cfg.chatty = a.chatty;
    cfg.drift = a.drift;
    cfg.traffic = a.traffic;
    cfg.placement = a.placement;
    cfg.adoption = a.adoption;
    cfg.releases = a.releases;
    cfg.takeovers = a.takeovers;
    cfg.storm = a.storm;
    cfg
}

fn replay_command(a: &Args, seed: u64) -> String {
    let mut cmd = format!("phoenix-sim --seed {seed}");
    if a.seed_steps != Config::new(0).chaos_steps {
        cmd.push_str(&format!(" --seed-steps {}", a.seed_steps));
    }
    if a.fan_out != Config::new(0).fan_out as u64 {
        cmd.push_str(&format!(" --fan-out {}", a.fan_out));
    }
    if a.variant != Variant::Real {
        cmd.push_str(&format!(" --variant {}", a.variant.name()));
    }
    if a.chatty {
        cmd.push_str(" --chatty");
    }
    if a.drift {
        cmd.push_str(" --drift");
    }
    if a.traffic {
        cmd.push_str(" --traffic");
    }
    if a.placement {
        cmd.push_str(" --placement");
    }
    if a.adoption {
        cmd.push_str(" --adoption");
    }
    if a.releases {
        cmd.push_str(" --releases");
    }
    if a.takeovers {
        cmd.push_str(" --takeovers");
    }
    if let Some(n) = a.storm {
        cmd.push_str(&format!(" --storm {n}"));
    }
    cmd
}

fn print_failure(a: &Args, r: &Report, with_scenario: bool) {
    let Some(v) = &r.violation else {
        return;
    };
    println!(
        "VIOLATION seed {} step {} at {}: {}: {}",
        r.seed, v.step, v.at, v.kind, v.message
    );
    if with_scenario {
        println!("scenario: {}", r.scenario);
    }
    println!("state:");
    for line in &v.state {
        println!("  {line}");
    }
    if !a.trace {
        println!("last {} steps:", r.trace_tail.len());
        for line in &r.trace_tail {
            println!("  {line}");
        }
    }
    println!("replay: {}", replay_command(a, r.seed));
}

fn stats_line(s: &Stats) -> String {
    format!(
        "events {} (lost {}, duplicated {}), invocations {} (crashed {}, timed out {}, conflicts {}), event seen before {} \
         (completed {}, in flight {}, unfinished {}), commands left unsettled {}, \
         commits {}, launched {} (launch failures {}), terminated {}, faults {}, \
         rollouts {} (succeeded {}, rolled back {}, aborted {}, superseded {}; of the launch definition {}), \
         rollouts held by windows or freezes {}, fleet files applied {}, launch template versions {}, \
         runs ended with a scale-in the windows hold {}, \
         registered {}, drains {}, hooks answered {} / timed out {}, target groups deleted {}, \
         quarantined {} bad / {} good images (good ones: {} wave deadline, {} stopped instance, {} host or zone failure, {} one instance's application failing, {} spurious report), breaker trips {}, stalled rollouts {}, \
         intents queued {} (about one instance {}, applied from the inbox {}, reconcile failures reported after one {}), \
         zone failure events {}, events dead-lettered {} (and schedule ticks {}), \
         service faults {} (DynamoDB, EventBridge), events published {} \
         (notifications committed {}, published again {})",
        s.events,
        s.events_lost,
        s.events_duplicated,
        s.invocations,
        s.crashes,
        s.timeouts,
        s.conflicts,
        s.duplicates + s.in_flight + s.unfinished,
        s.duplicates,
        s.in_flight,
        s.unfinished,
        s.unsettled,
        s.commits,
        s.instances_launched,
        s.launch_failures,
        s.terminations,
        s.faults,
        s.rollouts,
        s.succeeded,
        s.rolled_back,
        s.aborted,
        s.superseded,
        s.drift_rollouts,
        s.rollouts_waiting,
        s.fleet_updates,
        s.template_versions,
        s.scale_ins_held,
        s.registered,
        s.drains,
        s.hooks_answered,
        s.hooks_timed_out,
        s.groups_deleted,
        s.quarantined_bad,
        s.quarantined_good,
        s.good_by_deadline,
        s.good_by_stop,
        s.good_by_host,
        s.good_by_app,
        s.good_by_spurious,
        s.breaker_trips,
        s.stalls,
        s.queued,
        s.queued_instance_events,
        s.dequeued,
        s.listed_failures,
        s.storm_events,
        s.dead_lettered,
        s.ticks_dead_lettered,
        s.service_faults,
        s.published,
        s.notifications,
        s.notifications_repeated
    ) + &format!(
        ", capacity shortages {} (offerings refused {}, launches with no offering left {}, \
         launched on a fallback type {}), rebalances {}, retired at their lifetime {}, \
         protections set or lifted {}, instances adopted {} (released {}, releases refused {}), \
         Auto Scaling groups taken over {} (refused {}, instances detached {})",
        s.shortages,
        s.offerings_refused,
        s.capacity_unavailable,
        s.fallback_launches,
        s.rebalances,
        s.lifetime_retirements,
        s.protections,
        s.adopted,
        s.released,
        s.releases_refused,
        s.takeovers,
        s.takeovers_refused,
        s.detached
    )
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            if e.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("phoenix-sim: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    if let Some(seed) = a.single {
        // Replay: everything printed here is a function of the arguments alone.
        let r = run_seed(config(&a, seed));
        if !a.quiet {
            println!("scenario: {}", r.scenario);
        }
        println!(
            "seed {seed}: {} steps, {} simulated minutes, {} violations, trace digest {:016x}",
            r.steps,
            r.sim_time.num_minutes(),
            u8::from(r.violation.is_some()),
            r.digest
        );
        if !a.quiet {
            println!("{}", stats_line(&r.stats));
        }
        if r.violation.is_some() {
            print_failure(&a, &r, a.quiet);
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }

    let started = Instant::now();
    let mut steps = 0u64;
    let mut seed = a.first;
    let mut failed: Vec<Report> = Vec::new();
    let mut stats = Stats::default();
    while steps < a.steps {
        let r = run_seed(config(&a, seed));
        steps += r.steps;
        stats.add(&r.stats);
        if r.violation.is_some() {
            if failed.is_empty() || !a.quiet {
                print_failure(&a, &r, true);
            }
            failed.push(r);
        }
        seed += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "phoenix-sim: seeds {}..={} ({} seeds), {} steps, {} violations, {:.0} steps/s ({:.1} s){}",
        a.first,
        seed - 1,
        seed - a.first,
        steps,
        failed.len(),
        steps as f64 / secs.max(1e-9),
        secs,
        if a.variant == Variant::Real {
            String::new()
        } else {
            format!(", variant {}", a.variant.name())
        }
    );
    if !a.quiet {
        println!("{}", stats_line(&stats));
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        let seeds: Vec<String> = failed.iter().take(20).map(|r| r.seed.to_string()).collect();
        println!("failing seeds: {}", seeds.join(" "));
        ExitCode::FAILURE
    }
}
