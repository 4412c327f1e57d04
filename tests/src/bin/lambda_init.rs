//! Init time of Lambda function binaries: from process start to the function's first request for
//! work (`GET /2018-06-01/runtime/invocation/next`) on a local Lambda Runtime API.
//!
//! ```text
//! lambda-init [--runs N] BINARY...
//! ```
//!
//! Each binary is started `N` times (default 20), each time against a fresh runtime API, after one
//! uncounted warm-up start (so the first figure does not include reading the binary from disk).
//! Prints one tab-separated line per binary: name, runs, min, median and max init time in
//! milliseconds. The functions get the environment Lambda gives them plus fake static credentials,
//! a region, and an endpoint nothing listens on: init must not call AWS, and a binary that exits,
//! reports an init error or does not poll within 30 s fails the measurement (exit status 1).
//!
//! A benchmark, not a test: `scripts/lambda-bench.sh` (`make bench-lambda`) runs it on release
//! builds and prints the table.

use anyhow::{bail, Context, Result};
use phoenix_tests::runtime_api::RuntimeApi;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const POLL_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RUNS: usize = 20;

/// What the functions read at init, with values that cannot reach AWS.
fn environment() -> Vec<(&'static str, String)> {
    // A port on loopback nobody listens on: a call made at init would fail, not leave the machine.
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9);
    vec![
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "AKIDBENCHMARK0000000".into()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "benchmark-secret-not-a-credential".into(),
        ),
        ("AWS_SESSION_TOKEN", "benchmark-session".into()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{unused}")),
        // Lambda has no shared config files; neither does the benchmark.
        ("AWS_CONFIG_FILE", "/nonexistent/aws-config".into()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials".into(),
        ),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("PHOENIX_TABLE", "phoenix-bench".into()),
        ("PHOENIX_BUS", "phoenix-bench".into()),
        ("PHOENIX_ALLOWED_IMAGE_ACCOUNTS", String::new()),
    ]
}

/// One start of `bin`: milliseconds from spawning it to its first `next` request.
async fn init_ms(bin: &Path) -> Result<f64> {
    let api = RuntimeApi::start().await?;
    let process = api.spawn_function(bin, &environment())?;
    let start = process.spawned_at();
    let give_up = Instant::now() + POLL_TIMEOUT;
    let polled = loop {
        if let Some(t) = api.first_poll_after(start) {
            break t;
        }
        if let Some(e) = api.init_error() {
            bail!("{} reported an init error: {e}", bin.display());
        }
        if let Some(status) = process.exit_status() {
            bail!(
                "{} exited ({status}) before asking for work; stderr:\n{}",
                bin.display(),
                process.stderr()
            );
        }
        if Instant::now() >= give_up {
            bail!(
                "{} did not ask for work within {POLL_TIMEOUT:?}; stderr:\n{}",
                bin.display(),
                process.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    Ok(polled.duration_since(start).as_secs_f64() * 1000.0)
}

struct Args {
    runs: usize,
    bins: Vec<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut runs = DEFAULT_RUNS;
    let mut bins = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                let n = args.next().context("--runs needs a number")?;
                runs = n.parse().with_context(|| format!("--runs {n}"))?;
                if runs == 0 {
                    bail!("--runs must be at least 1");
                }
            }
            "-h" | "--help" => {
                println!("usage: lambda-init [--runs N] BINARY...");
                std::process::exit(0);
            }
            other if other.starts_with('-') => bail!("unknown option {other}"),
            path => bins.push(PathBuf::from(path)),
        }
    }
    if bins.is_empty() {
        bail!("usage: lambda-init [--runs N] BINARY...");
    }
    for bin in &bins {
        if !bin.is_file() {
            bail!("{} is not a file", bin.display());
        }
    }
    Ok(Args { runs, bins })
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lambda-init: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let args = parse_args()?;
    for bin in &args.bins {
        init_ms(bin).await?; // warm-up: page cache, dynamic loader
        let mut times = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            times.push(init_ms(bin).await?);
        }
        times.sort_by(f64::total_cmp);
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!(
            "{name}\t{}\t{:.1}\t{:.1}\t{:.1}",
            times.len(),
            times[0],
            median(&times),
            times[times.len() - 1]
        );
    }
    Ok(())
}
