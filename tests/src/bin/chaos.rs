//! `make chaos`: the reliability report. Runs every scenario of `phoenix_tests::chaos` against
//! its own emulator and prints one table; exits 1 if any scenario left a duplicate launch, a
//! leaked or wrongly terminated instance, a lost history entry or notification, a dead-lettered
//! event, or a fleet that did not converge.
//!
//! `chaos [--small] [--seed N] [--only SCENARIO]...`: `--small` runs the sizes `make test` runs;
//! `--only` (repeatable) picks scenarios: `duplicates`, `concurrent`, `faults`, `crash`, `lost`.

use phoenix_tests::chaos::{run_some, table, Sizes, UNMANAGED};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut sizes = Sizes::full();
    let mut only = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--small" => {
                let seed = sizes.seed;
                sizes = Sizes::small();
                sizes.seed = seed;
            }
            "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                Some(seed) => sizes.seed = seed,
                None => {
                    eprintln!("--seed needs a number");
                    std::process::exit(2);
                }
            },
            "--only" => only.extend(args.next()),
            _ => {
                eprintln!("usage: chaos [--small] [--seed N] [--only duplicates|concurrent|faults|crash|lost]...");
                std::process::exit(2);
            }
        }
    }
    eprintln!(
        "chaos: seed {}, fleets of {}, {} concurrent invocations, {:.0} % faults",
        sizes.seed,
        sizes.capacity,
        sizes.concurrent,
        sizes.fault_rate * 100.0
    );
    let rows = match run_some(&sizes, &only, &mut |r| {
        eprintln!(
            "  {} ({:.0} s): {}",
            r.scenario,
            r.seconds,
            if r.ok() { "ok" } else { "FAILED" }
        )
    })
    .await
    {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("chaos: a scenario could not run: {e:#}");
            std::process::exit(1);
        }
    };
    println!("{}", table(&rows));
    println!(
        "{UNMANAGED} unmanaged instances (one untagged, one with look-alike tags, one tagged for \
         another fleet) ran beside every scenario."
    );
    let retried: Vec<String> = rows
        .iter()
        .filter(|r| !r.retried.is_empty())
        .map(|r| {
            let kinds: Vec<String> = r.retried.iter().map(|(k, n)| format!("{n} {k}")).collect();
            format!("  {}: {}", r.scenario, kinds.join(", "))
        })
        .collect();
    if !retried.is_empty() {
        println!("Failed invocations retried (as Lambda retries them), by error:");
        println!("{}", retried.join("\n"));
    }
    for r in rows.iter().filter(|r| !r.details.is_empty()) {
        println!("{}:", r.scenario);
        for d in &r.details {
            println!("  {d}");
        }
    }
    let failed: Vec<_> = rows.iter().filter(|r| !r.ok()).collect();
    for r in &failed {
        println!("\nFAILED: {}", r.scenario);
        for n in &r.notes {
            println!("  - {n}");
        }
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
