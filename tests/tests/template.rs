//! The deployment templates agree with the Rust sources and stay least-privilege.
//!
//! `infra/template.yaml` (SAM, deployed to AWS), `infra/cfn-plain.yaml` (plain CloudFormation
//! for the local emulator) and `infra/member-account.yaml` (plain CloudFormation, deployed in the
//! accounts whose fleets a control plane manages) are parsed into JSON with CloudFormation short
//! tags (`!Ref`, `!Sub`, `!GetAtt`, ...) expanded to their long form, then checked against
//! `phoenix_core::patterns`, against each other, and against the IAM rules in
//! `least_privilege_violations`.

use phoenix_core::model::{
    TAG_DEFINITION, TAG_FLEET, TAG_FLEETS, TAG_IMAGE, TAG_PROTECTED, TAG_TOKEN,
};
use phoenix_core::patterns::{rules, Function, RuleBus, RuleSpec, RECONCILE_SCHEDULE};
use serde_json::{json, Map, Value};
use serde_yaml::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};

const SAM_TEMPLATE: &str = include_str!("../../infra/template.yaml");
const PLAIN_TEMPLATE: &str = include_str!("../../infra/cfn-plain.yaml");
const MEMBER_TEMPLATE: &str = include_str!("../../infra/member-account.yaml");

// ------------------------------------------------------------------------------------- parsing

/// Parses a CloudFormation YAML template into JSON, expanding short-form intrinsics.
fn parse(text: &str) -> Value {
    let yaml: Yaml = serde_yaml::from_str(text).expect("template is valid YAML");
    to_json(yaml)
}

fn to_json(yaml: Yaml) -> Value {
    match yaml {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(b),
        Yaml::Number(n) => number(&n),
        Yaml::String(s) => Value::String(s),
        Yaml::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Yaml::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (map_key(k), to_json(v)))
                .collect(),
        ),
        Yaml::Tagged(tagged) => intrinsic(&tagged.tag.to_string(), to_json(tagged.value)),
    }
}

fn number(n: &serde_yaml::Number) -> Value {
    match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => json!(i),
        (None, Some(f)) => json!(f),
        (None, None) => panic!("unsupported number {n}"),
    }
}

fn map_key(key: Yaml) -> String {
    match key {
        Yaml::String(s) => s,
        other => panic!("non-string mapping key {other:?}"),
    }
}

/// `!Ref X` → `{"Ref": "X"}`, `!GetAtt A.B` → `{"Fn::GetAtt": ["A", "B"]}`, `!Sub s` →
/// `{"Fn::Sub": s}`, and so on for every other `!Name` → `{"Fn::Name": ...}`.
fn intrinsic(tag: &str, value: Value) -> Value {
    match (tag.trim_start_matches('!'), value) {
        ("Ref", v) => json!({ "Ref": v }),
        ("Condition", v) => json!({ "Condition": v }),
        ("GetAtt", Value::String(dotted)) => {
            let (resource, attribute) = dotted.split_once('.').expect("!GetAtt Resource.Attribute");
            get_att(resource, attribute)
        }
        (name, v) => Value::Object(Map::from_iter([(format!("Fn::{name}"), v)])),
    }
}

fn sam() -> Value {
    parse(SAM_TEMPLATE)
}

fn plain() -> Value {
    parse(PLAIN_TEMPLATE)
}

fn member() -> Value {
    parse(MEMBER_TEMPLATE)
}

/// The logical id a rule for a function must target in one template.
type TargetOf = fn(Function) -> String;

/// Both templates, each with what a rule for `function` must target in it: the function itself
/// in AWS, the SQS queue standing in for it on the emulator.
fn templates() -> [(&'static str, Value, TargetOf); 2] {
    [
        ("template.yaml", sam(), |f| format!("{}Function", stem(f))),
        ("cfn-plain.yaml", plain(), |f| format!("{}Queue", stem(f))),
    ]
}

// ----------------------------------------------------------------------------------- accessors

fn get_att(resource: &str, attribute: &str) -> Value {
    json!({ "Fn::GetAtt": [resource, attribute] })
}

fn reference(name: &str) -> Value {
    json!({ "Ref": name })
}

fn sub(text: &str) -> Value {
    json!({ "Fn::Sub": text })
}

/// `Function::Image` → `"Image"`: the stem of that function's logical ids.
fn stem(function: Function) -> String {
    let name = function.name();
    name[..1].to_uppercase() + &name[1..]
}

fn resources(template: &Value) -> &Map<String, Value> {
    template["Resources"]
        .as_object()
        .expect("template has Resources")
}

fn resource<'a>(template: &'a Value, id: &str) -> &'a Value {
    resources(template)
        .get(id)
        .unwrap_or_else(|| panic!("no resource {id}"))
}

fn properties<'a>(template: &'a Value, id: &str) -> &'a Value {
    &resource(template, id)["Properties"]
}

fn resources_of_type<'a>(template: &'a Value, type_prefix: &str) -> BTreeMap<&'a str, &'a Value> {
    resources(template)
        .iter()
        .filter(|(_, r)| {
            r["Type"]
                .as_str()
                .is_some_and(|t| t.starts_with(type_prefix))
        })
        .map(|(id, r)| (id.as_str(), r))
        .collect()
}

/// Event rules by logical id: those with an `EventPattern` (`scheduled` false) or a
/// `ScheduleExpression` (`scheduled` true).
fn event_rules(template: &Value, scheduled: bool) -> BTreeMap<&str, &Value> {
    let key = if scheduled {
        "ScheduleExpression"
    } else {
        "EventPattern"
    };
    resources_of_type(template, "AWS::Events::Rule")
        .into_iter()
        .map(|(id, r)| (id, &r["Properties"]))
        .filter(|(_, p)| !p[key].is_null())
        .collect()
}

fn only_target(rule: &Value) -> &Value {
    let targets = rule["Targets"].as_array().expect("rule has Targets");
    assert_eq!(targets.len(), 1, "one target per rule: {rule}");
    &targets[0]
}

/// A single value or a list, as IAM allows for `Action` and `Resource`.
fn one_or_many(value: &Value) -> Vec<&Value> {
    match value {
        Value::Null => vec![],
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    }
}

// --------------------------------------------------------------------------- a. event patterns

#[test]
fn every_core_rule_is_in_both_templates_with_its_pattern_and_target() {
    let expected_ids: BTreeSet<String> =
        rules().iter().map(|r| format!("{}Rule", r.name)).collect();
    for (label, template, target_of) in templates() {
        let found = event_rules(&template, false);
        let found_ids: BTreeSet<String> = found.keys().map(|id| id.to_string()).collect();
        assert_eq!(
            found_ids, expected_ids,
            "{label}: pattern rules differ from phoenix_core::patterns::rules()"
        );
        for spec in rules() {
            let rule = found[format!("{}Rule", spec.name).as_str()];
            assert_eq!(
                rule["EventPattern"], spec.pattern,
                "{label}: pattern of {}",
                spec.name
            );
            let target = only_target(rule);
            assert_eq!(
                target["Arn"],
                get_att(&target_of(spec.function), "Arn"),
                "{label}: target of {}",
                spec.name
            );
        }
    }
}

#[test]
fn reconcile_runs_on_the_core_schedule_on_the_default_bus() {
    for (label, template, target_of) in templates() {
        let scheduled = event_rules(&template, true);
        assert_eq!(
            scheduled.keys().copied().collect::<Vec<_>>(),
            ["ReconcileScheduleRule"],
            "{label}"
        );
        let rule = scheduled["ReconcileScheduleRule"];
        assert_eq!(rule["ScheduleExpression"], RECONCILE_SCHEDULE, "{label}");
        assert!(
            rule["EventBusName"].is_null(),
            "{label}: scheduled rules exist only on the default bus"
        );
        assert_eq!(
            only_target(rule)["Arn"],
            get_att(&target_of(Function::Reconcile), "Arn"),
            "{label}"
        );
    }
}

/// phoenix's own rules listen on its bus; the rules for AWS's events on the default bus (no
/// `EventBusName`), the only bus AWS services put events on.
#[test]
fn pattern_rules_listen_on_the_bus_their_events_arrive_on() {
    let sam_bus =
        json!({ "Fn::If": ["CreateBus", get_att("EventBus", "Name"), reference("EventBusName")] });
    let plain_bus = get_att("EventBus", "Name");
    for (label, template, phoenix_bus) in [
        ("template.yaml", sam(), sam_bus),
        ("cfn-plain.yaml", plain(), plain_bus),
    ] {
        let found = event_rules(&template, false);
        for spec in rules() {
            let rule = found[format!("{}Rule", spec.name).as_str()];
            let expected = match spec.bus {
                RuleBus::Phoenix => phoenix_bus.clone(),
                RuleBus::Default => Value::Null,
            };
            assert_eq!(rule["EventBusName"], expected, "{label}: {}", spec.name);
        }
    }
}

#[test]
fn every_rule_may_dead_letter() {
    for (label, template, _) in templates() {
        let policy = properties(&template, "DeadLetterQueuePolicy");
        let sources: Vec<&Value> = statements(policy)
            .into_iter()
            .flat_map(|s| one_or_many(&s["Condition"]["ArnEquals"]["aws:SourceArn"]))
            .collect();
        let all_rules = event_rules(&template, false)
            .into_iter()
            .chain(event_rules(&template, true));
        for (id, _) in all_rules {
            assert!(
                sources.contains(&&get_att(id, "Arn")),
                "{label}: {id} may not send to the dead-letter queue"
            );
        }
    }
}

// ------------------------------------------------------------------------------------- b. IAM

/// Every statement of every policy in the template: identity policies and resource policies,
/// and both branches of a statement present only under a condition (`!If`).
fn statements(value: &Value) -> Vec<&Value> {
    match value {
        Value::Object(map) => map
            .iter()
            .flat_map(|(key, v)| {
                if key == "Statement" {
                    one_or_many(v).into_iter().flat_map(branches).collect()
                } else {
                    statements(v)
                }
            })
            .collect(),
        Value::Array(items) => items.iter().flat_map(statements).collect(),
        _ => vec![],
    }
}

/// What an item of a list may be: itself, or either branch of an `!If` (none for `AWS::NoValue`).
fn branches(item: &Value) -> Vec<&Value> {
    match item["Fn::If"].as_array().map(Vec::as_slice) {
        Some([_, yes, no]) => [yes, no]
            .into_iter()
            .filter(|v| **v != reference("AWS::NoValue"))
            .flat_map(branches)
            .collect(),
        _ => vec![item],
    }
}

fn actions(statement: &Value) -> Vec<&str> {
    one_or_many(&statement["Action"])
        .into_iter()
        .filter_map(Value::as_str)
        .collect()
}

fn statement_resources(statement: &Value) -> Vec<&Value> {
    one_or_many(&statement["Resource"])
}

fn grants(statement: &Value, action: &str) -> bool {
    actions(statement).contains(&action)
}

fn condition<'a>(statement: &'a Value, operator: &str, key: &str) -> &'a Value {
    &statement["Condition"][operator][key]
}

/// A condition value that is exactly `expected`, written as a string or a one-element list.
fn is_exactly(value: &Value, expected: &str) -> bool {
    value == expected || *value == json!([expected])
}

/// The ARN text of a literal or `!Sub` resource.
fn arn_text(resource: &Value) -> String {
    resource
        .as_str()
        .or_else(|| resource["Fn::Sub"].as_str())
        .map_or_else(|| resource.to_string(), str::to_owned)
}

/// `arn:...:ec2:region:account:instance/*` → `instance`.
fn ec2_resource_type(arn: &str) -> &str {
    let last = arn.rsplit(':').next().unwrap_or(arn);
    last.split('/').next().unwrap_or(last)
}

/// Where a template's statements apply, which the ARNs they may name depend on.
struct Scope {
    /// The region part of those ARNs: the control plane's own region, or any (`*`) for the member
    /// role, created once for every region of its account.
    region: &'static str,
    /// The bus the template's identity policies may put events on.
    publish_bus: &'static str,
    /// The bus a resource policy may let other accounts put events on, if any.
    receive_bus: Option<&'static str>,
}

/// `template.yaml` and `cfn-plain.yaml`: the functions publish on phoenix's bus; the member
/// accounts forward AWS's events to the default bus, where the rules for them listen.
const CONTROL_PLANE: Scope = Scope {
    region: "${AWS::Region}",
    publish_bus:
        "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/${EventBusName}",
    receive_bus: Some(
        "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/default",
    ),
};

/// `member-account.yaml`: its rules forward to the control plane's default bus.
const MEMBER: Scope = Scope {
    region: "*",
    publish_bus: CONTROL_PLANE_BUS,
    receive_bus: None,
};

/// The bus a member account forwards AWS's events to: the control plane account's default bus.
const CONTROL_PLANE_BUS: &str =
    "arn:${AWS::Partition}:events:${ControlPlaneRegion}:${ControlPlaneAccountId}:event-bus/default";

type IamRule = fn(&Value, &Scope) -> Option<String>;

/// What each allowed statement must satisfy; a rule returns a description of what it found wrong.
const IAM_RULES: &[(&str, IamRule)] = &[
    ("no wildcard or negated actions", no_wildcard_actions),
    ("no public principal", no_public_principal),
    (
        "Resource \"*\" only for Describe actions",
        star_resource_only_for_describe,
    ),
    (
        "RunInstances creates only fleet-tagged instances",
        run_instances_only_tagged,
    ),
    (
        "RunInstances uses only images of the allowed accounts",
        run_instances_only_allowed_images,
    ),
    (
        "CreateTags only at launch, or only phoenix's keys on instances",
        create_tags_only_at_launch_or_phoenix_keys,
    ),
    (
        "TerminateInstances only on fleet-tagged instances",
        terminate_only_tagged,
    ),
    (
        "DeleteTags only phoenix's keys of fleet-tagged instances",
        delete_tags_only_phoenix_keys_of_fleet_instances,
    ),
    (
        "PassRole only the instance role, only to EC2",
        pass_role_only_instance_role,
    ),
    (
        "AssumeRole/TagSession only the member role",
        assume_only_the_member_role,
    ),
    (
        "DynamoDB only on the fleet table",
        dynamodb_only_fleet_table,
    ),
    (
        "PutEvents only on the phoenix bus",
        put_events_only_phoenix_bus,
    ),
    (
        "other accounts put only events of AWS's sources",
        other_accounts_put_only_aws_events,
    ),
    (
        "Register/DeregisterTargets only in tagged target groups",
        targets_only_in_tagged_groups,
    ),
    (
        "Auto Scaling changes only to fleet-tagged groups",
        auto_scaling_only_fleet_groups,
    ),
];

/// Violations of phoenix's least-privilege rules anywhere in the template; empty when it is fine.
fn least_privilege_violations(template: &Value) -> Vec<String> {
    violations_in(template, &CONTROL_PLANE)
}

fn violations_in(template: &Value, scope: &Scope) -> Vec<String> {
    let allowed = statements(template)
        .into_iter()
        .filter(|s| s["Effect"] == "Allow");
    allowed
        .flat_map(|statement| {
            let sid = statement["Sid"].as_str().unwrap_or("(no Sid)");
            IAM_RULES.iter().filter_map(move |(rule, check)| {
                check(statement, scope).map(|why| format!("{sid}: {rule}: {why}"))
            })
        })
        .collect()
}

/// An identity policy's statement (a trust or resource policy's names a `Principal`).
fn is_identity(statement: &Value) -> bool {
    statement["Principal"].is_null()
}

fn no_wildcard_actions(statement: &Value, _: &Scope) -> Option<String> {
    if !statement["NotAction"].is_null() || !statement["NotResource"].is_null() {
        return Some("NotAction/NotResource".into());
    }
    let wild: Vec<_> = actions(statement)
        .into_iter()
        .filter(|a| a.contains('*'))
        .collect();
    (!wild.is_empty()).then(|| format!("{wild:?}"))
}

fn no_public_principal(statement: &Value, _: &Scope) -> Option<String> {
    let principal = &statement["Principal"];
    (principal == "*" || principal["AWS"] == "*").then(|| principal.to_string())
}

/// Read-only actions, which support no resource-level permissions.
const DESCRIBE: [&str; 3] = [
    "ec2:Describe",
    "elasticloadbalancing:Describe",
    "autoscaling:Describe",
];

fn star_resource_only_for_describe(statement: &Value, _: &Scope) -> Option<String> {
    let star = statement_resources(statement).iter().any(|r| *r == "*");
    let other: Vec<_> = actions(statement)
        .into_iter()
        .filter(|a| !DESCRIBE.iter().any(|prefix| a.starts_with(prefix)))
        .collect();
    (star && !other.is_empty()).then(|| format!("{other:?} on \"*\""))
}

fn run_instances_only_tagged(statement: &Value, _: &Scope) -> Option<String> {
    if !grants(statement, "ec2:RunInstances") {
        return None;
    }
    let tagged = sets_fleet_tag(statement);
    let arns: Vec<String> = statement_resources(statement)
        .into_iter()
        .map(arn_text)
        .collect();
    let bad: Vec<&String> = arns
        .iter()
        .filter(|arn| match ec2_resource_type(arn) {
            "instance" | "volume" | "network-interface" => !tagged,
            "image" | "subnet" | "security-group" | "key-pair" | "launch-template" => false,
            _ => true,
        })
        .collect();
    (!bad.is_empty()).then(|| format!("{bad:?} (tag condition present: {tagged})"))
}

/// The request sets `phoenix:fleet` (to any value).
fn sets_fleet_tag(statement: &Value) -> bool {
    condition(
        statement,
        "StringLike",
        &format!("aws:RequestTag/{TAG_FLEET}"),
    ) == "*"
}

/// The resource carries `phoenix:fleet` (any value) already.
fn on_fleet_tagged(statement: &Value) -> bool {
    condition(
        statement,
        "StringLike",
        &format!("aws:ResourceTag/{TAG_FLEET}"),
    ) == "*"
}

/// `phoenix:*`: the pattern of phoenix's own tag keys, those it puts on instances and takes off.
fn phoenix_keys() -> String {
    let (prefix, _) = TAG_FLEET
        .split_once(':')
        .expect("phoenix's tag keys have a prefix");
    format!("{prefix}:*")
}

/// Every tag key the request names is one of phoenix's own.
fn only_phoenix_keys(statement: &Value) -> bool {
    is_exactly(
        condition(statement, "ForAllValues:StringLike", "aws:TagKeys"),
        &phoenix_keys(),
    )
}

/// The statement names instances alone (`instance/*`, of any region).
fn only_instances(statement: &Value) -> bool {
    let found = statement_resources(statement);
    !found.is_empty()
        && found.into_iter().all(|r| {
            let arn = arn_text(r);
            arn.starts_with("arn:") && ec2_resource_type(&arn) == "instance"
        })
}

/// The owners whose images RunInstances may use: `AllowedImageAccounts`, or this account alone
/// when it is empty — the list the functions get as `PHOENIX_ALLOWED_IMAGE_ACCOUNTS`.
fn allowed_image_owners() -> Value {
    json!({"Fn::If": [
        "OwnImagesOnly",
        [reference("AWS::AccountId")],
        reference("AllowedImageAccounts"),
    ]})
}

/// A statement letting RunInstances use images (`image/*`, or every resource) must hold them to
/// the allowed owners with `StringEquals` on `ec2:Owner`, the key EC2 sets on an image resource
/// to its owning account's id (or to the alias `amazon` / `aws-marketplace` of the images listed
/// under one, which no account id matches).
fn run_instances_only_allowed_images(statement: &Value, _: &Scope) -> Option<String> {
    if !grants(statement, "ec2:RunInstances") {
        return None;
    }
    let images: Vec<String> = statement_resources(statement)
        .into_iter()
        .map(arn_text)
        .filter(|arn| arn == "*" || ec2_resource_type(arn) == "image")
        .collect();
    let owners = condition(statement, "StringEquals", "ec2:Owner");
    (!images.is_empty() && *owners != allowed_image_owners())
        .then(|| format!("{images:?} with ec2:Owner {owners}"))
}

/// Tags are created at launch (`ec2:CreateAction` `RunInstances`), or — adoption — on instances
/// alone, by a request that sets `phoenix:fleet` and only phoenix's keys. `ForAllValues` holds for
/// a request with no keys at all; requiring `phoenix:fleet` is what makes it name one.
fn create_tags_only_at_launch_or_phoenix_keys(statement: &Value, _: &Scope) -> Option<String> {
    if !grants(statement, "ec2:CreateTags") {
        return None;
    }
    let at_launch = is_exactly(
        condition(statement, "StringEquals", "ec2:CreateAction"),
        "RunInstances",
    );
    let adoption =
        only_instances(statement) && sets_fleet_tag(statement) && only_phoenix_keys(statement);
    (!at_launch && !adoption)
        .then(|| format!("{} {}", statement["Resource"], statement["Condition"]))
}

fn terminate_only_tagged(statement: &Value, _: &Scope) -> Option<String> {
    let keys = [
        format!("aws:ResourceTag/{TAG_FLEET}"),
        format!("ec2:ResourceTag/{TAG_FLEET}"),
    ];
    let tagged = ["StringLike", "StringEquals"].iter().any(|op| {
        keys.iter()
            .any(|key| !condition(statement, op, key).is_null())
    });
    (grants(statement, "ec2:TerminateInstances") && !tagged)
        .then(|| statement["Condition"].to_string())
}

/// Tags are deleted only from instances tagged `phoenix:fleet`, only phoenix's keys, and only
/// keys the request names: `DeleteTags` naming no key deletes every tag, and `ForAllValues` holds
/// for no keys, so `Null` `aws:TagKeys` `false` is what keeps the others.
fn delete_tags_only_phoenix_keys_of_fleet_instances(
    statement: &Value,
    _: &Scope,
) -> Option<String> {
    if !grants(statement, "ec2:DeleteTags") {
        return None;
    }
    let names_keys = is_exactly(condition(statement, "Null", "aws:TagKeys"), "false");
    let fine = only_instances(statement)
        && on_fleet_tagged(statement)
        && only_phoenix_keys(statement)
        && names_keys;
    (!fine).then(|| format!("{} {}", statement["Resource"], statement["Condition"]))
}

/// Registering and deregistering targets only in the account's target groups, and only in those
/// tagged `phoenix:fleets` (the groups a fleet file may name).
fn targets_only_in_tagged_groups(statement: &Value, scope: &Scope) -> Option<String> {
    let acts = [
        "elasticloadbalancing:RegisterTargets",
        "elasticloadbalancing:DeregisterTargets",
    ];
    if !acts.iter().any(|a| grants(statement, a)) {
        return None;
    }
    let groups = sub(&format!(
        "arn:${{AWS::Partition}}:elasticloadbalancing:{}:${{AWS::AccountId}}:targetgroup/*",
        scope.region
    ));
    let tagged = condition(
        statement,
        "StringLike",
        &format!("aws:ResourceTag/{TAG_FLEETS}"),
    ) == "*";
    (statement_resources(statement) != [&groups] || !tagged)
        .then(|| format!("{} {}", statement["Resource"], statement["Condition"]))
}

/// What phoenix may do to an Auto Scaling group it takes over.
const AUTO_SCALING_CHANGES: [&str; 3] = [
    "autoscaling:SuspendProcesses",
    "autoscaling:DetachInstances",
    "autoscaling:UpdateAutoScalingGroup",
];

/// Auto Scaling actions other than describing: only those of a takeover, only on the account's
/// groups tagged `phoenix:fleet`. Tagging a group is not among them: the operator does it, so the
/// functions cannot bring another group within reach.
fn auto_scaling_only_fleet_groups(statement: &Value, scope: &Scope) -> Option<String> {
    let changes: Vec<&str> = actions(statement)
        .into_iter()
        .filter(|a| a.starts_with("autoscaling:") && !a.starts_with("autoscaling:Describe"))
        .collect();
    if changes.is_empty() {
        return None;
    }
    let other: Vec<&&str> = changes
        .iter()
        .filter(|a| !AUTO_SCALING_CHANGES.contains(a))
        .collect();
    let groups = sub(&format!(
        "arn:${{AWS::Partition}}:autoscaling:{}:${{AWS::AccountId}}:autoScalingGroup:*:autoScalingGroupName/*",
        scope.region
    ));
    (!other.is_empty()
        || statement_resources(statement) != [&groups]
        || !on_fleet_tagged(statement))
    .then(|| {
        format!(
            "{other:?} {} {}",
            statement["Resource"], statement["Condition"]
        )
    })
}

fn pass_role_only_instance_role(statement: &Value, _: &Scope) -> Option<String> {
    if !grants(statement, "iam:PassRole") {
        return None;
    }
    let only_instance_role = statement_resources(statement) == [&reference("InstanceRoleArn")];
    let only_ec2 = is_exactly(
        condition(statement, "StringEquals", "iam:PassedToService"),
        "ec2.amazonaws.com",
    );
    (!only_instance_role || !only_ec2)
        .then(|| format!("{} {}", statement["Resource"], statement["Condition"]))
}

/// The role phoenix assumes in a member account: that name only, whichever the account.
fn member_role_arns() -> Value {
    sub("arn:${AWS::Partition}:iam::*:role/${MemberRoleName}")
}

/// Assuming roles (and tagging their sessions) only the member role; trust policies, which grant
/// `sts:AssumeRole` to a principal, are the other side of it.
fn assume_only_the_member_role(statement: &Value, _: &Scope) -> Option<String> {
    let assumes = ["sts:AssumeRole", "sts:TagSession"]
        .iter()
        .any(|a| grants(statement, a));
    (is_identity(statement) && assumes && statement_resources(statement) != [&member_role_arns()])
        .then(|| statement["Resource"].to_string())
}

fn dynamodb_only_fleet_table(statement: &Value, _: &Scope) -> Option<String> {
    if !actions(statement)
        .iter()
        .any(|a| a.starts_with("dynamodb:"))
    {
        return None;
    }
    let allowed = [
        get_att("FleetTable", "Arn"),
        sub("${FleetTable.Arn}/index/*"),
    ];
    let found = statement_resources(statement);
    (found.is_empty() || found.iter().any(|r| !allowed.contains(r)))
        .then(|| statement["Resource"].to_string())
}

/// Identity policies put events on the bus phoenix publishes on; a resource policy lets other
/// accounts put events on the bus that receives them, and no other.
fn put_events_only_phoenix_bus(statement: &Value, scope: &Scope) -> Option<String> {
    if !grants(statement, "events:PutEvents") {
        return None;
    }
    let bus = if is_identity(statement) {
        Some(scope.publish_bus)
    } else {
        scope.receive_bus
    };
    let fine = bus.is_some_and(|bus| statement_resources(statement) == [&sub(bus)]);
    (!fine).then(|| statement["Resource"].to_string())
}

/// Other accounts may put only events whose sources are all AWS's (`aws.*`): no account can put
/// such an event itself, so they arrive only as forwarded by a rule, and none is phoenix's own.
fn other_accounts_put_only_aws_events(statement: &Value, _: &Scope) -> Option<String> {
    if is_identity(statement) || !grants(statement, "events:PutEvents") {
        return None;
    }
    let sources = condition(statement, "ForAllValues:StringEquals", "events:source");
    let only_aws = sources.as_array().is_some_and(|s| {
        !s.is_empty()
            && s.iter()
                .all(|v| v.as_str().is_some_and(|v| v.starts_with("aws.")))
    });
    (!only_aws).then(|| statement["Condition"].to_string())
}

#[test]
fn both_templates_are_least_privilege() {
    for (label, template, _) in templates() {
        assert_eq!(
            least_privilege_violations(&template),
            Vec::<String>::new(),
            "{label}"
        );
    }
}

#[test]
fn every_tag_key_of_phoenix_matches_the_pattern_its_policies_allow() {
    // Those it sets on adoption and takes off on release.
    let keys = phoenix_keys();
    let prefix = keys.trim_end_matches('*');
    for key in [
        TAG_FLEET,
        TAG_TOKEN,
        TAG_IMAGE,
        TAG_DEFINITION,
        TAG_PROTECTED,
    ] {
        assert!(key.starts_with(prefix), "{key} is not {keys}");
    }
}

#[test]
fn iam_resources_are_identical_in_both_templates() {
    let (sam, plain) = (sam(), plain());
    let iam_sam = resources_of_type(&sam, "AWS::IAM::");
    assert!(!iam_sam.is_empty());
    assert_eq!(iam_sam, resources_of_type(&plain, "AWS::IAM::"));
}

#[test]
fn the_allowed_image_accounts_reach_the_functions_and_the_policy_alike() {
    // One parameter and one condition in both templates; the functions get the same owners the
    // policy allows (this account's id when the parameter is empty).
    let own_images_only = json!({"Fn::Equals": [
        {"Fn::Join": ["", reference("AllowedImageAccounts")]},
        "",
    ]});
    for (label, template, _) in templates() {
        let parameter = &template["Parameters"]["AllowedImageAccounts"];
        assert_eq!(parameter["Type"], "CommaDelimitedList", "{label}");
        assert_eq!(parameter["Default"], "", "{label}");
        assert_eq!(parameter["AllowedPattern"], "^([0-9]{12})?$", "{label}");
        assert_eq!(
            template["Conditions"]["OwnImagesOnly"], own_images_only,
            "{label}"
        );
        let image_statements: Vec<&Value> =
            statements(properties(&template, "PhoenixControllerPolicy"))
                .into_iter()
                .filter(|s| grants(s, "ec2:RunInstances") && uses_images(s))
                .collect();
        assert_eq!(image_statements.len(), 1, "{label}: {image_statements:?}");
        assert_eq!(
            *condition(image_statements[0], "StringEquals", "ec2:Owner"),
            allowed_image_owners(),
            "{label}"
        );
    }
    let sam = sam();
    assert_eq!(
        sam["Globals"]["Function"]["Environment"]["Variables"]["PHOENIX_ALLOWED_IMAGE_ACCOUNTS"],
        json!({"Fn::If": [
            "OwnImagesOnly",
            reference("AWS::AccountId"),
            {"Fn::Join": [",", reference("AllowedImageAccounts")]},
        ]})
    );
}

/// The rules for AWS's events: those on the default bus, the only bus AWS services put them on.
fn aws_rules() -> Vec<RuleSpec> {
    rules()
        .into_iter()
        .filter(|r| r.bus == RuleBus::Default)
        .collect()
}

/// The sources of AWS's events phoenix listens for.
fn aws_sources() -> BTreeSet<String> {
    aws_rules()
        .iter()
        .flat_map(|r| one_or_many(&r.pattern["source"]))
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn member_accounts_may_forward_only_aws_events_to_the_default_bus() {
    let sam = sam();
    let parameter = &sam["Parameters"]["MemberAccounts"];
    assert_eq!(parameter["Type"], "CommaDelimitedList");
    assert_eq!(parameter["Default"], "");
    assert_eq!(parameter["AllowedPattern"], "^([0-9]{12})?$");
    assert_eq!(
        sam["Conditions"]["HasMemberAccounts"],
        json!({"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", reference("MemberAccounts")]}, ""]}]})
    );
    let policies = resources_of_type(&sam, "AWS::Events::EventBusPolicy");
    assert_eq!(
        policies.keys().copied().collect::<Vec<_>>(),
        ["MemberAccountsForwarding"]
    );
    let policy = policies["MemberAccountsForwarding"];
    assert_eq!(policy["Condition"], "HasMemberAccounts");
    // The rules for AWS's events listen on the default bus, whatever bus phoenix's own use.
    assert_eq!(policy["Properties"]["EventBusName"], "default");
    let statement = &policy["Properties"]["Statement"];
    assert_eq!(statement["Effect"], "Allow");
    assert_eq!(
        statement["Principal"],
        json!({"AWS": reference("MemberAccounts")})
    );
    assert_eq!(actions(statement), ["events:PutEvents"]);
    assert_eq!(
        statement_resources(statement),
        [&sub(CONTROL_PLANE.receive_bus.expect("a bus receives"))]
    );
    let sources: BTreeSet<String> = one_or_many(condition(
        statement,
        "ForAllValues:StringEquals",
        "events:source",
    ))
    .into_iter()
    .filter_map(|s| s.as_str().map(str::to_owned))
    .collect();
    assert_eq!(
        sources,
        aws_sources(),
        "the sources the member accounts forward"
    );
}

#[test]
fn the_member_accounts_reach_the_functions_with_the_allowed_event_accounts() {
    let sam = sam();
    assert_eq!(
        sam["Globals"]["Function"]["Environment"]["Variables"]["PHOENIX_ALLOWED_ACCOUNTS"],
        json!({"Fn::Join": [",", [
            reference("AWS::AccountId"),
            {"Fn::Join": [",", reference("AllowedEventAccounts")]},
            {"Fn::Join": [",", reference("MemberAccounts")]},
        ]]})
    );
    // And which account is home: events about a fleet at home must come from it.
    assert_eq!(
        sam["Globals"]["Function"]["Environment"]["Variables"]["PHOENIX_ACCOUNT"],
        reference("AWS::AccountId")
    );
}

#[test]
fn the_ec2_call_budget_reaches_the_functions_and_its_counters_expire() {
    let sam = sam();
    let budget = &sam["Parameters"]["Ec2CallsPerSecond"];
    assert_eq!(budget["Default"], 10);
    assert_eq!(budget["MinValue"], 0);
    assert_eq!(
        sam["Globals"]["Function"]["Environment"]["Variables"]["PHOENIX_EC2_CALLS_PER_SECOND"],
        reference("Ec2CallsPerSecond")
    );
    // The counters are the fleet table's items with a TTL on `expires_at`, written in
    // transactions the functions may make.
    let table = &sam["Resources"]["FleetTable"]["Properties"];
    assert_eq!(
        table["TimeToLiveSpecification"]["AttributeName"],
        "expires_at"
    );
}

#[test]
fn the_member_role_name_is_the_one_the_control_plane_may_assume() {
    let (sam, plain, member) = (sam(), plain(), member());
    let name = &sam["Parameters"]["MemberRoleName"];
    assert_eq!(name["Default"], "phoenix-member");
    for (label, other) in [
        (
            "cfn-plain.yaml MemberRoleName",
            &plain["Parameters"]["MemberRoleName"],
        ),
        (
            "member-account.yaml RoleName",
            &member["Parameters"]["RoleName"],
        ),
    ] {
        for field in ["Type", "Default", "AllowedPattern"] {
            assert_eq!(other[field], name[field], "{label} {field}");
        }
    }
    let assume: Vec<&Value> = statements(properties(&sam, "PhoenixControllerPolicy"))
        .into_iter()
        .filter(|s| grants(s, "sts:AssumeRole"))
        .collect();
    assert_eq!(assume.len(), 1);
    assert_eq!(statement_resources(assume[0]), [&member_role_arns()]);
}

/// Allowed actions of the shared controller policy.
fn controller_actions(template: &Value) -> BTreeSet<&str> {
    statements(properties(template, "PhoenixControllerPolicy"))
        .into_iter()
        .flat_map(actions)
        .collect()
}

#[test]
fn the_controller_policy_grants_what_the_functions_need() {
    let sam = sam();
    let granted = controller_actions(&sam);
    for needed in [
        "ec2:RunInstances",
        "ec2:CreateTags",
        "ec2:DeleteTags",
        "ec2:TerminateInstances",
        "ec2:DescribeInstances",
        "ec2:DescribeInstanceStatus",
        "ec2:DescribeImages",
        "ec2:DescribeLaunchTemplates",
        "ec2:DescribeSubnets",
        "elasticloadbalancing:DescribeTargetGroups",
        "elasticloadbalancing:DescribeTargetGroupAttributes",
        "elasticloadbalancing:DescribeTargetHealth",
        "elasticloadbalancing:DescribeTags",
        "elasticloadbalancing:RegisterTargets",
        "elasticloadbalancing:DeregisterTargets",
        "iam:PassRole",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:Query",
        "dynamodb:ConditionCheckItem",
        "dynamodb:BatchGetItem",
        "events:PutEvents",
        "sqs:SendMessage",
        "imagebuilder:GetImage",
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:DescribeInstanceRefreshes",
        "autoscaling:SuspendProcesses",
        "autoscaling:DetachInstances",
        "autoscaling:UpdateAutoScalingGroup",
        "sts:AssumeRole",
        "sts:TagSession",
    ] {
        assert!(
            granted.contains(needed),
            "{needed} missing from PhoenixControllerPolicy"
        );
    }
}

#[test]
fn each_function_role_has_the_controller_policy_and_only_its_own_logs() {
    let sam = sam();
    for function in Function::ALL {
        let role = properties(&sam, &format!("{}FunctionRole", stem(function)));
        assert_eq!(
            role["ManagedPolicyArns"],
            json!([reference("PhoenixControllerPolicy")])
        );
        let inline: Vec<&Value> = one_or_many(&role["Policies"])
            .into_iter()
            .flat_map(statements)
            .collect();
        let log_group = format!(
            ":log-group:/aws/lambda/${{AWS::StackName}}-{}:*",
            function.name()
        );
        for statement in inline {
            assert!(
                actions(statement).iter().all(|a| a.starts_with("logs:")),
                "{statement}"
            );
            assert!(
                statement_resources(statement)
                    .iter()
                    .all(|r| arn_text(r).ends_with(&log_group)),
                "{statement}"
            );
        }
    }
}

/// The first statement of the controller policy that grants `action` and satisfies `extra`.
fn controller_statement<'a>(
    template: &'a mut Value,
    action: &str,
    extra: fn(&Value) -> bool,
) -> &'a mut Value {
    template["Resources"]["PhoenixControllerPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        .as_array_mut()
        .expect("controller policy statements")
        .iter_mut()
        .find(|s| grants(s, action) && extra(s))
        .unwrap_or_else(|| panic!("no controller statement grants {action}"))
}

fn any(_: &Value) -> bool {
    true
}

fn has_condition(statement: &Value) -> bool {
    !statement["Condition"].is_null()
}

fn has_no_condition(statement: &Value) -> bool {
    statement["Condition"].is_null()
}

/// A statement letting RunInstances use images.
fn uses_images(statement: &Value) -> bool {
    statement_resources(statement)
        .into_iter()
        .any(|r| ec2_resource_type(&arn_text(r)) == "image")
}

/// A `CreateTags` statement for adoption (not at launch): it limits the keys.
fn for_adoption(statement: &Value) -> bool {
    !statement["Condition"]["ForAllValues:StringLike"].is_null()
}

fn remove_condition(statement: &mut Value) {
    statement
        .as_object_mut()
        .expect("statement")
        .remove("Condition");
}

/// Removes one operator (`StringLike`, `Null`, ...) of a statement's condition.
fn remove_operator(statement: &mut Value, operator: &str) {
    statement["Condition"]
        .as_object_mut()
        .expect("condition")
        .remove(operator)
        .unwrap_or_else(|| panic!("no {operator} in {statement}"));
}

/// The statement of the bus policy letting member accounts forward events.
fn member_forwarding(template: &mut Value) -> &mut Value {
    &mut template["Resources"]["MemberAccountsForwarding"]["Properties"]["Statement"]
}

type Loosening = fn(&mut Value);

/// Ways a policy could be loosened by mistake, each with the rule that must catch it.
const LOOSENINGS: &[(&str, &str, Loosening)] = &[
    (
        "terminate without the fleet tag",
        "TerminateInstances only",
        |t| remove_condition(controller_statement(t, "ec2:TerminateInstances", any)),
    ),
    ("launch untagged instances", "RunInstances creates", |t| {
        remove_condition(controller_statement(t, "ec2:RunInstances", has_condition))
    }),
    (
        "launch into instance/* without the tag condition",
        "RunInstances creates",
        |t| {
            let arn = sub("arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*");
            let statement = controller_statement(t, "ec2:RunInstances", has_no_condition);
            statement["Resource"]
                .as_array_mut()
                .expect("resources")
                .push(arn);
        },
    ),
    ("launch anything", "Resource \"*\"", |t| {
        controller_statement(t, "ec2:RunInstances", has_no_condition)["Resource"] = json!("*")
    }),
    (
        "launch images of any account",
        "images of the allowed accounts",
        |t| remove_condition(controller_statement(t, "ec2:RunInstances", uses_images)),
    ),
    (
        "launch images among the referenced resources",
        "images of the allowed accounts",
        |t| {
            let arn = sub("arn:${AWS::Partition}:ec2:${AWS::Region}::image/*");
            let statement = controller_statement(t, "ec2:RunInstances", has_no_condition);
            statement["Resource"]
                .as_array_mut()
                .expect("resources")
                .push(arn);
        },
    ),
    (
        "launch images of any owner by pattern",
        "images of the allowed accounts",
        |t| {
            controller_statement(t, "ec2:RunInstances", uses_images)["Condition"] =
                json!({"StringLike": {"ec2:Owner": "*"}})
        },
    ),
    (
        "launch images of another list of owners",
        "images of the allowed accounts",
        |t| {
            controller_statement(t, "ec2:RunInstances", uses_images)["Condition"]["StringEquals"]
                ["ec2:Owner"] = json!(["amazon", reference("AWS::AccountId")])
        },
    ),
    ("tag after launch", "CreateTags only", |t| {
        remove_condition(controller_statement(t, "ec2:CreateTags", any))
    }),
    (
        "tag adopted instances with any key",
        "CreateTags only",
        |t| {
            remove_operator(
                controller_statement(t, "ec2:CreateTags", for_adoption),
                "ForAllValues:StringLike",
            )
        },
    ),
    ("adopt without naming the fleet", "CreateTags only", |t| {
        remove_operator(
            controller_statement(t, "ec2:CreateTags", for_adoption),
            "StringLike",
        )
    }),
    (
        "adopt other resources than instances",
        "CreateTags only",
        |t| {
            controller_statement(t, "ec2:CreateTags", for_adoption)["Resource"] =
                sub("arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:security-group/*")
        },
    ),
    ("untag any instance", "DeleteTags only", |t| {
        remove_operator(controller_statement(t, "ec2:DeleteTags", any), "StringLike")
    }),
    ("untag any key", "DeleteTags only", |t| {
        remove_operator(
            controller_statement(t, "ec2:DeleteTags", any),
            "ForAllValues:StringLike",
        )
    }),
    (
        "untag every tag with a request naming none",
        "DeleteTags only",
        |t| remove_operator(controller_statement(t, "ec2:DeleteTags", any), "Null"),
    ),
    (
        "change any Auto Scaling group",
        "Auto Scaling changes",
        |t| remove_condition(controller_statement(t, "autoscaling:DetachInstances", any)),
    ),
    ("tag Auto Scaling groups", "Auto Scaling changes", |t| {
        controller_statement(t, "autoscaling:DetachInstances", any)["Action"]
            .as_array_mut()
            .expect("actions")
            .push(json!("autoscaling:CreateOrUpdateTags"))
    }),
    (
        "change Auto Scaling groups of any region",
        "Auto Scaling changes",
        |t| {
            controller_statement(t, "autoscaling:DetachInstances", any)["Resource"] = sub(
            "arn:${AWS::Partition}:autoscaling:*:${AWS::AccountId}:autoScalingGroup:*:autoScalingGroupName/*",
        )
        },
    ),
    ("assume any role", "AssumeRole/TagSession only", |t| {
        controller_statement(t, "sts:AssumeRole", any)["Resource"] = json!("*")
    }),
    (
        "assume any role of any account",
        "AssumeRole/TagSession only",
        |t| {
            controller_statement(t, "sts:AssumeRole", any)["Resource"] =
                sub("arn:${AWS::Partition}:iam::*:role/*")
        },
    ),
    (
        "let member accounts put any event",
        "other accounts put only",
        |t| remove_condition(member_forwarding(t)),
    ),
    (
        "let member accounts put phoenix's own events",
        "other accounts put only",
        |t| {
            member_forwarding(t)["Condition"]["ForAllValues:StringEquals"]["events:source"]
                .as_array_mut()
                .expect("sources")
                .push(json!("phoenix"))
        },
    ),
    (
        "let member accounts put on phoenix's bus",
        "PutEvents only",
        |t| member_forwarding(t)["Resource"] = sub(CONTROL_PLANE.publish_bus),
    ),
    ("pass any role", "PassRole only", |t| {
        controller_statement(t, "iam:PassRole", any)["Resource"] = json!("*")
    }),
    ("pass the role to any service", "PassRole only", |t| {
        remove_condition(controller_statement(t, "iam:PassRole", any))
    }),
    ("any table", "DynamoDB only", |t| {
        controller_statement(t, "dynamodb:GetItem", any)["Resource"] =
            sub("arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/*")
    }),
    ("every DynamoDB action", "no wildcard", |t| {
        controller_statement(t, "dynamodb:GetItem", any)["Action"] = json!("dynamodb:*")
    }),
    ("every EC2 action", "no wildcard", |t| {
        controller_statement(t, "ec2:DescribeImages", any)["Action"] = json!(["ec2:*"])
    }),
    ("any bus", "PutEvents only", |t| {
        controller_statement(t, "events:PutEvents", any)["Resource"] =
            sub("arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/*")
    }),
    ("everything", "no wildcard", |t| {
        controller_statement(t, "sqs:SendMessage", any)["Action"] = json!("*")
    }),
    ("send to any queue", "Resource \"*\"", |t| {
        controller_statement(t, "sqs:SendMessage", any)["Resource"] = json!("*")
    }),
    (
        "register in any target group",
        "only in tagged target groups",
        |t| {
            remove_condition(controller_statement(
                t,
                "elasticloadbalancing:RegisterTargets",
                any,
            ))
        },
    ),
    (
        "deregister from any load balancer resource",
        "only in tagged target groups",
        |t| {
            controller_statement(t, "elasticloadbalancing:DeregisterTargets", any)["Resource"] =
                sub("arn:${AWS::Partition}:elasticloadbalancing:${AWS::Region}:${AWS::AccountId}:*")
        },
    ),
];

#[test]
fn the_checker_rejects_every_loosened_policy() {
    for (what, rule, loosen) in LOOSENINGS {
        let mut template = sam();
        loosen(&mut template);
        let violations = least_privilege_violations(&template);
        assert!(
            violations.iter().any(|v| v.contains(rule)),
            "{what}: not caught by {rule:?}, only {violations:?}"
        );
    }
}

// ------------------------------------------------------------------ c. table, retries, failures

#[test]
fn the_fleet_table_is_durable_and_indexed_by_instance() {
    let (sam, plain) = (sam(), plain());
    let table = resource(&sam, "FleetTable");
    assert_eq!(
        table,
        resource(&plain, "FleetTable"),
        "the two templates' tables differ"
    );
    assert_eq!(table["DeletionPolicy"], "Retain");
    assert_eq!(table["UpdateReplacePolicy"], "Retain");
    let props = &table["Properties"];
    assert_eq!(props["BillingMode"], "PAY_PER_REQUEST");
    assert_eq!(
        props["KeySchema"],
        json!([{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}])
    );
    assert_eq!(
        props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"],
        true
    );
    assert_eq!(
        props["TimeToLiveSpecification"],
        json!({"AttributeName": "expires_at", "Enabled": true})
    );
    assert_eq!(props["DeletionProtectionEnabled"], true);
    let index = one_or_many(&props["GlobalSecondaryIndexes"])
        .into_iter()
        .find(|i| i["IndexName"] == "by-instance");
    let index = index.expect("by-instance GSI");
    assert_eq!(
        index["KeySchema"],
        json!([{"AttributeName": "instance_id", "KeyType": "HASH"}])
    );
    // The index only maps an instance to its fleet: keys are all a lookup reads.
    assert_eq!(index["Projection"]["ProjectionType"], "KEYS_ONLY");
    let attributes = one_or_many(&props["AttributeDefinitions"]);
    for (name, kind) in [("pk", "S"), ("sk", "S"), ("instance_id", "S")] {
        assert!(
            attributes.contains(&&json!({"AttributeName": name, "AttributeType": kind})),
            "{name}"
        );
    }
}

#[test]
fn every_rule_target_retries_then_dead_letters() {
    let dlq = get_att("DeadLetterQueue", "Arn");
    for (label, template, _) in templates() {
        let all_rules = event_rules(&template, false)
            .into_iter()
            .chain(event_rules(&template, true));
        for (id, rule) in all_rules {
            for target in one_or_many(&rule["Targets"]) {
                let retry = &target["RetryPolicy"];
                assert!(
                    retry["MaximumRetryAttempts"].is_u64(),
                    "{label}: {id} retry attempts"
                );
                assert!(
                    retry["MaximumEventAgeInSeconds"].is_u64(),
                    "{label}: {id} event age"
                );
                assert_eq!(
                    target["DeadLetterConfig"]["Arn"], dlq,
                    "{label}: {id} dead-letter queue"
                );
            }
        }
    }
}

#[test]
fn each_rule_may_invoke_its_function_and_nothing_else_may() {
    let sam = sam();
    let permissions: Vec<&Value> = resources_of_type(&sam, "AWS::Lambda::Permission")
        .values()
        .map(|p| &p["Properties"])
        .collect();
    let rules = event_rules(&sam, false)
        .into_iter()
        .chain(event_rules(&sam, true));
    let mut expected = Vec::new();
    for (id, rule) in rules {
        let permission = json!({
            "Action": "lambda:InvokeFunction",
            "FunctionName": only_target(rule)["Arn"],
            "Principal": "events.amazonaws.com",
            "SourceArn": get_att(id, "Arn"),
        });
        assert!(permissions.contains(&&permission), "no permission for {id}");
        expected.push(permission);
    }
    assert_eq!(
        permissions.len(),
        expected.len(),
        "unexpected Lambda permissions"
    );
}

#[test]
fn failed_async_invocations_go_to_the_dead_letter_queue() {
    let sam = sam();
    for function in Function::ALL {
        let config = properties(&sam, &format!("{}InvokeConfig", stem(function)));
        assert_eq!(
            config["FunctionName"],
            reference(&format!("{}Function", stem(function)))
        );
        assert!(config["MaximumRetryAttempts"].is_u64(), "{function:?}");
        assert_eq!(
            config["DestinationConfig"]["OnFailure"]["Destination"],
            get_att("DeadLetterQueue", "Arn")
        );
    }
    let queue_policy = properties(&sam, "DeadLetterQueuePolicy");
    let principals: Vec<&Value> = statements(queue_policy)
        .into_iter()
        .map(|s| &s["Principal"])
        .collect();
    assert!(principals.contains(&&json!({"Service": "events.amazonaws.com"})));
    let roles: Vec<Value> = Function::ALL
        .iter()
        .map(|f| get_att(&format!("{}FunctionRole", stem(*f)), "Arn"))
        .collect();
    assert!(principals.contains(&&json!({ "AWS": roles })));
}

#[test]
fn functions_are_the_workspace_binaries_on_al2023() {
    let sam = sam();
    let globals = &sam["Globals"]["Function"];
    assert_eq!(globals["Runtime"], "provided.al2023");
    assert_eq!(globals["Handler"], "bootstrap");
    assert_eq!(globals["Architectures"], json!([reference("Architecture")]));
    for variable in ["PHOENIX_TABLE", "PHOENIX_BUS", "RUST_LOG"] {
        assert!(
            !globals["Environment"]["Variables"][variable].is_null(),
            "{variable}"
        );
    }
    assert_eq!(
        resources_of_type(&sam, "AWS::Serverless::Function").len(),
        Function::ALL.len()
    );
    for function in Function::ALL {
        let id = format!("{}Function", stem(function));
        let binary = format!("phoenix-{}", function.name());
        let lambda = resource(&sam, &id);
        assert_eq!(
            lambda["Metadata"]["BuildMethod"], "rust-cargolambda",
            "{id}"
        );
        assert_eq!(
            lambda["Metadata"]["BuildProperties"]["Binary"],
            binary.as_str(),
            "{id}"
        );
        assert_eq!(
            lambda["Properties"]["Role"],
            get_att(&format!("{id}Role"), "Arn"),
            "{id}"
        );
        let manifest = format!(
            "{}/../functions/{}/Cargo.toml",
            env!("CARGO_MANIFEST_DIR"),
            function.name()
        );
        let manifest = std::fs::read_to_string(&manifest).expect("function crate manifest");
        assert!(
            manifest.contains(&format!("name = \"{binary}\"")),
            "functions/{} is not {binary}",
            function.name()
        );
    }
}

#[test]
fn logs_are_kept_and_failures_alarm() {
    let sam = sam();
    for function in Function::ALL {
        let log_group = properties(&sam, &format!("{}LogGroup", stem(function)));
        assert_eq!(
            log_group["LogGroupName"],
            sub(&format!(
                "/aws/lambda/${{AWS::StackName}}-{}",
                function.name()
            ))
        );
        assert_eq!(
            log_group["RetentionInDays"],
            reference("LogRetentionInDays")
        );
        let alarm = properties(&sam, &format!("{}ErrorsAlarm", stem(function)));
        assert_eq!(alarm["MetricName"], "Errors");
        let dimension = json!([{"Name": "FunctionName", "Value": reference(&format!("{}Function", stem(function)))}]);
        assert_eq!(alarm["Dimensions"], dimension);
    }
    let dlq_alarm = properties(&sam, "DeadLetterQueueAlarm");
    assert_eq!(
        dlq_alarm["MetricName"],
        "ApproximateNumberOfMessagesVisible"
    );
    assert_eq!(
        dlq_alarm["Dimensions"][0]["Value"],
        get_att("DeadLetterQueue", "QueueName")
    );
    assert_eq!(
        (
            dlq_alarm["Threshold"].as_f64(),
            dlq_alarm["ComparisonOperator"].as_str()
        ),
        (Some(0.0), Some("GreaterThanThreshold"))
    );
}

// ------------------------------------------------------------------------- d. member accounts

#[test]
fn member_accounts_forward_exactly_the_rules_for_aws_events_to_the_control_plane() {
    let member = member();
    assert!(
        event_rules(&member, true).is_empty(),
        "the schedule is the control plane's"
    );
    let found = event_rules(&member, false);
    let expected: BTreeSet<String> = aws_rules()
        .iter()
        .map(|r| format!("{}Rule", r.name))
        .collect();
    assert_eq!(
        found
            .keys()
            .map(|id| id.to_string())
            .collect::<BTreeSet<_>>(),
        expected,
        "forwarding rules differ from the rules of phoenix_core::patterns on the default bus"
    );
    for spec in aws_rules() {
        let id = format!("{}Rule", spec.name);
        let rule = found[id.as_str()];
        assert_eq!(rule["EventPattern"], spec.pattern, "pattern of {id}");
        assert!(
            rule["EventBusName"].is_null(),
            "{id}: AWS's events arrive on the default bus only"
        );
        let target = only_target(rule);
        assert_eq!(target["Arn"], sub(CONTROL_PLANE_BUS), "target of {id}");
        assert_eq!(
            target["RoleArn"],
            get_att("ForwardRole", "Arn"),
            "role of {id}"
        );
        assert_eq!(resource(&member, &id)["Condition"], "Forwards", "{id}");
    }
    // Not in the control plane's own account and region, whose rules receive the events already.
    assert_eq!(
        member["Conditions"]["Forwards"],
        json!({"Fn::Not": [{"Fn::And": [
            {"Fn::Equals": [reference("AWS::AccountId"), reference("ControlPlaneAccountId")]},
            {"Fn::Equals": [reference("AWS::Region"), reference("ControlPlaneRegion")]},
        ]}]})
    );
}

#[test]
fn the_forwarding_role_may_only_put_events_on_the_control_plane_bus() {
    let member = member();
    let role = resource(&member, "ForwardRole");
    assert_eq!(role["Condition"], "Forwards");
    let trust = statements(&role["Properties"]["AssumeRolePolicyDocument"]);
    assert_eq!(trust.len(), 1);
    assert_eq!(
        trust[0]["Principal"],
        json!({"Service": "events.amazonaws.com"})
    );
    assert_eq!(
        *condition(trust[0], "StringEquals", "aws:SourceAccount"),
        reference("AWS::AccountId")
    );
    let granted: Vec<&Value> = one_or_many(&role["Properties"]["Policies"])
        .into_iter()
        .flat_map(statements)
        .collect();
    assert_eq!(granted.len(), 1, "{granted:?}");
    assert_eq!(actions(granted[0]), ["events:PutEvents"]);
    assert_eq!(statement_resources(granted[0]), [&sub(CONTROL_PLANE_BUS)]);
}

#[test]
fn the_member_template_is_least_privilege() {
    assert_eq!(violations_in(&member(), &MEMBER), Vec::<String>::new());
}

/// `value` with every `${AWS::Region}` of its ARNs made any region (`*`).
fn any_region(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace(":${AWS::Region}:", ":*:")),
        Value::Array(items) => Value::Array(items.iter().map(any_region).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), any_region(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// What phoenix does in its own account's state and events, which stays in the control plane.
fn control_plane_only(statement: &Value) -> bool {
    actions(statement).iter().any(|a| {
        ["dynamodb:", "events:", "sqs:", "sts:"]
            .iter()
            .any(|p| a.starts_with(p))
    })
}

#[test]
fn the_member_role_may_do_what_the_controller_does_in_its_account_and_nothing_else() {
    let (sam, member) = (sam(), member());
    let expected: Vec<Value> = statements(properties(&sam, "PhoenixControllerPolicy"))
        .into_iter()
        .filter(|s| !control_plane_only(s))
        .map(any_region)
        .collect();
    let role = properties(&member, "MemberRole");
    let found: Vec<Value> = one_or_many(&role["Policies"])
        .into_iter()
        .flat_map(statements)
        .cloned()
        .collect();
    assert_eq!(found, expected);
    // The instance role is optional here: without one, phoenix may pass no role.
    let pass_role = one_or_many(&role["Policies"])
        .into_iter()
        .flat_map(|p| one_or_many(&p["PolicyDocument"]["Statement"]))
        .find(|s| !s["Fn::If"].is_null())
        .expect("the PassRole statement under a condition");
    assert_eq!(pass_role["Fn::If"][0], "HasInstanceRole");
    assert_eq!(pass_role["Fn::If"][2], reference("AWS::NoValue"));
    assert_eq!(
        member["Conditions"]["HasInstanceRole"],
        json!({"Fn::Not": [{"Fn::Equals": [reference("InstanceRoleArn"), ""]}]})
    );
    // The control plane's parameter, for this account's images.
    for field in ["Type", "Default", "AllowedPattern"] {
        assert_eq!(
            member["Parameters"]["AllowedImageAccounts"][field],
            sam["Parameters"]["AllowedImageAccounts"][field],
            "{field}"
        );
    }
    assert_eq!(
        member["Conditions"]["OwnImagesOnly"],
        sam["Conditions"]["OwnImagesOnly"]
    );
}

#[test]
fn the_member_role_trusts_the_control_plane_with_the_external_id_in_one_region() {
    let member = member();
    let role = resource(&member, "MemberRole");
    // IAM is global: a named role exists once per account, created in RoleRegion alone.
    assert_eq!(role["Condition"], "CreateRole");
    assert_eq!(
        member["Conditions"]["CreateRole"],
        json!({"Fn::Equals": [reference("AWS::Region"), reference("RoleRegion")]})
    );
    assert_eq!(role["Properties"]["RoleName"], reference("RoleName"));
    for (id, r) in resources_of_type(&member, "AWS::IAM::") {
        let named = [
            "RoleName",
            "PolicyName",
            "ManagedPolicyName",
            "InstanceProfileName",
        ]
        .iter()
        .any(|n| !r["Properties"][n].is_null());
        assert!(
            !named || r["Condition"] == "CreateRole",
            "{id} is named: it must exist in RoleRegion only"
        );
    }
    let control_plane =
        json!({"AWS": sub("arn:${AWS::Partition}:iam::${ControlPlaneAccountId}:root")});
    let trust = statements(&role["Properties"]["AssumeRolePolicyDocument"]);
    for statement in &trust {
        assert_eq!(statement["Effect"], "Allow");
        assert_eq!(statement["Principal"], control_plane);
        for action in actions(statement) {
            assert!(
                ["sts:AssumeRole", "sts:TagSession"].contains(&action),
                "{action}"
            );
        }
    }
    let assume: Vec<&&Value> = trust
        .iter()
        .filter(|s| grants(s, "sts:AssumeRole"))
        .collect();
    assert_eq!(assume.len(), 1);
    assert_eq!(
        assume[0]["Condition"],
        json!({"Fn::If": [
            "HasExternalId",
            {"StringEquals": {"sts:ExternalId": reference("ExternalId")}},
            reference("AWS::NoValue"),
        ]}),
        "the external id, when one is set, is required"
    );
    assert_eq!(
        member["Conditions"]["HasExternalId"],
        json!({"Fn::Not": [{"Fn::Equals": [reference("ExternalId"), ""]}]})
    );
    assert_eq!(member["Parameters"]["ExternalId"]["NoEcho"], true);
    assert!(
        trust.iter().any(|s| grants(s, "sts:TagSession")),
        "phoenix passes session tags"
    );
}

type MemberLoosening = fn(&mut Value);

/// The member role's statement granting `action`.
fn member_statement<'a>(template: &'a mut Value, action: &str) -> &'a mut Value {
    template["Resources"]["MemberRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        .as_array_mut()
        .expect("member role statements")
        .iter_mut()
        .find(|s| grants(s, action))
        .unwrap_or_else(|| panic!("no member statement grants {action}"))
}

/// Ways the member template could be loosened by mistake, each with the rule that must catch it.
const MEMBER_LOOSENINGS: &[(&str, &str, MemberLoosening)] = &[
    ("forward to any bus", "PutEvents only", |t| {
        t["Resources"]["ForwardRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
            [0]["Resource"] = json!("*")
    }),
    ("terminate any instance", "TerminateInstances only", |t| {
        remove_condition(member_statement(t, "ec2:TerminateInstances"))
    }),
    ("untag any instance", "DeleteTags only", |t| {
        remove_operator(member_statement(t, "ec2:DeleteTags"), "StringLike")
    }),
    (
        "change any Auto Scaling group",
        "Auto Scaling changes",
        |t| remove_condition(member_statement(t, "autoscaling:DetachInstances")),
    ),
    (
        "register in any target group",
        "only in tagged target groups",
        |t| remove_condition(member_statement(t, "elasticloadbalancing:RegisterTargets")),
    ),
];

#[test]
fn the_checker_rejects_every_loosened_member_template() {
    for (what, rule, loosen) in MEMBER_LOOSENINGS {
        let mut template = member();
        loosen(&mut template);
        let violations = violations_in(&template, &MEMBER);
        assert!(
            violations.iter().any(|v| v.contains(rule)),
            "{what}: not caught by {rule:?}, only {violations:?}"
        );
    }
}
