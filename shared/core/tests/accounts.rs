//! Where fleets live: an account is its role's, a region looks like one, and an AWS event acts
//! only on fleets of the account and region it names.

#![allow(clippy::unwrap_used)]

use phoenix_core::model::{FleetSpec, Location};

fn spec(extra: &str) -> phoenix_core::error::Result<FleetSpec> {
    FleetSpec::from_yaml(&format!(
        "name: web\nimage: ami-0123456789abcdef0\ncapacity: 1\ninstance_type: t3.micro\n{extra}"
    ))
    .and_then(|s| s.validate().map(|()| s))
}

#[test]
fn an_account_is_its_roles_and_a_region_looks_like_one() {
    let s = spec("account: {role_arn: \"arn:aws:iam::111111111111:role/phoenix-member\"}").unwrap();
    assert_eq!(s.account.as_ref().unwrap().account_id(), "111111111111");
    // Unquoted ids are numbers to YAML; leading zeros come back.
    let s = spec("account: {id: 011111111111, role_arn: \"arn:aws:iam::011111111111:role/x\"}")
        .unwrap();
    assert_eq!(s.account.unwrap().id.as_deref(), Some("011111111111"));
    for (bad, why) in [
        (
            "account: {id: \"222222222222\", role_arn: \"arn:aws:iam::111111111111:role/x\"}",
            "is not the account of role",
        ),
        (
            "account: {role_arn: \"arn:aws:iam::1111:role/x\"}",
            "not a role's ARN",
        ),
        (
            "account: {role_arn: \"arn:aws:iam::111111111111:user/x\"}",
            "not a role's ARN",
        ),
        (
            "account: {role_arn: \"arn:aws:iam::111111111111:role/x\", external_id: \"a b\"}",
            "external_id",
        ),
        ("region: europe", "not a region"),
    ] {
        let err = spec(bad).unwrap_err().to_string();
        assert!(err.contains(why), "{bad}: {err}");
    }
    assert!(spec("region: us-gov-west-1").is_ok());
}

#[test]
fn an_event_acts_only_on_fleets_of_its_account_and_region() {
    let member =
        spec("account: {role_arn: \"arn:aws:iam::111111111111:role/x\"}\nregion: eu-west-1")
            .unwrap()
            .location();
    let home = Location::default();
    let (ha, hr) = (Some("999999999999"), Some("us-east-1"));
    assert!(member.accepts(ha, hr, Some("111111111111"), Some("eu-west-1")));
    assert!(!member.accepts(ha, hr, Some("222222222222"), Some("eu-west-1")));
    assert!(!member.accepts(ha, hr, Some("111111111111"), Some("us-east-1")));
    assert!(home.accepts(ha, hr, Some("999999999999"), Some("us-east-1")));
    assert!(!home.accepts(ha, hr, Some("111111111111"), Some("us-east-1")));
    // phoenix's own account unknown: a fleet at home takes any allowed account.
    assert!(home.accepts(None, hr, Some("111111111111"), Some("us-east-1")));
}
