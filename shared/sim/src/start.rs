//! How a seed's fleet comes to be: applied empty (`phoenix fleet apply`), or adopted from
//! instances already running, launched outside phoenix: by their ids (`phoenix fleet adopt
//! --instances`), or by taking over the Auto Scaling group that launched them (`phoenix fleet
//! adopt --asg`: the group is emptied a batch at a time). The world of an adopting seed also runs
//! an instance or two that are none of the fleet's business (decoys: phoenix must never tag or
//! terminate them), and in some of those seeds the operator gives the fleet back (`phoenix fleet
//! release`) once it is at rest (`Config::releases`: during the chaos too). With
//! `Config::takeovers`, every adopting seed takes over the group its instances are in instead.
//!
//! Which seeds adopt is decided by the seed's number alone (one in five, or every seed with
//! `Config::adoption`), and what they adopt is drawn from a stream of their own: every other seed
//! runs exactly as before adoption existed.

use crate::asg::{AutoScaling, Group};
use crate::ec2::{Ec2, ZONES};
use crate::rng::Rng;
use crate::scenario::image;
use chrono::Duration;
use phoenix_core::model::{FleetSpec, Timestamp};
use phoenix_core::{ImageId, InstanceId};
use std::collections::{BTreeMap, BTreeSet};

/// The image of instances launched outside phoenix before the fleet's image existed: older than
/// every image a seed draws.
pub fn older_image() -> ImageId {
    image(0x9)
}

/// How the fleet is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// `phoenix fleet apply`: the fleet starts empty and launches its capacity.
    Apply,
    /// `phoenix fleet adopt --instances ...`: running instances become the fleet's.
    Adopt,
    /// `phoenix fleet adopt --asg GROUP`: the instances of an Auto Scaling group become the
    /// fleet's, detached from it a batch at a time. Refused when the fleet's policy lets no
    /// instance be out of service behind its target groups: the fleet is then applied, and the
    /// group left alone.
    TakeOver,
}

/// The Auto Scaling group a takeover empties.
pub const GROUP: &str = "web-asg";

#[derive(Debug, Clone)]
pub struct Start {
    pub how: How,
    /// The instances launched outside phoenix for the fleet to adopt.
    pub adopt: Vec<InstanceId>,
    /// How many of them run an older image than the fleet's.
    pub older: usize,
    /// A takeover was refused: the fleet was applied instead, and the group is a decoy.
    pub refused: bool,
    /// Instances launched outside phoenix that the fleet must leave alone.
    pub decoys: Vec<InstanceId>,
    /// The operator gives the fleet back, now and then and once at rest.
    pub release: bool,
}

impl Start {
    /// How seed `seed` creates its fleet of `spec` (every seed adopts with `every`, else one in
    /// five, and only fleets with a capacity), with the instances it adopts and the decoys
    /// launched in `ec2` before `t0`, and the group that launched them in `autoscaling` for a
    /// takeover (every adopting seed's, with `takeovers`). `seeded` is the seed's stream, which
    /// is not advanced.
    pub fn draw(
        seed: u64,
        seeded: &Rng,
        (every, takeovers): (bool, bool),
        spec: &FleetSpec,
        t0: Timestamp,
        ec2: &mut Ec2,
        autoscaling: &mut AutoScaling,
    ) -> Start {
        let mut start = Start {
            how: How::Apply,
            adopt: Vec::new(),
            older: 0,
            refused: false,
            decoys: Vec::new(),
            release: false,
        };
        if spec.capacity == 0 || !(every || seed.is_multiple_of(5)) {
            return start;
        }
        let mut own = Rng::new(seeded.clone().next_u64() ^ 0x6164_6f70_7469_6f6e);
        let old = older_image();
        ec2.images.insert(old.clone());
        // Everything on the fleet's image, everything on an older one (a rollout follows the
        // adoption), or a mix.
        let on_old = own.below(3);
        let count = own.range(1, u64::from(spec.capacity));
        let app = if takeovers { "web-asg" } else { "web" };
        for _ in 0..count {
            let old_one = on_old == 1 || (on_old == 2 && own.chance(500));
            let image = if old_one { &old } else { &spec.image };
            start.older += usize::from(old_one);
            let id = launch_outside(&mut own, ec2, image, t0, "web-legacy", app);
            start.adopt.push(id);
        }
        if takeovers {
            let members: BTreeSet<InstanceId> = start.adopt.iter().cloned().collect();
            for id in &members {
                if let Some(vm) = ec2.vms.get_mut(id) {
                    vm.tags
                        .insert("aws:autoscaling:groupName".into(), GROUP.into());
                }
            }
            let desired = members.len() as u32;
            let group = Group {
                min: own.range(0, u64::from(desired)) as u32,
                max: desired + 2,
                desired,
                members,
                ..Group::default()
            };
            autoscaling.groups.insert(GROUP.to_string(), group);
        }
        for _ in 0..own.range(1, 2) {
            let id = launch_outside(&mut own, ec2, &old, t0, "bastion", "ops");
            start.decoys.push(id);
        }
        start.how = if takeovers { How::TakeOver } else { How::Adopt };
        start.release = own.chance(500);
        start
    }

    /// For the scenario line: empty for a fleet applied, so those seeds' lines stay as they were.
    pub fn describe(&self) -> String {
        let how = match self.how {
            How::Apply => return String::new(),
            How::Adopt => "adopts".to_string(),
            How::TakeOver if self.refused => format!("takes over group {GROUP} (refused) of"),
            How::TakeOver => format!("takes over group {GROUP} of"),
        };
        format!(
            "; {how} {} instances ({} on the older image {}) beside {} decoys{}",
            self.adopt.len(),
            self.older,
            older_image(),
            self.decoys.len(),
            if self.release {
                "; the operator releases the fleet"
            } else {
                ""
            }
        )
    }
}

/// One instance launched outside phoenix into a zone drawn from `own`, a few minutes before `t0`,
/// named `name` and tagged `app`.
fn launch_outside(
    own: &mut Rng,
    ec2: &mut Ec2,
    image: &ImageId,
    t0: Timestamp,
    name: &str,
    app: &str,
) -> InstanceId {
    let zone = own.below(ZONES.len() as u64) as usize;
    let age = Duration::minutes(own.range(2, 30) as i64);
    let tags = BTreeMap::from([
        ("Name".to_string(), name.to_string()),
        ("app".to_string(), app.to_string()),
    ]);
    ec2.run_outside(image, zone, t0 - age, tags)
}
