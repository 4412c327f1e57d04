//! The protocol's ports on the simulated world. Each call does its work on the world at once and
//! then yields, once: the scheduler decides which invocation goes on next, so invocations
//! interleave at every call, and an invocation dropped at a yield (a crash, Lambda's timeout) has
//! made exactly the calls before it — the last one included, its answer unseen.

use crate::ec2::{SUBNETS, ZONES};
use crate::world::Shared;
use phoenix_core::images::ImageFacts;
use phoenix_core::model::{LaunchTemplateRef, Location, Timestamp};
use phoenix_protocol::error::{Error, Result};
use phoenix_protocol::ports::autoscaling::{AutoScaling, Group};
use phoenix_protocol::ports::bus::{Bus, OutgoingEvent};
use phoenix_protocol::ports::ec2::{
    Ec2, Ec2Instance, InstanceStatus, Instances, Ran, RunInstances, Subnet, TemplateVersions,
};
use phoenix_protocol::ports::elb::{Elb, Target, TargetGroup, TargetHealth};
use phoenix_protocol::ports::table::{Item, Key, Query, Table, Transacted, Write};
use phoenix_protocol::ports::{Ports, Reach, Time};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Pending once, then ready: the point where the scheduler may switch invocations.
struct Yield(bool);

impl Future for Yield {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn yield_now() -> Yield {
    Yield(false)
}

/// Ready once the simulated clock has reached `until`; until then its waker waits in the world's
/// timers, woken by the tick that gets there.
struct SleepUntil {
    world: Shared,
    until: Timestamp,
}

impl Future for SleepUntil {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut w = self.world.lock();
        if w.now >= self.until {
            return Poll::Ready(());
        }
        w.timers.push((self.until, cx.waker().clone()));
        Poll::Pending
    }
}

/// The controller over the simulated world's ports, taking in events as `intake` says.
pub fn controller(
    world: &Shared,
    intake: phoenix_protocol::Intake,
) -> phoenix_protocol::Controller<Sim> {
    phoenix_protocol::Controller::new(
        SimTable(world.clone()),
        phoenix_protocol::Apis::new(
            SimEc2(world.clone()),
            SimElb(world.clone()),
            SimAutoScaling(world.clone()),
        ),
        SimReach,
        SimBus(world.clone()),
        SimTime(world.clone()),
        intake,
    )
}

/// The simulated ports.
pub struct Sim;

impl Ports for Sim {
    type Table = SimTable;
    type Ec2 = SimEc2;
    type Elb = SimElb;
    type AutoScaling = SimAutoScaling;
    type Reach = SimReach;
    type Bus = SimBus;
    type Time = SimTime;
}

#[derive(Clone)]
pub struct SimTable(pub Shared);
pub struct SimEc2(pub Shared);
pub struct SimElb(pub Shared);
pub struct SimAutoScaling(pub Shared);
/// The simulated world is one account in one region: other accounts are proved on the emulator.
pub struct SimReach;
pub struct SimBus(pub Shared);
#[derive(Clone)]
pub struct SimTime(pub Shared);

impl Table for SimTable {
    async fn get(&self, key: &Key) -> Result<Option<Item>> {
        let out = self.0.lock().table_get(key);
        yield_now().await;
        out
    }

    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Item>> {
        let out = self.0.lock().table_batch_get(keys);
        yield_now().await;
        out
    }

    async fn query(&self, query: &Query) -> Result<Vec<Item>> {
        let out = self.0.lock().table_query(query);
        yield_now().await;
        out
    }

    async fn query_index(
        &self,
        _index: &str,
        attribute: &str,
        value: &str,
        limit: usize,
    ) -> Result<Vec<Item>> {
        let out = self.0.lock().table_query_index(attribute, value, limit);
        yield_now().await;
        out
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<Transacted> {
        let out = self.0.lock().table_transact(writes);
        yield_now().await;
        out
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        let out = self.0.lock().table_delete(key);
        yield_now().await;
        out
    }

    async fn delete_all(&self, keys: &[Key]) -> Result<()> {
        let out = self.0.lock().table_delete_all(keys);
        yield_now().await;
        out
    }
}

impl Ec2 for SimEc2 {
    async fn describe_instances(&self, which: &Instances) -> Result<Vec<Ec2Instance>> {
        self.0.lock().ec2_request();
        let out = self.0.lock().ec2_describe(which);
        yield_now().await;
        out
    }

    async fn instance_status(&self, ids: &[String]) -> Result<Vec<InstanceStatus>> {
        self.0.lock().ec2_request();
        let out = self.0.lock().ec2_status(ids);
        yield_now().await;
        out
    }

    async fn run_instances(&self, request: &RunInstances) -> Result<Ran> {
        self.0.lock().ec2_request();
        let out = self.0.lock().ec2_run(request);
        yield_now().await;
        out
    }

    async fn terminate_instances(&self, ids: &[String]) -> Result<Option<String>> {
        self.0.lock().ec2_request();
        let out = self.0.lock().ec2_terminate(ids);
        yield_now().await;
        out
    }

    async fn describe_launch_template(
        &self,
        template: &LaunchTemplateRef,
    ) -> Result<Option<TemplateVersions>> {
        self.0.lock().ec2_request();
        let out = Ok(self.0.lock().ec2.describe_launch_template(template));
        yield_now().await;
        out
    }

    async fn describe_image(&self, image: &str) -> Result<Option<ImageFacts>> {
        self.0.lock().ec2_request();
        let out = Ok(self.0.lock().ec2.describe_image(image));
        yield_now().await;
        out
    }

    async fn create_tags(&self, ids: &[String], tags: &BTreeMap<String, String>) -> Result<()> {
        self.0.lock().ec2_request();
        let out = self.0.lock().ec2_create_tags(ids, tags);
        yield_now().await;
        out
    }

    async fn delete_tags(&self, ids: &[String], keys: &[String]) -> Result<()> {
        self.0.lock().ec2_request();
        let out = self.0.lock().ec2_delete_tags(ids, keys);
        yield_now().await;
        out
    }

    async fn describe_subnets(&self, ids: &[String]) -> Result<BTreeMap<String, Subnet>> {
        self.0.lock().ec2_request();
        let out = Ok(ids
            .iter()
            .filter_map(|s| {
                let zone = SUBNETS.iter().position(|x| x == s)?;
                Some((
                    s.clone(),
                    Subnet {
                        vpc: "vpc-sim".to_string(),
                        zone: Some(ZONES[zone].to_string()),
                    },
                ))
            })
            .collect());
        yield_now().await;
        out
    }
}

impl AutoScaling for SimAutoScaling {
    async fn describe_group(&self, name: &str) -> Result<Option<Group>> {
        let out = self.0.lock().asg_describe(name);
        yield_now().await;
        out
    }

    async fn refresh_active(&self, name: &str) -> Result<bool> {
        let out = self.0.lock().asg_refresh_active(name);
        yield_now().await;
        out
    }

    async fn tag_group(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let out = self.0.lock().asg_tag(name, key, value);
        yield_now().await;
        out
    }

    async fn suspend_processes(&self, name: &str) -> Result<()> {
        let out = self.0.lock().asg_suspend(name);
        yield_now().await;
        out
    }

    async fn set_min_size(&self, name: &str, min: u32) -> Result<()> {
        let out = self.0.lock().asg_set_min(name, min);
        yield_now().await;
        out
    }

    async fn detach_instances(&self, name: &str, ids: &[String]) -> Result<Option<String>> {
        let out = self.0.lock().asg_detach(name, ids);
        yield_now().await;
        out
    }
}

impl Reach for SimReach {
    type Ec2 = SimEc2;
    type Elb = SimElb;
    type AutoScaling = SimAutoScaling;
    async fn reach(&self, location: &Location) -> Result<(SimEc2, SimElb, SimAutoScaling)> {
        yield_now().await;
        Err(Error::Permanent {
            service: "sts",
            message: format!(
                "the simulated world has one account and region, not {}",
                location.describe()
            ),
        })
    }
}

impl Elb for SimElb {
    async fn describe_target_group(&self, arn: &str) -> Result<Option<TargetGroup>> {
        let out = self.0.lock().elb_describe(arn);
        yield_now().await;
        out
    }

    async fn target_group_tags(&self, _arn: &str) -> Result<BTreeMap<String, String>> {
        yield_now().await;
        Ok(BTreeMap::from([(
            phoenix_core::model::TAG_FLEETS.to_string(),
            "sim".to_string(),
        )]))
    }

    async fn target_health(&self, arn: &str) -> Result<Vec<TargetHealth>> {
        let out = self.0.lock().elb_health(arn);
        yield_now().await;
        out
    }

    async fn register_targets(&self, arn: &str, targets: &[Target]) -> Result<Option<String>> {
        let out = self.0.lock().elb_register(arn, targets);
        yield_now().await;
        out
    }

    async fn deregister_targets(&self, arn: &str, targets: &[Target]) -> Result<Option<String>> {
        let out = self.0.lock().elb_deregister(arn, targets);
        yield_now().await;
        out
    }
}

impl Bus for SimBus {
    async fn publish(&self, events: &[OutgoingEvent]) -> Result<Vec<String>> {
        let out = self.0.lock().publish(events);
        yield_now().await;
        out
    }
}

impl Time for SimTime {
    fn now(&self) -> Timestamp {
        self.0.lock().now
    }

    async fn sleep(&self, d: Duration) {
        let until = {
            let w = self.0.lock();
            w.now + chrono::Duration::from_std(d).unwrap_or_default()
        };
        SleepUntil {
            world: self.0.clone(),
            until,
        }
        .await;
    }

    fn jitter(&self, n: u64) -> u64 {
        self.0.lock().rng.below(n.max(1))
    }
}
