//! `make bench-traffic`: requests sent and failed while phoenix replaces instances behind a target
//! group, each scenario beside its control without one (`phoenix_tests::traffic_report`). Exits 1
//! if a request failed behind the group, or if a control failed none (the harness would then not
//! be able to tell).
//!
//! `traffic [--demo]`: `--demo` runs the rollout alone, with and without the group, and prints one
//! line each.

use phoenix_tests::traffic_report::{markdown, run, Scenario};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let demo = std::env::args().any(|a| a == "--demo");
    let scenarios: Vec<Scenario> = if demo {
        vec![Scenario::Rollout]
    } else {
        Scenario::ALL.to_vec()
    };
    let mut rows = Vec::new();
    let mut ok = true;
    for scenario in scenarios {
        for with_group in [true, false] {
            eprintln!(
                "traffic: {}, {}",
                scenario.name(),
                if with_group {
                    "behind a target group"
                } else {
                    "without one (control)"
                }
            );
            let row = match run(scenario, with_group).await {
                Ok(row) => row,
                Err(e) => {
                    eprintln!("traffic: {} could not run: {e:#}", scenario.name());
                    std::process::exit(1);
                }
            };
            let r = &row.report;
            let verdict = match (with_group, r.failed) {
                (true, 0) => "ok",
                (false, n) if n > 0 => "ok: the control fails requests",
                (true, _) => {
                    ok = false;
                    "FAILED: requests failed behind the target group"
                }
                (false, _) => {
                    ok = false;
                    "FAILED: the control failed no request"
                }
            };
            println!(
                "{}{}: {r} ({verdict})",
                scenario.name(),
                if with_group {
                    ", behind a target group"
                } else {
                    ", without one"
                }
            );
            rows.push(row);
        }
    }
    if !demo {
        println!("\n{}", markdown(&rows));
    }
    if !ok {
        std::process::exit(1);
    }
}
