//! Which images a fleet follows and which it accepts.
//!
//! - An `image_selector` makes a fleet follow new images announced by AWS itself (an AMI became
//!   available, an Image Builder build finished): every fleet whose selector matches gets an
//!   `ImageReady` for it.
//! - An `admission` gate refuses images from other accounts or without the required tags, whoever
//!   announces them: the refusal is recorded in the fleet's history (`ImageRejected`) and published.
//! - Above every fleet's gate, the deployment's `AllowedImageAccounts`
//!   (`PHOENIX_ALLOWED_IMAGE_ACCOUNTS`) names the accounts whose images phoenix launches at all;
//!   an image of another account is refused the same way, and so is one whose owner EC2 does not
//!   report.
//!
//! All of them judge the facts EC2 `DescribeImages` reports for the AMI (`ImageFacts`) — never
//! the event's word for them.
//!
//! The fleet's rules are part of its spec, so they and the facts they judge live in the model
//! (`model/images.rs`) and are re-exported here. This file adds, above the planner, what the
//! adapters do with them: the deployment's allowed accounts, whether a fleet refuses an image, and
//! the step that records a refusal.

use crate::events::Change;
use crate::ids::ImageId;
use crate::model::{Fleet, FleetSpec};
use crate::planner::Step;
use std::collections::BTreeSet;

pub use crate::model::images::{glob, Admission, ImageBuild, ImageFacts, ImageSelector};

/// The accounts whose images phoenix may launch, for every fleet (`PHOENIX_ALLOWED_IMAGE_ACCOUNTS`,
/// set by the template's `AllowedImageAccounts`). Empty: any account.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AllowedImageAccounts(BTreeSet<String>);

impl AllowedImageAccounts {
    /// From a comma-separated list of account ids; an empty list allows any account.
    pub fn from_list(text: &str) -> Self {
        AllowedImageAccounts(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    /// Whether every account is allowed (no list was given).
    pub fn is_any(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries that are not account ids (12 digits): `DescribeImages` reports an owner as an
    /// account id, so these never match one.
    pub fn not_accounts(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter(|a| !(a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit())))
            .map(String::as_str)
            .collect()
    }

    /// Whether phoenix may launch this image; otherwise why not, naming the owner and the
    /// allowed accounts. An owner EC2 does not report is not an allowed one.
    pub fn admits(&self, image: &ImageId, facts: &ImageFacts) -> Result<(), String> {
        if self.is_any() {
            return Ok(());
        }
        let allowed = self.0.iter().cloned().collect::<Vec<_>>().join(", ");
        match facts.owner.as_deref() {
            Some(owner) if self.0.contains(owner) => Ok(()),
            Some(owner) => Err(format!(
                "{image} is owned by account {owner}, not one whose images phoenix may launch \
                 (PHOENIX_ALLOWED_IMAGE_ACCOUNTS: {allowed})"
            )),
            None => Err(format!(
                "EC2 does not report which account owns {image}, and only images of allowed \
                 accounts may be launched (PHOENIX_ALLOWED_IMAGE_ACCOUNTS: {allowed})"
            )),
        }
    }
}

/// Why an image may not be launched for a fleet of this spec, if it may not: the deployment's
/// allowed accounts first, then the fleet's own admission gate.
pub fn judge(
    spec: &FleetSpec,
    allowed: &AllowedImageAccounts,
    image: &ImageId,
    facts: &ImageFacts,
) -> Result<(), String> {
    allowed.admits(image, facts)?;
    match &spec.admission {
        Some(admission) => admission.admits(image, facts),
        None => Ok(()),
    }
}

/// Why this fleet refuses the image, if it does.
pub fn refusal(
    fleet: &Fleet,
    allowed: &AllowedImageAccounts,
    image: &ImageId,
    facts: &ImageFacts,
) -> Option<String> {
    judge(&fleet.spec, allowed, image, facts).err()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Timestamp;

    fn fleet(extra: &str) -> Fleet {
        let yaml = format!(
            "name: web\nimage: ami-11111111\ncapacity: 2\ninstance_type: t3.micro\n{extra}"
        );
        let spec = FleetSpec::from_yaml(&yaml).unwrap();
        Fleet::new(spec, Timestamp::default())
    }

    fn owned_by(owner: Option<&str>) -> ImageFacts {
        ImageFacts {
            name: Some("web-2".into()),
            owner: owner.map(str::to_string),
            tags: Default::default(),
        }
    }

    fn image() -> ImageId {
        ImageId::parse("ami-22222222").unwrap()
    }

    #[test]
    fn images_of_accounts_not_allowed_are_refused_naming_owner_and_allowed_accounts() {
        let f = fleet("");
        let allowed = AllowedImageAccounts::from_list(" 111122223333, 444455556666 ,");
        assert_eq!(
            refusal(&f, &allowed, &image(), &owned_by(Some("444455556666"))),
            None
        );
        let foreign = refusal(&f, &allowed, &image(), &owned_by(Some("999999999999")))
            .unwrap_or_else(|| panic!("an image of another account is refused"));
        assert!(
            foreign.contains("owned by account 999999999999"),
            "{foreign}"
        );
        assert!(
            foreign.contains("PHOENIX_ALLOWED_IMAGE_ACCOUNTS: 111122223333, 444455556666"),
            "{foreign}"
        );
        // An owner EC2 does not report is no allowed one.
        let unknown = refusal(&f, &allowed, &image(), &owned_by(None))
            .unwrap_or_else(|| panic!("an image of no known owner is refused"));
        assert!(unknown.contains("does not report"), "{unknown}");
        assert!(unknown.contains("111122223333"), "{unknown}");
    }

    #[test]
    fn no_list_allows_any_account_and_the_fleet_gate_still_judges() {
        let any = AllowedImageAccounts::from_list("");
        assert!(any.is_any());
        assert_eq!(refusal(&fleet(""), &any, &image(), &owned_by(None)), None);
        let gated = fleet("admission: {accounts: [\"111122223333\"]}\n");
        let by_gate = refusal(&gated, &any, &image(), &owned_by(Some("444455556666")))
            .unwrap_or_else(|| panic!("the fleet's gate refuses"));
        assert!(by_gate.contains("not one the fleet admits"), "{by_gate}");
        // Both apply: the deployment's list first.
        let allowed = AllowedImageAccounts::from_list("444455556666");
        let both = refusal(&gated, &allowed, &image(), &owned_by(Some("999999999999")))
            .unwrap_or_else(|| panic!("refused"));
        assert!(both.contains("PHOENIX_ALLOWED_IMAGE_ACCOUNTS"), "{both}");
        assert!(refusal(&gated, &allowed, &image(), &owned_by(Some("444455556666"))).is_some());
    }

    #[test]
    fn entries_that_are_not_account_ids_are_named() {
        let list = AllowedImageAccounts::from_list("111122223333,amazon,self");
        assert_eq!(list.not_accounts(), ["amazon", "self"]);
    }
}
