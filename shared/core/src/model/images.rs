//! The image rules of a fleet's spec — which images it follows (`ImageSelector`) and which it
//! accepts at all (`Admission`) — and the facts they judge: what EC2 reports about an AMI
//! (`ImageFacts`) and what Image Builder reports about a build (`ImageBuild`).
//!
//! What holds: both rules judge only those reported facts, never an event's word for them; a
//! selector names a name pattern, tags or a pipeline (owners alone would follow every image of an
//! account), and the account ids of both are 12 digits (`validate`). The adapters reach all of
//! this through the `images` module, which re-exports it beside what they do with it.

use crate::error::{Error, Result};
use crate::ids::ImageId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What EC2 reports about an AMI.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageFacts {
    pub name: Option<String>,
    /// The owning account id.
    pub owner: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// What Image Builder reports about a finished build (`GetImage`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageBuild {
    /// The image build version ARN the event named.
    pub arn: String,
    /// `outputResources.amis[]`: (region, AMI).
    pub amis: Vec<(String, ImageId)>,
    /// `sourcePipelineArn`.
    pub pipeline: Option<String>,
    /// `imageRecipe.arn`.
    pub recipe: Option<String>,
}

/// Selects the AMIs a fleet follows. Every criterion given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSelector {
    /// The AMI's name, with `*` (any run of characters) and `?` (one character), e.g. `web-*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_pattern: Option<String>,
    /// Tags the AMI must carry, with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Accounts one of which must own the AMI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
    /// An Image Builder pipeline or recipe ARN (`*` allowed) the build came from. Matches only
    /// Image Builder events: a plain AMI event says nothing about pipelines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_arn: Option<String>,
}

/// Which images a fleet accepts at all. Empty lists accept anything.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    /// Accounts one of which must own the AMI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<String>,
    /// Tags the AMI must carry, with these values (`"*"`: any value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub required_tags: BTreeMap<String, String>,
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn check_accounts(field: &str, accounts: &[String]) -> Result<()> {
    match accounts.iter().find(|a| !is_account(a)) {
        Some(bad) => Err(Error::invalid(
            field,
            format!("{bad:?} is not an AWS account id (12 digits)"),
        )),
        None => Ok(()),
    }
}

/// `*` matches any run of characters, `?` one; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn missing_tags(
    want: &BTreeMap<String, String>,
    have: &BTreeMap<String, String>,
) -> Option<String> {
    let missing: Vec<String> = want
        .iter()
        .filter(|(k, v)| match have.get(*k) {
            Some(actual) => v.as_str() != "*" && actual != *v,
            None => true,
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    (!missing.is_empty()).then(|| missing.join(", "))
}

impl ImageSelector {
    pub fn validate(&self) -> Result<()> {
        if self.name_pattern.is_none() && self.tags.is_empty() && self.pipeline_arn.is_none() {
            return Err(Error::invalid(
                "image_selector",
                "give name_pattern, tags or pipeline_arn (owners alone would follow every image of an account)",
            ));
        }
        check_accounts("image_selector.owners", &self.owners)
    }

    /// Whether the image is one this fleet follows; otherwise why not.
    pub fn matches(
        &self,
        facts: &ImageFacts,
        build: Option<&ImageBuild>,
    ) -> std::result::Result<(), String> {
        if let Some(pattern) = &self.name_pattern {
            let name = facts.name.as_deref().unwrap_or_default();
            if !glob(pattern, name) {
                return Err(format!("name {name:?} does not match {pattern:?}"));
            }
        }
        if let Some(missing) = missing_tags(&self.tags, &facts.tags) {
            return Err(format!("lacks tags {missing}"));
        }
        if !self.owners.is_empty() {
            let owner = facts.owner.as_deref().unwrap_or("unknown");
            if !self.owners.iter().any(|o| o == owner) {
                return Err(format!("owner {owner} is not one of {:?}", self.owners));
            }
        }
        if let Some(pattern) = &self.pipeline_arn {
            let Some(build) = build else {
                return Err("not an Image Builder build (the fleet selects by pipeline)".into());
            };
            let from = [&build.pipeline, &build.recipe];
            if !from
                .iter()
                .any(|a| a.as_deref().is_some_and(|a| glob(pattern, a)))
            {
                return Err(format!(
                    "built by pipeline {} with recipe {}, not {pattern}",
                    build.pipeline.as_deref().unwrap_or("none"),
                    build.recipe.as_deref().unwrap_or("none")
                ));
            }
        }
        Ok(())
    }
}

impl Admission {
    pub fn validate(&self) -> Result<()> {
        check_accounts("admission.accounts", &self.accounts)
    }

    /// Whether the fleet accepts this image; otherwise why not.
    pub fn admits(&self, image: &ImageId, facts: &ImageFacts) -> std::result::Result<(), String> {
        if !self.accounts.is_empty() {
            let owner = facts.owner.as_deref().unwrap_or("unknown");
            if !self.accounts.iter().any(|a| a == owner) {
                return Err(format!(
                    "{image} is owned by account {owner}, not one the fleet admits ({})",
                    self.accounts.join(", ")
                ));
            }
        }
        if let Some(missing) = missing_tags(&self.required_tags, &facts.tags) {
            return Err(format!("{image} lacks the required tags {missing}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str, owner: &str, tags: &[(&str, &str)]) -> ImageFacts {
        ImageFacts {
            name: Some(name.into()),
            owner: Some(owner.into()),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn globs() {
        for (p, t) in [
            ("web-*", "web-2030"),
            ("*", ""),
            ("w?b", "web"),
            ("*-x-*", "a-x-b"),
            ("a*b*c", "abbbc"),
        ] {
            assert!(glob(p, t), "{p} {t}");
        }
        for (p, t) in [
            ("web-*", "api-1"),
            ("w?b", "wb"),
            ("abc", "abcd"),
            ("a*c", "ab"),
        ] {
            assert!(!glob(p, t), "{p} {t}");
        }
    }

    #[test]
    fn a_selector_needs_every_criterion() {
        let s = ImageSelector {
            name_pattern: Some("web-*".into()),
            tags: [("stage".to_string(), "approved".to_string())].into(),
            owners: vec!["111122223333".into()],
            pipeline_arn: None,
        };
        let ok = facts("web-7", "111122223333", &[("stage", "approved")]);
        assert_eq!(s.matches(&ok, None), Ok(()));
        let wrong_name = facts("api-7", "111122223333", &[("stage", "approved")]);
        assert!(s.matches(&wrong_name, None).unwrap_err().contains("name"));
        let untagged = facts("web-7", "111122223333", &[]);
        assert!(s.matches(&untagged, None).unwrap_err().contains("stage"));
        let foreign = facts("web-7", "444455556666", &[("stage", "approved")]);
        assert!(s.matches(&foreign, None).unwrap_err().contains("owner"));
    }

    #[test]
    fn pipeline_selectors_match_only_builds_of_that_pipeline_or_recipe() {
        let s = ImageSelector {
            pipeline_arn: Some("arn:aws:imagebuilder:*:*:image-pipeline/web".into()),
            ..Default::default()
        };
        let facts = facts("anything", "111122223333", &[]);
        assert!(s.matches(&facts, None).is_err());
        let mut build = ImageBuild {
            pipeline: Some("arn:aws:imagebuilder:us-east-1:111122223333:image-pipeline/web".into()),
            ..Default::default()
        };
        assert_eq!(s.matches(&facts, Some(&build)), Ok(()));
        build.pipeline =
            Some("arn:aws:imagebuilder:us-east-1:111122223333:image-pipeline/api".into());
        assert!(s.matches(&facts, Some(&build)).is_err());
        let by_recipe = ImageSelector {
            pipeline_arn: Some("arn:aws:imagebuilder:*:image-recipe/web/*".into()),
            ..Default::default()
        };
        build.recipe =
            Some("arn:aws:imagebuilder:us-east-1:111122223333:image-recipe/web/1.2.0".into());
        assert_eq!(by_recipe.matches(&facts, Some(&build)), Ok(()));
    }

    #[test]
    fn admission_refuses_foreign_or_untagged_images_with_the_reason() {
        let a = Admission {
            accounts: vec!["111122223333".into()],
            required_tags: [("approved".to_string(), "*".to_string())].into(),
        };
        let image = ImageId::parse("ami-12345678").unwrap();
        assert_eq!(
            a.admits(
                &image,
                &facts("x", "111122223333", &[("approved", "2030-01-01")])
            ),
            Ok(())
        );
        let foreign = a
            .admits(&image, &facts("x", "999999999999", &[("approved", "y")]))
            .unwrap_err();
        assert!(
            foreign.contains("owned by account 999999999999"),
            "{foreign}"
        );
        let untagged = a
            .admits(&image, &facts("x", "111122223333", &[]))
            .unwrap_err();
        assert!(untagged.contains("approved=*"), "{untagged}");
    }

    #[test]
    fn selectors_and_gates_are_validated() {
        assert!(ImageSelector::default().validate().is_err());
        let bad_owner = ImageSelector {
            name_pattern: Some("*".into()),
            owners: vec!["self".into()],
            ..Default::default()
        };
        assert!(bad_owner
            .validate()
            .unwrap_err()
            .to_string()
            .contains("12 digits"));
    }
}
