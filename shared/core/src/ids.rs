//! Validated identifiers. Parsing happens once at the edge; past it, an `ImageId` is known to look
//! like an AMI id and an `InstanceId` like an EC2 instance id, so nothing downstream re-checks.

use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

fn is_hex_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| {
        (rest.len() == 8 || rest.len() == 17)
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $check:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self> {
                let check: fn(&str) -> bool = $check;
                if check(s) {
                    Ok(Self(s.to_string()))
                } else {
                    Err(Error::invalid($field, format!("{s:?} is not {}", $what)))
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        /// Honours width and alignment (`{:<21}`), so ids line up in tables.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }
    };
}

id_type!(
    /// An AMI id: `ami-` followed by 8 or 17 lowercase hex digits.
    ImageId, "image", |s| is_hex_id(s, "ami-"), "an AMI id (ami- followed by 8 or 17 hex digits)"
);
id_type!(
    /// An EC2 instance id: `i-` followed by 8 or 17 lowercase hex digits.
    InstanceId, "instance", |s| is_hex_id(s, "i-"), "an EC2 instance id (i- followed by 8 or 17 hex digits)"
);
id_type!(
    /// A fleet name: 1–32 characters of `a-z`, `0-9` and `-`, starting with a letter. Short and
    /// plain because it is part of DynamoDB keys, EC2 tag values and launch idempotency tokens
    /// (which EC2 caps at 64 characters).
    FleetName, "fleet", |s| {
        !s.is_empty()
            && s.len() <= 32
            && s.as_bytes()[0].is_ascii_lowercase()
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }, "a fleet name (1-32 of a-z, 0-9 and -, starting with a letter)"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ami_ids_accept_both_lengths_and_reject_everything_else() {
        assert!(ImageId::parse("ami-12345678").is_ok());
        assert!(ImageId::parse("ami-0123456789abcdef0").is_ok());
        for bad in [
            "",
            "ami-",
            "ami-1234567",
            "ami-ABCDEF12",
            "i-12345678",
            "ami-12345678 ",
            "snap-12345678",
        ] {
            let err = ImageId::parse(bad).unwrap_err().to_string();
            assert!(err.contains("not an AMI id"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn instance_ids_and_fleet_names_are_checked() {
        assert!(InstanceId::parse("i-0123456789abcdef0").is_ok());
        assert!(InstanceId::parse("ami-12345678").is_err());
        assert!(FleetName::parse("web-1").is_ok());
        for bad in ["", "Web", "1web", "web_1", &"a".repeat(33)] {
            assert!(FleetName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deserializing_validates() {
        let ok: ImageId = serde_json::from_str("\"ami-12345678\"").unwrap();
        assert_eq!(ok.as_str(), "ami-12345678");
        let err = serde_json::from_str::<ImageId>("\"not-an-ami\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an AMI id"), "{err}");
    }
}
