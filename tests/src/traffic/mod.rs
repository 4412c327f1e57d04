//! A traffic harness: real requests through a load balancer to the instances of the emulator, to
//! count the requests a change of instances fails.
//!
//! The emulator keeps EC2 instances and ELBv2 target groups as records; nothing runs on the
//! instances and nothing carries traffic. The harness supplies the rest, on loopback:
//!
//! - `backends`: a server per running instance, killed hard when EC2 stops reporting it running,
//!   so the requests in flight on it fail as they would when the instance goes;
//! - `router`: the load balancer's data plane, sending each request to an instance in rotation —
//!   healthy in the target groups, or merely running for the control without a load balancer;
//! - `elb_api`: a proxy in front of the emulator for every API call, which reports the target
//!   states the emulator lacks (`draining` until the router is done with a deregistered target,
//!   `initial`, `unhealthy`), so a controller that waits for draining waits as long as on AWS;
//! - `load`: a steady rate of requests to the router, and the report of what failed.
//!
//! The router's rotation and in-flight counts (`InFlight`) are shared with the proxy: a
//! deregistration completes when the router no longer sends to the target and has nothing in
//! flight on it, so "0 failed requests" means the requests were drained, not lucky.

pub mod backends;
pub mod elb_api;
mod http;
pub mod load;
pub mod router;

pub use backends::{Backends, Live, Tag};
pub use elb_api::ElbApiProxy;
pub use load::{Load, LoadConfig, TrafficReport};
pub use router::{InFlight, Mode, Router, RouterStats};

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

/// The harness assembled in front of one emulator.
pub struct TrafficWorld {
    /// The endpoint for API calls (every service), reporting target health as AWS does.
    pub proxy: ElbApiProxy,
    pub backends: Backends,
    pub router: Router,
    load: Option<Load>,
}

impl TrafficWorld {
    /// Starts the proxy, the backends (of the instances carrying `tag`, or of all) and the router
    /// in front of the emulator at `emulator_endpoint`. No load yet: see `start_load`.
    pub async fn start(
        emulator_endpoint: &str,
        mode: Mode,
        tag: Option<Tag>,
    ) -> Result<TrafficWorld> {
        let in_flight = InFlight::default();
        let proxy = ElbApiProxy::start(emulator_endpoint, in_flight.clone())
            .await
            .context("starting the ELB API proxy")?;
        let backends = Backends::start(emulator_endpoint, tag)
            .await
            .context("starting the backends")?;
        let router = Router::start(
            mode,
            &proxy.endpoint(),
            emulator_endpoint,
            backends.live(),
            in_flight,
        )
        .await
        .context("starting the router")?;
        Ok(TrafficWorld {
            proxy,
            backends,
            router,
            load: None,
        })
    }

    /// Waits until at least `n` instances can take requests (in rotation, with a live backend).
    pub async fn wait_routable(&self, n: usize, within: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + within;
        loop {
            let routable = self.router.routable();
            if routable.len() >= n {
                return Ok(routable);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} routable instances after {within:?}, not {n}: {routable:?}",
                    routable.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts sending load to the router (stopping any load already running, unreported).
    pub fn start_load(&mut self, config: LoadConfig) {
        self.load = Some(Load::start(self.router.addr(), config));
    }

    /// Requests sent by the running load so far.
    pub fn sent(&self) -> u64 {
        self.load.as_ref().map_or(0, Load::sent)
    }

    /// Stops the load and reports on every request it sent.
    pub async fn report(&mut self) -> Result<TrafficReport> {
        let load = self.load.take().context("no load was started")?;
        Ok(load.stop().await)
    }
}
