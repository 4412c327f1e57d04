//! Which images a fleet follows and which it accepts.
//!
//! - An `image_selector` makes a fleet follow new images announced by AWS itself (an AMI became
//!   available, an Image Builder build finished): every fleet whose selector matches gets an
//!   `ImageReady` for it.
//! - An `admission` gate refuses images from other accounts or without the required tags, whoever
//!   announces them: the refusal is recorded in the fleet's history (`ImageRejected`) and published.
//!
//! Both judge the facts EC2 `DescribeImages` reports for the AMI (`ImageFacts`) — never the
//! event's word for them.
//!
//! The rules are part of a fleet's spec, so they and the facts they judge live in the model
//! (`model/images.rs`) and are re-exported here. This file adds, above the planner, what the
//! adapters do with them: whether a fleet refuses an image, and the step that records a refusal.

use crate::events::Change;
use crate::ids::ImageId;
use crate::model::Fleet;
use crate::planner::Step;

pub use crate::model::images::{glob, Admission, ImageBuild, ImageFacts, ImageSelector};

/// Why this fleet refuses the image, if it does.
pub fn refusal(fleet: &Fleet, image: &ImageId, facts: &ImageFacts) -> Option<String> {
    let admission = fleet.spec.admission.as_ref()?;
    admission.admits(image, facts).err()
}

/// The step that records a refused image (and publishes `ImageRejected`); nothing else changes.
pub fn rejected(fleet: &Fleet, image: &ImageId, reason: String) -> Step {
    let mut step = Step::unchanged(fleet);
    step.changes.push(Change::ImageRejected {
        image: image.clone(),
        reason,
    });
    step
}
