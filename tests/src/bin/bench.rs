//! `make bench-aws`: the AWS side of the benchmark report, against the emulator. Prints one
//! markdown section per part (`phoenix_tests::bench`); exits 1 if a guarantee broke (a mutating
//! EC2 call above its floor, per-event requests growing with the fleet, a duplicate action in
//! the storm).
//!
//! `bench [--small] [--only requests|scaling|storm|idle|zone]... [--events N] [--size N] [--fleets N]
//! [--seed N]`: `--small` runs every section quickly; `--events` is the storm's event count,
//! `--fleets` its fleets; `--size` the large fleet of the scaling section.

use phoenix_tests::bench::{run, Sizes};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut sizes = Sizes::full();
    let mut only = Vec::new();
    let mut events = None;
    let mut size = None;
    let mut fleets = None;
    let mut seed = None;
    let usage = "usage: bench [--small] [--only requests|scaling|storm|idle|zone]... [--events N] [--size N] [--fleets N] [--seed N]";
    while let Some(a) = args.next() {
        let mut number = |what: &str| -> u64 {
            match args.next().and_then(|s| s.replace('_', "").parse().ok()) {
                Some(n) => n,
                None => {
                    eprintln!("{what} needs a number\n{usage}");
                    std::process::exit(2);
                }
            }
        };
        match a.as_str() {
            "--small" => sizes = Sizes::small(),
            "--events" => events = Some(number("--events") as usize),
            "--size" => size = Some(number("--size") as u32),
            "--fleets" => fleets = Some(number("--fleets") as usize),
            "--seed" => seed = Some(number("--seed")),
            "--only" => match args.next() {
                Some(s)
                    if ["requests", "scaling", "storm", "idle", "zone"].contains(&s.as_str()) =>
                {
                    only.push(s)
                }
                _ => {
                    eprintln!("{usage}");
                    std::process::exit(2);
                }
            },
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        }
    }
    sizes.events = events.unwrap_or(sizes.events);
    sizes.large_fleet = size.unwrap_or(sizes.large_fleet);
    sizes.storm_fleets = fleets.unwrap_or(sizes.storm_fleets).max(1);
    sizes.seed = seed.unwrap_or(sizes.seed);
    eprintln!(
        "bench: fleet of {} (surge {}, k = {}); health event in fleets of {} and {}; storm of {} events over {} fleets at concurrency {}",
        sizes.fleet,
        sizes.surge,
        sizes.k,
        sizes.small_fleet,
        sizes.large_fleet,
        sizes.events,
        sizes.storm_fleets,
        sizes.concurrency
    );
    // Each section is printed as soon as it is done: the storm is long.
    let mut ok = true;
    for key in ["requests", "scaling", "storm", "idle", "zone"] {
        if !only.is_empty() && !only.iter().any(|o| o == key) {
            continue;
        }
        let sections = match run(&sizes, &[key.to_string()], &mut |line| {
            eprintln!("  {line}")
        })
        .await
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bench: the {key} section could not run: {e:#}");
                std::process::exit(1);
            }
        };
        for s in &sections {
            println!("{}", s.markdown());
            ok &= s.ok;
        }
    }
    if !ok {
        std::process::exit(1);
    }
}
