//! What one seed draws: the fleet, its policy and images, which images are bad, and the weather —
//! how often the operator acts, faults strike, invocations crash, events are lost, duplicated or
//! late, and how AWS's services fail.

use crate::ec2::{Badness, Ec2, FLEET, INSTANCE_TYPE, SUBNETS};
use crate::rng::Rng;
use crate::world::ServiceFaults;
use phoenix_core::model::{
    BreakerPolicy, Checkpoint, FleetSpec, HealthSignal, RolloutPolicy, Seconds,
};
use phoenix_core::quantity::Quantity;
use phoenix_core::{FleetName, ImageId};
use std::collections::BTreeMap;

/// How rough the world is for one seed (all rates per mille).
#[derive(Debug, Clone)]
pub struct Weather {
    pub name: &'static str,
    /// Per step: an operator or pipeline event.
    pub operator: u32,
    /// Per step: a fault.
    pub fault: u32,
    /// Per step: an in-flight invocation dies.
    pub crash: u32,
    /// Per event: lost, duplicated, delayed long.
    pub loss: u32,
    pub dup: u32,
    pub late: u32,
    /// DynamoDB's and EventBridge's faults.
    pub services: ServiceFaults,
}

pub struct Scenario {
    pub spec: FleetSpec,
    pub images: Vec<ImageId>,
    pub max_capacity: u32,
    pub weather: Weather,
}

pub fn image(n: u32) -> ImageId {
    ImageId::parse(&format!("ami-{n:08x}")).unwrap_or_else(|_| unreachable!("8 hex digits"))
}

fn quantity(rng: &mut Rng, choices: &[&str]) -> Quantity {
    let text = *rng.pick(choices);
    Quantity::parse(text).unwrap_or(Quantity::Count(1))
}

impl Scenario {
    pub fn draw(rng: &mut Rng, ec2: &mut Ec2) -> Scenario {
        // Now and then a large fleet, so that steps reach their limits (92 launches, 92
        // terminations, 92 instances touched), outcomes take several transactions and waves
        // several steps.
        let capacity = if rng.chance(40) {
            rng.range(60, 130) as u32
        } else {
            *rng.pick(&[0, 1, 2, 3, 4, 4, 5, 6, 6, 8, 10])
        };
        let images: Vec<ImageId> = (0..4).map(|n| image(0xa + n)).collect();
        ec2.images.extend(images.iter().cloned());
        for img in &images[1..] {
            if rng.chance(350) {
                let how = *rng.pick(&[Badness::StatusNeverOk, Badness::AppFails, Badness::Both]);
                ec2.bad_images.insert(img.clone(), how);
            }
        }
        let health_check = *rng.pick(&[
            HealthSignal::Ec2,
            HealthSignal::Ec2,
            HealthSignal::Ec2,
            HealthSignal::Event,
            HealthSignal::Both,
        ]);
        let checkpoints = match rng.below(4) {
            0 => vec![Checkpoint {
                percent: 50,
                pause: Some(Seconds(120)),
            }],
            1 => vec![Checkpoint {
                percent: 50,
                pause: None,
            }],
            _ => Vec::new(),
        };
        // Every field is drawn; the update keeps this compiling when the policy grows one.
        #[allow(clippy::needless_update)]
        let policy = RolloutPolicy {
            // Large fleets surge more, so that a step launches and terminates more instances
            // than one transaction can record.
            max_surge: if capacity >= 60 {
                quantity(rng, &["2", "25%", "50%", "50%", "100%"])
            } else {
                quantity(rng, &["0", "1", "1", "2", "25%", "50%"])
            },
            max_unavailable: quantity(rng, &["0", "0", "0", "1", "25%"]),
            health_check,
            warmup: Seconds(*rng.pick(&[0, 0, 30])),
            canary: if rng.chance(300) {
                Some(quantity(rng, &["1", "25%"]))
            } else {
                None
            },
            bake: Seconds(*rng.pick(&[0, 60, 300])),
            checkpoints,
            progress_deadline: Seconds(*rng.pick(&[600, 600, 900])),
            rollback_after: quantity(rng, &["1", "1", "1", "2", "25%"]),
            auto_rollback: rng.chance(850),
            max_replacements_per_hour: if rng.chance(200) {
                Some(rng.range(8, 30) as u32)
            } else {
                None
            },
            breaker: BreakerPolicy {
                unhealthy_percent: *rng.pick(&[20, 20, 50]),
                ..BreakerPolicy::default()
            },
            ..RolloutPolicy::default()
        };
        let spec = FleetSpec {
            name: FleetName::parse(FLEET).unwrap_or_else(|_| unreachable!("a valid name")),
            image: images[0].clone(),
            capacity,
            instance_type: Some(INSTANCE_TYPE.into()),
            subnets: SUBNETS.iter().map(|s| s.to_string()).collect(),
            security_groups: Vec::new(),
            key_name: None,
            instance_profile: None,
            launch_template: None,
            tags: BTreeMap::new(),
            user_data: None,
            policy,
            image_selector: None,
            admission: None,
            maintenance_window: None,
            taint: Default::default(),
        };
        let weather = match rng.below(10) {
            0 | 1 => Weather {
                name: "calm",
                operator: 8,
                fault: 0,
                crash: 4,
                loss: 0,
                dup: 20,
                late: 20,
                services: ServiceFaults::default(),
            },
            2..=7 => Weather {
                name: "mild",
                operator: 10,
                fault: 8,
                crash: 15,
                loss: 30,
                dup: 50,
                late: 50,
                services: ServiceFaults {
                    throttle: 2,
                    conflict: 5,
                    lost: 2,
                    publish: 5,
                    ec2_5xx: 3,
                },
            },
            _ => Weather {
                name: "stormy",
                operator: 12,
                fault: 25,
                crash: 40,
                loss: 80,
                dup: 100,
                late: 100,
                services: ServiceFaults {
                    throttle: 6,
                    conflict: 15,
                    lost: 6,
                    publish: 20,
                    ec2_5xx: 10,
                },
            },
        };
        ec2.honour_client_token = rng.chance(850);
        ec2.lost_response = if weather.fault == 0 { 0 } else { weather.loss };
        ec2.max_lag = *rng.pick(&[0, 10, 30, 60]);
        Scenario {
            max_capacity: (capacity * 2).clamp(2, 80),
            spec,
            images,
            weather,
        }
    }

    pub fn describe(&self, ec2: &Ec2) -> String {
        let p = &self.spec.policy;
        let bad: Vec<String> = ec2
            .bad_images
            .iter()
            .map(|(i, b)| format!("{i}:{b:?}"))
            .collect();
        format!(
            "{} weather; capacity {} surge {:?} unavailable {:?} health {:?} warmup {} canary {:?} bake {} \
             checkpoints {:?} deadline {} rollback after {:?} auto_rollback {} hourly {:?} breaker {}%; \
             client token {}; lag {}s; bad images [{}]",
            self.weather.name,
            self.spec.capacity,
            p.max_surge,
            p.max_unavailable,
            p.health_check,
            p.warmup,
            p.canary,
            p.bake,
            p.checkpoints.iter().map(|c| (c.percent, c.pause.map(|s| s.0))).collect::<Vec<_>>(),
            p.progress_deadline,
            p.rollback_after,
            p.auto_rollback,
            p.max_replacements_per_hour,
            p.breaker.unhealthy_percent,
            if ec2.honour_client_token { "honoured" } else { "ignored" },
            ec2.max_lag,
            bad.join(" ")
        )
    }
}
