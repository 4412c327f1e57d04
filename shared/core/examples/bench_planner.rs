//! Planner CPU time per event, for fleets of 100 to 100 000 instances.
//!
//! `make bench-planner` runs it in release. It prints the median time of each kind of planning
//! work; the goal is 1 ms for a fleet of 10 000. What EC2 reports comes in no particular order, as
//! DescribeInstances returns it, so matching it to the records is part of the cost.

use chrono::{DateTime, Duration, Utc};
use phoenix_core::events::Intent;
use phoenix_core::model::{Fleet, FleetSpec, Health, Instance, Lifecycle, Observed, Signals};
use phoenix_core::planner::{apply_intent, reconcile};
use phoenix_core::{FleetName, ImageId, InstanceId};
use std::time::Instant;

fn ami(n: u32) -> ImageId {
    ImageId::parse(&format!("ami-{n:08x}")).expect("valid ami")
}

fn fleet(size: u32) -> (Fleet, Vec<Observed>) {
    let yaml = format!("name: web\nimage: {}\ncapacity: 1\ninstance_type: t3.micro\npolicy:\n  max_surge: \"5%\"\n", ami(1));
    let mut spec = FleetSpec::from_yaml(&yaml).expect("spec");
    // Beyond the fleet file's limit of 10 000 on purpose: the planner's cost at 100 000.
    spec.capacity = size;
    let t0 = DateTime::from_timestamp(1_900_000_000, 0).expect("time");
    let mut f = Fleet::new(spec, t0);
    let mut observed = Vec::new();
    for n in 0..size {
        let id = InstanceId::parse(&format!("i-{:017x}", u64::from(n) + 1)).expect("id");
        let inst = Instance {
            launch_hook: None,
            protected: false,
            spot: false,
            adopted: None,
            released: None,
            id: id.clone(),
            image: ami(1),
            launched_at: t0,
            state: Lifecycle::Running,
            health: Health::Healthy,
            signals: Signals {
                elb_ok: false,
                ec2_ok: true,
                passed: false,
                host_impaired: false,
            },
            token: format!("web-x-1-{}", n / 50),
            zone: Some("us-east-1a".into()),
            instance_type: Some("t3.micro".into()),
            disposal: None,
            terminated_at: None,
            taints: Vec::new(),
            retirement: None,
            replacement_for: None,
            subnet: None,
            definition: None,
        };
        observed.push(Observed {
            targets: Default::default(),
            id: id.clone(),
            image: Some(ami(1)),
            state: Lifecycle::Running,
            status_ok: true,
            system_impaired: false,
            launched_at: Some(t0),
            token: Some(inst.token.clone()),
            zone: inst.zone.clone(),
            instance_type: inst.instance_type.clone(),
            subnet: None,
            definition: None,
            protected: false,
        });
        f.instances.insert(id, inst);
    }
    // EC2 lists instances in no particular order (ids are random; the records are by id): the
    // same order every run, but not the records' own.
    let mut seed: u64 = 1;
    for n in (1..observed.len()).rev() {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        observed.swap(n, (seed >> 33) as usize % (n + 1));
    }
    f.live = size;
    f.version = 10;
    (f, observed)
}

/// A fleet of `size` healthy instances on image 1 created two hours before `now`, surge 5 %
/// (50 of 1 000), no instance unavailable: what a rollout starts from.
fn rollout_fleet(size: u32, now: DateTime<Utc>) -> Fleet {
    let yaml = format!(
        "name: web\nimage: {}\ncapacity: {size}\ninstance_type: t3.micro\npolicy:\n  max_surge: \"5%\"\n  max_unavailable: 0\n",
        ami(1)
    );
    let spec = FleetSpec::from_yaml(&yaml).expect("spec");
    let mut f = Fleet::new(spec, now - Duration::hours(2));
    f.version = 3;
    for n in 0..size {
        let id = InstanceId::parse(&format!("i-{:08x}", 0x1000 + n)).expect("id");
        f.instances.insert(
            id.clone(),
            Instance {
                launch_hook: None,
                protected: false,
                spot: false,
                adopted: None,
                released: None,
                id,
                image: ami(1),
                launched_at: now - Duration::minutes(90),
                state: Lifecycle::Running,
                health: Health::Healthy,
                signals: Signals {
                    elb_ok: false,
                    ec2_ok: true,
                    passed: false,
                    host_impaired: false,
                },
                token: format!("web-seed-{n}"),
                zone: None,
                instance_type: None,
                disposal: None,
                terminated_at: None,
                taints: Vec::new(),
                retirement: None,
                replacement_for: None,
                subnet: None,
                definition: None,
            },
        );
        f.live += 1;
    }
    f.complete = true;
    f
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f();
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    median(samples)
}

fn main() {
    let now = DateTime::from_timestamp(1_900_000_600, 0).expect("time") + Duration::zero();
    let name = FleetName::parse("web").expect("name");
    println!(
        "{:<10} {:>16} {:>18} {:>22}",
        "instances", "reconcile (ms)", "image event (ms)", "health event (ms)"
    );
    for size in [100u32, 1_000, 10_000, 100_000] {
        let (f, observed) = fleet(size);
        let runs = if size >= 100_000 { 5 } else { 21 };
        let rest = time(runs, || {
            let s = reconcile(&f, &observed, now);
            assert!(s.is_noop());
        });
        let image = time(runs, || {
            let s = apply_intent(
                &f,
                &Intent::ImageReady {
                    fleet: name.clone(),
                    image: ami(2),
                },
                now,
                now,
            )
            .expect("intent")
            .then_reconcile(&observed, now);
            assert!(!s.commands.is_empty());
        });
        // An instance-scoped event loads the fleet record and one instance.
        let mut partial = f.clone();
        let victim = InstanceId::parse(&format!("i-{:017x}", 1)).expect("id");
        partial.instances.retain(|id, _| *id == victim);
        partial.complete = false;
        let health = time(runs * 10, || {
            let s = apply_intent(
                &partial,
                &Intent::HealthCheckFailed {
                    instance: victim.clone(),
                    reason: "x".into(),
                },
                now,
                now,
            )
            .expect("intent");
            assert!(!s.commands.is_empty());
        });
        let _ = Utc::now();
        println!("{size:<10} {rest:>16.3} {image:>18.3} {health:>22.4}");
    }
    println!("goal: image event at 10 000 instances <= 1 ms");

    // The waves of a rollout of 1 000 instances with a surge of 50 (the fleet's 5 %), as the
    // planner carries it out (its dry run, `phoenix plan`), against the floor ceil(N / surge).
    let f = rollout_fleet(1_000, now);
    let plan =
        phoenix_core::dryrun::plan_rollout(&f, &ami(2), now, Duration::minutes(1)).expect("plan");
    let waves = plan.passes.iter().filter_map(|p| p.wave).max().unwrap_or(0);
    let floor = 1_000u32.div_ceil(50);
    println!(
        "rollout of 1 000 instances, surge 50: {waves} waves, floor ceil(1000/50) = {floor}, ratio {:.2}",
        f64::from(waves) / f64::from(floor)
    );
}
