//! What one seed draws: the fleet, its policy and images, which images are bad, and the weather —
//! how often the operator acts, faults strike, invocations crash, events are lost, duplicated or
//! late, and how AWS's services fail.
//!
//! Some seeds also draw when voluntary disruption is allowed (rollout windows, freezes, placed in
//! the hour or so a run lasts), a floating launch template (a new version of it is drift), and an
//! operator who applies the fleet file changed (another instance type, other user data or tags).
//! Those draws come from a stream of their own, derived from the seed's without advancing it: a
//! seed that draws none of them runs exactly as it did before they existed.
//!
//! So do, from another stream, the load balancer target groups some fleets serve behind (with
//! their deregistration delays, and `elb` in the health check now and then) and the lifecycle
//! hooks some fleets have (launching, terminating or both, with their timeouts and default
//! results).
//!
//! And, from a third stream, placement: a list of two or three instance types to fall back on
//! (`instance_types`), a short `max_instance_lifetime` (one to three hours, for fleets of up to
//! six: a larger fleet with an hour's lifetime would never be at rest), and an operator who
//! protects a few instances (`phoenix:protected`) for a while.

use crate::ec2::{Badness, Ec2, FLEET, INSTANCE_TYPE, SUBNETS};
use crate::rng::Rng;
use crate::world::ServiceFaults;
use chrono::{Duration, TimeZone, Utc};
use phoenix_core::model::{
    group_name, BreakerPolicy, Checkpoint, FleetSpec, Freeze, HealthCheck, Hook, HookResult,
    LaunchTemplateRef, LoadBalancing, RolloutPolicy, Seconds, TargetGroupRef, Timestamp, Window,
};
use phoenix_core::quantity::Quantity;
use phoenix_core::{FleetName, ImageId};
use phoenix_protocol::ports::ec2::TemplateVersions;
use std::collections::BTreeMap;

/// The launch template of seeds that launch from one.
pub const TEMPLATE: &str = "web-lt";
/// Instance types, user data and tags the operator's fleet file changes between.
pub const INSTANCE_TYPES: [&str; 3] = [INSTANCE_TYPE, "t3.small", "m5.large"];
pub const USER_DATA: [Option<&str>; 3] = [
    None,
    Some("#!/bin/sh\necho blue\n"),
    Some("#!/bin/sh\necho green\n"),
];
pub const TEAMS: [Option<&str>; 3] = [None, Some("web"), Some("edge")];

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
    /// When the run starts: 2025-01-01 00:00 UTC (a Wednesday), or, for windows in a time zone,
    /// the night its clocks change.
    pub t0: Timestamp,
    /// The fleet launches from this floating launch template: the pipeline now and then makes a
    /// new default version of it.
    pub template: Option<String>,
    /// The operator now and then applies the fleet file changed (`Edit`).
    pub edits: bool,
    /// What the windows and freezes are, in words (for the scenario line).
    pub schedule: Option<String>,
    /// The fleet's target groups (ARN, deregistration delay in seconds), made in the simulated
    /// ELB before the fleet is applied.
    pub groups: Vec<(String, u64)>,
    /// The operator now and then sets or removes an instance's `phoenix:protected` tag.
    pub protection: bool,
}

/// Deregistration delays a target group is drawn with (AWS's default is 300 s).
pub const DELAYS: [u64; 5] = [0, 5, 30, 120, 300];

/// The target groups and hooks of seeds that draw them (all with `every`), from their own stream
/// (see the module's comment).
fn draw_traffic(lanes: &mut Rng, spec: &mut FleetSpec, every: bool) -> Vec<(String, u64)> {
    let mut groups = Vec::new();
    if every || lanes.chance(400) {
        for k in 0..lanes.range(1, 2) {
            let delay = *lanes.pick(&DELAYS);
            let arn = format!(
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/sim-{k}/{:016x}",
                lanes.next_u64()
            );
            groups.push((arn, delay));
        }
        spec.load_balancing = Some(LoadBalancing {
            target_groups: groups
                .iter()
                .map(|(arn, _)| TargetGroupRef {
                    arn: arn.clone(),
                    port: None,
                })
                .collect(),
        });
        spec.policy.health_check.elb = lanes.chance(500);
    }
    if every || lanes.chance(350) {
        let which = lanes.below(3);
        let mut hook = || Hook {
            timeout: Seconds(lanes.range(30, 600)),
            default_result: if lanes.chance(700) {
                HookResult::Continue
            } else {
                HookResult::Abandon
            },
        };
        let (launching, terminating) = match which {
            0 => (Some(hook()), None),
            1 => (None, Some(hook())),
            _ => (Some(hook()), Some(hook())),
        };
        spec.hooks.launching = launching;
        spec.hooks.terminating = terminating;
    }
    groups
}

/// The placement of seeds that draw it (all with `every`), from its own stream (see the module's
/// comment): instance types to fall back on, a lifetime, protection. Returns whether the operator
/// protects instances.
fn draw_placement(places: &mut Rng, spec: &mut FleetSpec, every: bool) -> bool {
    if every || places.chance(350) {
        let mut types: Vec<String> = INSTANCE_TYPES.iter().map(|t| t.to_string()).collect();
        let first = places.below(types.len() as u64) as usize;
        types.rotate_left(first);
        types.truncate(places.range(2, 3) as usize);
        spec.instance_types = types;
        spec.instance_type = None;
    }
    if spec.capacity <= 6 && (every || places.chance(300)) {
        spec.max_instance_lifetime = Some(Seconds(3600 * *places.pick(&[1, 1, 2, 3])));
        // Every instance goes once a lifetime: an hourly budget below what the fleet (scaled up
        // to twice its size and a few more by the operator) needs per hour would leave it never
        // at rest, by arithmetic, not by phoenix's fault.
        if let Some(limit) = spec.policy.max_replacements_per_hour.as_mut() {
            *limit = (*limit).max(4 * (2 * spec.capacity + 6));
        }
    }
    every || places.chance(250)
}

/// One change an operator makes to the fleet file before applying it: the file is the fleet's
/// current spec (`phoenix fleet show`) with its launch template as first written, and this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    InstanceType(&'static str),
    UserData(Option<&'static str>),
    Team(Option<&'static str>),
}

impl Edit {
    pub fn draw(rng: &mut Rng) -> Edit {
        match rng.weighted(&[50, 35, 15]) {
            0 => {
                let t = *rng.pick(&INSTANCE_TYPES);
                Edit::InstanceType(t)
            }
            1 => Edit::UserData(*rng.pick(&USER_DATA)),
            _ => Edit::Team(*rng.pick(&TEAMS)),
        }
    }

    /// The fleet file with this change. A fleet with a list of types gets this one first.
    pub fn apply(&self, spec: &mut FleetSpec) {
        match self {
            Edit::InstanceType(t) if !spec.instance_types.is_empty() => {
                spec.instance_types.retain(|x| x != t);
                spec.instance_types.insert(0, t.to_string());
            }
            Edit::InstanceType(t) => spec.instance_type = Some(t.to_string()),
            Edit::UserData(u) => spec.user_data = u.map(str::to_string),
            Edit::Team(Some(t)) => {
                spec.tags.insert("team".into(), t.to_string());
            }
            Edit::Team(None) => {
                spec.tags.remove("team");
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Edit::InstanceType(t) => format!("instance_type {t}"),
            Edit::UserData(Some(u)) => format!("user_data {:?}", u.lines().last().unwrap_or("")),
            Edit::UserData(None) => "no user_data".into(),
            Edit::Team(Some(t)) => format!("tag team={t}"),
            Edit::Team(None) => "no team tag".into(),
        }
    }
}

/// The start of every run but those of windows in a zone with a clock change.
pub fn new_year() -> Timestamp {
    utc(2025, 1, 1, 0, 0)
}

fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> Timestamp {
    Utc.with_ymd_and_hms(y, m, d, h, min, 0)
        .single()
        .unwrap_or_else(|| unreachable!("a valid date"))
}

fn window(days: &[&str], start: (i64, i64), minutes: i64, zone: &str) -> Window {
    Window {
        days: days.iter().map(|d| d.to_string()).collect(),
        start: format!("{:02}:{:02}", start.0, start.1),
        duration: Seconds((minutes * 60) as u64),
        timezone: zone.into(),
    }
}

/// When voluntary disruption is allowed, for a run of an hour or so from `t0` (chaos lasts 30 to
/// 90 simulated minutes, the calm up to a few hours more): the windows and freezes, the start of
/// the run, and what they are in words. Each shape opens and closes within the run.
fn draw_schedule(rng: &mut Rng) -> (Vec<Window>, Vec<Freeze>, Timestamp, String) {
    let mut t0 = new_year();
    let (windows, mut words) = match rng.below(5) {
        // A few short windows every day, UTC: open, closed, open again within the hour.
        0 => {
            let n = rng.range(1, 3);
            let ws: Vec<Window> = (0..n)
                .map(|_| {
                    let at = rng.range(0, 100) as i64;
                    window(
                        &["daily"],
                        (at / 60, at % 60),
                        rng.range(5, 30) as i64,
                        "UTC",
                    )
                })
                .collect();
            (ws, "daily windows UTC".to_string())
        }
        // Weekdays (2025-01-01 is a Wednesday): opening within the run, or closed all along (the
        // window is on other days), or one that began the evening before and crosses midnight.
        1 => match rng.below(3) {
            0 => {
                let at = rng.range(10, 45) as i64;
                let hours = rng.range(1, 3) as i64;
                (
                    vec![window(&["weekdays"], (0, at), hours * 60, "UTC")],
                    "weekday window".to_string(),
                )
            }
            1 => (
                vec![window(&["thu", "fri"], (0, 0), 8 * 60, "UTC")],
                "window on other days".to_string(),
            ),
            _ => (
                vec![window(&["tue"], (23, 30), rng.range(40, 75) as i64, "UTC")],
                "window across midnight".to_string(),
            ),
        },
        // Clocks go forward: 02:30 does not exist that night, the window begins at the jump.
        2 => {
            let (zone, day, jump) = if rng.chance(500) {
                ("Europe/Berlin", utc(2025, 3, 30, 0, 0), 60)
            } else {
                ("America/New_York", utc(2025, 3, 9, 0, 0), 7 * 60)
            };
            let before = rng.range(10, 40) as i64;
            t0 = day + Duration::minutes(jump - before);
            (
                vec![window(&["daily"], (2, 30), rng.range(15, 40) as i64, zone)],
                format!("window at 02:30 {zone} the night clocks go forward"),
            )
        }
        // Clocks go back: 02:30 happens twice that night, the window begins at the first.
        3 => {
            t0 = utc(2025, 10, 26, 0, 0) - Duration::minutes(rng.range(0, 20) as i64);
            (
                vec![window(
                    &["daily"],
                    (2, 30),
                    rng.range(15, 40) as i64,
                    "Europe/Berlin",
                )],
                "window at 02:30 Europe/Berlin the night clocks go back".to_string(),
            )
        }
        _ => (Vec::new(), String::new()),
    };
    let mut freezes = Vec::new();
    if windows.is_empty() || rng.chance(400) {
        let from = t0 + Duration::minutes(rng.range(0, 40) as i64);
        let until = from + Duration::minutes(rng.range(10, 50) as i64);
        freezes.push(Freeze {
            from,
            until,
            reason: Some("change freeze".into()),
        });
        if !words.is_empty() {
            words.push_str(" and ");
        }
        words.push_str("a freeze");
    }
    (windows, freezes, t0, words)
}

pub fn image(n: u32) -> ImageId {
    ImageId::parse(&format!("ami-{n:08x}")).unwrap_or_else(|_| unreachable!("8 hex digits"))
}

fn quantity(rng: &mut Rng, choices: &[&str]) -> Quantity {
    let text = *rng.pick(choices);
    Quantity::parse(text).unwrap_or(Quantity::Count(1))
}

impl Scenario {
    /// What seed `rng` draws. `drift`: every seed draws windows or freezes, a floating launch
    /// template and an operator who edits the fleet file (else some seeds do). `traffic`: every
    /// seed draws target groups and lifecycle hooks (else some seeds do). `placement`: every seed
    /// draws instance types to fall back on, a lifetime (fleets of up to six) and protection.
    pub fn draw(
        rng: &mut Rng,
        ec2: &mut Ec2,
        drift: bool,
        traffic: bool,
        placement: bool,
    ) -> Scenario {
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
            HealthCheck::EC2,
            HealthCheck::EC2,
            HealthCheck::EC2,
            HealthCheck::EVENT,
            HealthCheck::BOTH,
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
        let mut spec = FleetSpec {
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
            load_balancing: None,
            hooks: Default::default(),
            instance_types: Vec::new(),
            max_instance_lifetime: None,
            purchase: None,
            account: None,
            region: None,
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

        // Drawn from a stream of their own (see the module's comment).
        let mut side = Rng::new(rng.clone().next_u64() ^ 0x6472_6966_7477_696e);
        let mut t0 = new_year();
        let mut schedule = None;
        if drift || side.chance(200) {
            let (windows, freezes, start, words) = draw_schedule(&mut side);
            spec.policy.windows = windows;
            spec.policy.freezes = freezes;
            t0 = start;
            schedule = Some(words);
        }
        let mut template = None;
        if drift || side.chance(150) {
            ec2.templates.insert(
                TEMPLATE.into(),
                TemplateVersions {
                    id: "lt-0123456789abcdef0".into(),
                    default: 1,
                    latest: 1,
                },
            );
            spec.launch_template = Some(LaunchTemplateRef {
                id: None,
                name: Some(TEMPLATE.into()),
                version: side
                    .pick(&[None, Some("$Latest"), Some("$Default")])
                    .map(str::to_string),
            });
            // The template says the instance type, or the file does too.
            if side.chance(500) {
                spec.instance_type = None;
            }
            template = Some(TEMPLATE.to_string());
        }
        let edits = drift || side.chance(150);
        let mut lanes = Rng::new(rng.clone().next_u64() ^ 0x7472_6166_6669_6373);
        let groups = draw_traffic(&mut lanes, &mut spec, traffic);
        let mut places = Rng::new(rng.clone().next_u64() ^ 0x706c_6163_656d_656e);
        let protection = draw_placement(&mut places, &mut spec, placement);
        Scenario {
            max_capacity: (capacity * 2).clamp(2, 80),
            spec,
            images,
            weather,
            t0,
            template,
            edits,
            schedule,
            groups,
            protection,
        }
    }

    /// The fleet has windows or freezes.
    pub fn scheduled(&self) -> bool {
        let p = &self.spec.policy;
        !p.windows.is_empty() || !p.freezes.is_empty()
    }

    pub fn describe(&self, ec2: &Ec2) -> String {
        let p = &self.spec.policy;
        let bad: Vec<String> = ec2
            .bad_images
            .iter()
            .map(|(i, b)| format!("{i}:{b:?}"))
            .collect();
        // Only seeds that draw them say so: the others' line (and trace digest) is as before.
        let mut extra = String::new();
        if let Some(words) = &self.schedule {
            let windows: Vec<String> = p
                .windows
                .iter()
                .map(|w| {
                    format!(
                        "{} {} {}s {}",
                        w.days.join(","),
                        w.start,
                        w.duration.0,
                        w.timezone
                    )
                })
                .collect();
            let freezes: Vec<String> = p
                .freezes
                .iter()
                .map(|f| {
                    format!(
                        "+{}..+{} min",
                        (f.from - self.t0).num_minutes(),
                        (f.until - self.t0).num_minutes()
                    )
                })
                .collect();
            extra.push_str(&format!(
                "; {words} from {}: windows [{}] freezes [{}]",
                self.t0.format("%Y-%m-%d %H:%MZ"),
                windows.join("; "),
                freezes.join(", ")
            ));
        }
        if let Some(t) = self
            .spec
            .launch_template
            .as_ref()
            .filter(|_| self.template.is_some())
        {
            extra.push_str(&format!(
                "; launch template {} version {} (type {})",
                t.name.as_deref().unwrap_or_default(),
                t.version.as_deref().unwrap_or("default"),
                self.spec
                    .instance_type
                    .as_deref()
                    .unwrap_or("the template's")
            ));
        }
        if self.edits {
            extra.push_str("; the operator edits the fleet file");
        }
        if !self.groups.is_empty() {
            let groups: Vec<String> = self
                .groups
                .iter()
                .map(|(arn, delay)| format!("{} delay {delay}s", group_name(arn)))
                .collect();
            extra.push_str(&format!("; target groups [{}]", groups.join(", ")));
        }
        if !self.spec.instance_types.is_empty() {
            extra.push_str(&format!(
                "; instance types [{}]",
                self.spec.instance_types.join(", ")
            ));
        }
        if let Some(l) = self.spec.max_instance_lifetime {
            extra.push_str(&format!("; max_instance_lifetime {l}"));
        }
        if self.protection {
            extra.push_str("; the operator protects instances");
        }
        let hooks = &self.spec.hooks;
        if !hooks.is_empty() {
            let hooks: Vec<String> = [
                ("launching", hooks.launching),
                ("terminating", hooks.terminating),
            ]
            .into_iter()
            .filter_map(|(kind, h)| {
                let h = h?;
                Some(format!(
                    "{kind} {}s default {}",
                    h.timeout.0,
                    h.default_result.as_str()
                ))
            })
            .collect();
            extra.push_str(&format!("; hooks [{}]", hooks.join(", ")));
        }
        format!(
            "{} weather; capacity {} surge {:?} unavailable {:?} health {:?} warmup {} canary {:?} bake {} \
             checkpoints {:?} deadline {} rollback after {:?} auto_rollback {} hourly {:?} breaker {}%; \
             client token {}; lag {}s; bad images [{}]{}",
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
            bad.join(" "),
            extra
        )
    }
}
