//! Where a fleet's instances live when that is not where phoenix runs: another account, reached
//! through a role phoenix assumes there (`Account`), and another region (`Location`).
//!
//! What holds: a role's ARN names its account, so an `id` given must be that one; a fleet's
//! location never changes once it exists (its instances live there); an AWS event about an
//! instance acts on a fleet only when it comes from the fleet's account and region
//! (`Location::accepts`) — the same instance id sent as if from elsewhere is someone else's.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Session tags per `AssumeRole` (STS's limit).
pub const MAX_SESSION_TAGS: usize = 50;

/// The account a fleet lives in, and how phoenix reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The account's id (12 digits); the role's when not given. Read from a string or, as YAML
    /// reads twelve unquoted digits, a number.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "account_id"
    )]
    pub id: Option<String>,
    /// The role phoenix assumes there (the member-account template's).
    pub role_arn: String,
    /// What the role's trust policy requires as `sts:ExternalId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Tags of the session (`aws:PrincipalTag/...` in the member account's policies).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub session_tags: BTreeMap<String, String>,
}

/// Where a fleet lives: none of either is where phoenix runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Location {
    pub account: Option<Account>,
    pub region: Option<String>,
}

fn account_id<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(u64),
    }
    Ok(match Option::<Id>::deserialize(d)? {
        Some(Id::Text(s)) => Some(s),
        // Leading zeros are lost to a number: put back to twelve digits.
        Some(Id::Number(n)) => Some(format!("{n:012}")),
        None => None,
    })
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `ap-southeast-4`: lowercase words joined by
/// dashes, ending in a number.
pub fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts
            .last()
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl Account {
    /// The account of the role's ARN (`arn:<partition>:iam::<account>:role/<name>`).
    fn role_account(&self) -> Option<&str> {
        let mut parts = self.role_arn.splitn(6, ':');
        let (arn, _partition, iam, region, account, resource) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        (arn == "arn"
            && iam == "iam"
            && region.is_empty()
            && is_account_id(account)
            && resource
                .strip_prefix("role/")
                .is_some_and(|n| !n.is_empty()))
        .then_some(account)
    }

    /// The account's id: the one given, else the role's.
    pub fn account_id(&self) -> &str {
        self.id
            .as_deref()
            .or_else(|| self.role_account())
            .unwrap_or_default()
    }

    pub fn validate(&self) -> Result<()> {
        let Some(of_role) = self.role_account() else {
            return Err(Error::invalid(
                "account.role_arn",
                format!(
                    "{:?} is not a role's ARN (arn:aws:iam::<account>:role/<name>)",
                    self.role_arn
                ),
            ));
        };
        if let Some(id) = &self.id {
            if !is_account_id(id) {
                return Err(Error::invalid(
                    "account.id",
                    format!("{id:?} is not an account id (12 digits)"),
                ));
            }
            if id != of_role {
                return Err(Error::invalid(
                    "account.id",
                    format!("{id} is not the account of role {}", self.role_arn),
                ));
            }
        }
        if let Some(x) = &self.external_id {
            let ok = (2..=1224).contains(&x.len())
                && x.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@:/-_".contains(&b));
            if !ok {
                return Err(Error::invalid(
                    "account.external_id",
                    "2 to 1224 letters, digits and +=,.@:/-_",
                ));
            }
        }
        if self.session_tags.len() > MAX_SESSION_TAGS {
            return Err(Error::invalid(
                "account.session_tags",
                format!(
                    "{} tags; at most {MAX_SESSION_TAGS}",
                    self.session_tags.len()
                ),
            ));
        }
        for (k, v) in &self.session_tags {
            if k.is_empty() || k.len() > 128 || v.len() > 256 {
                return Err(Error::invalid(
                    "account.session_tags",
                    format!("{k:?}: keys are 1 to 128 characters, values at most 256"),
                ));
            }
        }
        Ok(())
    }
}

impl Location {
    /// Where phoenix runs.
    pub fn is_home(&self) -> bool {
        self.account.is_none() && self.region.is_none()
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(a) = &self.account {
            a.validate()?;
        }
        match &self.region {
            Some(r) if !is_region(r) => Err(Error::invalid(
                "region",
                format!("{r:?} is not a region (e.g. eu-west-1)"),
            )),
            _ => Ok(()),
        }
    }

    /// Whether an event from `account` in `region` may be about this fleet's instances, phoenix
    /// running in `home_account` and `home_region`. What either side does not know does not
    /// decide (a fleet at home, phoenix's own account unknown, takes any allowed account).
    pub fn accepts(
        &self,
        home_account: Option<&str>,
        home_region: Option<&str>,
        account: Option<&str>,
        region: Option<&str>,
    ) -> bool {
        let mine = self
            .account
            .as_ref()
            .map(Account::account_id)
            .or(home_account);
        let here = self.region.as_deref().or(home_region);
        let same = |a: Option<&str>, b: Option<&str>| match (a, b) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        same(mine, account) && same(here, region)
    }

    /// For people: `account 111111111111 in eu-west-1`, `eu-west-1`, `here`.
    pub fn describe(&self) -> String {
        match (&self.account, &self.region) {
            (Some(a), Some(r)) => format!("account {} in {r}", a.account_id()),
            (Some(a), None) => format!("account {}", a.account_id()),
            (None, Some(r)) => r.clone(),
            (None, None) => "here".into(),
        }
    }
}
