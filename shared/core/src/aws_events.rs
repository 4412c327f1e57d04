//! Events AWS itself sends (sources `aws.*`, on the default event bus) and what each means for
//! phoenix. One typed detail per event kind, parsed with serde, then mapped to an `AwsEvent`:
//!
//! | source | detail-type | means |
//! |---|---|---|
//! | `aws.ec2` | `EC2 AMI State Change` (`available`) | an image fleets may follow (`image_selector`) |
//! | `aws.imagebuilder` | `EC2 Image Builder Image State Change` (`AVAILABLE`) | a build whose AMIs fleets may follow |
//! | `aws.cloudwatch` | `CloudWatch Alarm State Change` (`ALARM`, `InstanceId` dimension) | `HealthCheckFailed` |
//! | `aws.ec2` | `EC2 Instance State-change Notification` (stopping … terminated) | `Notice::State` |
//! | `aws.ec2` | `EC2 Spot Instance Interruption Warning` | `Notice::Interruption` |
//! | `aws.ec2` | `EC2 Instance Rebalance Recommendation` | `Notice::Rebalance` |
//! | `aws.health` | `AWS Health Event` (EC2, `scheduledChange`) | `Notice::Maintenance` |
//! | `aws.ec2`, `aws.ssm` | `AWS API Call via CloudTrail` (in-place changes) | `Notice::Mutated` |
//! | `aws.ec2` | `AWS API Call via CloudTrail` (a launch template's new version or default) | `TemplateChanged` |
//!
//! The envelope is EventBridge's (`aws_lambda_events::eventbridge::EventBridgeEvent` at the edge);
//! `aws_lambda_events` 1.2 with its `eventbridge` feature has no types for these details (its
//! `cloudwatch_events` module has older, stricter shapes without e.g. Health's `communicationId`),
//! so they are defined here, with only the fields phoenix reads. Unknown fields are ignored.
//!
//! A well-formed event that asks nothing of phoenix (an AMI still pending, an alarm back to `OK`,
//! an alarm on a load balancer) is `AwsEvent::Ignored`, with the reason: success, not an error.
//! A malformed one (a missing or mistyped field) is an `Error::Event` naming the field.
//!
//! One file, longer than most here, on purpose: the constants, the detail types, what each means
//! (`AwsEvent::from_envelope`) and the allow-list of sources follow the table above, one event
//! kind after another; split apart, a reader of one kind would go back and forth between files.

use crate::error::{Error, Result};
use crate::events::Envelope;
use crate::ids::{ImageId, InstanceId};
use crate::model::{Lifecycle, Timestamp};
use crate::notice::{Notice, SPOT_WARNING};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

pub const EC2: &str = "aws.ec2";
pub const IMAGE_BUILDER: &str = "aws.imagebuilder";
pub const CLOUDWATCH: &str = "aws.cloudwatch";
pub const HEALTH: &str = "aws.health";
pub const SSM: &str = "aws.ssm";

pub const AMI_STATE_CHANGE: &str = "EC2 AMI State Change";
pub const IMAGE_BUILDER_STATE_CHANGE: &str = "EC2 Image Builder Image State Change";
pub const ALARM_STATE_CHANGE: &str = "CloudWatch Alarm State Change";
pub const INSTANCE_STATE_CHANGE: &str = "EC2 Instance State-change Notification";
pub const SPOT_INTERRUPTION: &str = "EC2 Spot Instance Interruption Warning";
pub const REBALANCE_RECOMMENDATION: &str = "EC2 Instance Rebalance Recommendation";
pub const HEALTH_EVENT: &str = "AWS Health Event";
pub const API_CALL: &str = "AWS API Call via CloudTrail";

/// The EC2 states an instance reaches without phoenix asking (the rule's filter).
pub const UNASKED_STATES: [&str; 4] = ["stopping", "stopped", "shutting-down", "terminated"];

/// The in-place changes that taint an instance: (CloudTrail `eventSource`, `eventName`s).
pub const MUTATIONS: [(&str, &[&str]); 2] = [
    (
        "ec2.amazonaws.com",
        &[
            "ModifyInstanceAttribute",
            "ModifyInstanceMetadataOptions",
            "AssociateIamInstanceProfile",
            "ReplaceIamInstanceProfileAssociation",
            "AttachVolume",
            "DetachVolume",
            "AttachNetworkInterface",
        ],
    ),
    ("ssm.amazonaws.com", &["StartSession", "SendCommand"]),
];

/// The calls that change what a launch template named by `$Latest` or `$Default` launches.
pub const TEMPLATE_CHANGES: [&str; 2] = ["CreateLaunchTemplateVersion", "ModifyLaunchTemplate"];

// ------------------------------------------------------------------------------ detail types

/// `EC2 AMI State Change`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmiStateChange {
    #[serde(rename = "ImageId")]
    pub image_id: String,
    /// `pending`, `available`, `failed`, `deregistered`, `disabled`.
    #[serde(rename = "State")]
    pub state: String,
    #[serde(
        rename = "ErrorReason",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub error_reason: Option<String>,
}

/// `EC2 Image Builder Image State Change`. The build version ARN is the envelope's `resources[0]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBuilderStateChange {
    pub state: ImageBuilderState,
    #[serde(
        rename = "previous-state",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub previous_state: Option<ImageBuilderState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBuilderState {
    /// `PENDING` … `AVAILABLE`, `CANCELLED`, `FAILED`, `DEPRECATED`, `DELETED`, `DISABLED`.
    pub status: String,
}

/// `CloudWatch Alarm State Change`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmStateChange {
    pub alarm_name: String,
    pub state: AlarmState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_state: Option<AlarmState>,
    #[serde(default)]
    pub configuration: AlarmConfiguration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmState {
    /// `OK`, `ALARM`, `INSUFFICIENT_DATA`.
    pub value: String,
    #[serde(default)]
    pub reason: String,
    /// As CloudWatch writes it (`2019-10-02T17:04:40.989+0000`), not RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Absent for composite alarms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<AlarmMetric>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmMetric {
    #[serde(default)]
    pub id: String,
    /// Absent for metric-math expressions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_stat: Option<MetricStat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricStat {
    pub metric: Metric,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metric {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
}

/// `EC2 Instance State-change Notification`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InstanceStateChange {
    pub instance_id: String,
    pub state: String,
}

/// `EC2 Spot Instance Interruption Warning`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SpotInterruption {
    pub instance_id: String,
    /// `terminate`, `stop` or `hibernate`.
    pub instance_action: String,
}

/// `EC2 Instance Rebalance Recommendation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RebalanceRecommendation {
    pub instance_id: String,
}

/// `AWS Health Event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_arn: Option<String>,
    pub service: String,
    pub event_type_code: String,
    pub event_type_category: String,
    /// With the account, identifies the communication (its key for deduplication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communication_id: Option<String>,
    /// RFC 1123: `Wed, 26 Jun 2019 15:00:00 GMT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affected_entities: Vec<AffectedEntity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AffectedEntity {
    pub entity_value: String,
}

/// `AWS API Call via CloudTrail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiCall {
    pub event_source: String,
    pub event_name: String,
    pub user_identity: UserIdentity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_elements: Option<Value>,
    /// Present when the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(rename = "eventID", default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserIdentity {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

// ------------------------------------------------------------------------------- meaning

/// What an AWS event asks of phoenix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsEvent {
    /// An AMI is available: fleets whose selector matches it move to it.
    ImageAvailable { image: ImageId },
    /// An Image Builder build finished; its AMIs are in Image Builder's `GetImage` (`arn`).
    ImageBuilt { arn: String },
    /// An alarm on one instance: that instance failed its health check.
    HealthCheckFailed {
        instance: InstanceId,
        reason: String,
    },
    /// Something AWS says about instances (one fleet's or several fleets').
    Notice {
        instances: Vec<InstanceId>,
        notice: Notice,
    },
    /// A launch template got a new version or default: fleets floating on it may have drifted.
    TemplateChanged {
        id: Option<String>,
        name: Option<String>,
    },
    /// A well-formed event that asks nothing of phoenix.
    Ignored { reason: String },
}

fn ignored(reason: impl Into<String>) -> Result<AwsEvent> {
    Ok(AwsEvent::Ignored {
        reason: reason.into(),
    })
}

fn detail<T: DeserializeOwned>(env: &Envelope) -> Result<T> {
    let dt = &env.detail_type;
    if !env.detail.is_object() {
        return Err(Error::Event(format!(
            "{dt}: detail must be a JSON object, got {}",
            short(&env.detail)
        )));
    }
    serde_path_to_error::deserialize(env.detail.clone()).map_err(|e| {
        let path = e.path().to_string();
        let what = e.into_inner();
        if path == "." {
            Error::Event(format!("{dt}: {what}"))
        } else {
            Error::Event(format!("{dt}: detail.{path}: {what}"))
        }
    })
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

fn instance(env: &Envelope, field: &str, value: &str) -> Result<InstanceId> {
    InstanceId::parse(value).map_err(|e| Error::Event(format!("{}: {field}: {e}", env.detail_type)))
}

/// Whether phoenix knows this kind of AWS event (it has a parser for it).
pub fn is_known(source: &str, detail_type: &str) -> bool {
    matches!(
        (source, detail_type),
        (EC2, AMI_STATE_CHANGE)
            | (IMAGE_BUILDER, IMAGE_BUILDER_STATE_CHANGE)
            | (CLOUDWATCH, ALARM_STATE_CHANGE)
            | (EC2, INSTANCE_STATE_CHANGE)
            | (EC2, SPOT_INTERRUPTION)
            | (EC2, REBALANCE_RECOMMENDATION)
            | (HEALTH, HEALTH_EVENT)
            | (EC2 | SSM, API_CALL)
    )
}

impl AwsEvent {
    /// The meaning of an AWS event, or `None` if it is not one phoenix parses (phoenix's own
    /// events, the schedule, anything else).
    pub fn from_envelope(env: &Envelope) -> Option<Result<AwsEvent>> {
        if !is_known(&env.source, &env.detail_type) {
            return None;
        }
        Some(Self::parse(env))
    }

    fn parse(env: &Envelope) -> Result<AwsEvent> {
        match env.detail_type.as_str() {
            AMI_STATE_CHANGE => {
                let d: AmiStateChange = detail(env)?;
                let image = ImageId::parse(&d.image_id)
                    .map_err(|e| Error::Event(format!("{AMI_STATE_CHANGE}: ImageId: {e}")))?;
                if d.state != "available" {
                    return ignored(format!("{image} is {}, not available", d.state));
                }
                Ok(AwsEvent::ImageAvailable { image })
            }
            IMAGE_BUILDER_STATE_CHANGE => {
                let d: ImageBuilderStateChange = detail(env)?;
                let arn = env.resources.first().ok_or_else(|| {
                    Error::Event(format!(
                        "{IMAGE_BUILDER_STATE_CHANGE}: resources[0] (the image build version ARN) is missing"
                    ))
                })?;
                if !(arn.starts_with("arn:")
                    && arn.contains(":imagebuilder:")
                    && arn.contains(":image/"))
                {
                    return Err(Error::Event(format!(
                        "{IMAGE_BUILDER_STATE_CHANGE}: resources[0] {arn:?} is not an Image Builder image ARN"
                    )));
                }
                if d.state.status != "AVAILABLE" {
                    return ignored(format!("build {arn} is {}", d.state.status));
                }
                Ok(AwsEvent::ImageBuilt { arn: arn.clone() })
            }
            ALARM_STATE_CHANGE => {
                let d: AlarmStateChange = detail(env)?;
                if d.state.value != "ALARM" {
                    return ignored(format!("alarm {} is {}", d.alarm_name, d.state.value));
                }
                let ids: BTreeSet<&str> = d
                    .configuration
                    .metrics
                    .iter()
                    .filter_map(|m| m.metric_stat.as_ref())
                    .filter_map(|s| s.metric.dimensions.get("InstanceId"))
                    .map(String::as_str)
                    .collect();
                let mut ids = ids.into_iter();
                let (Some(id), None) = (ids.next(), ids.next()) else {
                    return ignored(format!(
                        "alarm {} does not name exactly one instance (no single InstanceId dimension)",
                        d.alarm_name
                    ));
                };
                let reason = if d.state.reason.trim().is_empty() {
                    format!("alarm {}", d.alarm_name)
                } else {
                    format!("alarm {}: {}", d.alarm_name, d.state.reason)
                };
                Ok(AwsEvent::HealthCheckFailed {
                    instance: instance(env, "InstanceId dimension", id)?,
                    reason,
                })
            }
            INSTANCE_STATE_CHANGE => {
                let d: InstanceStateChange = detail(env)?;
                let id = instance(env, "instance-id", &d.instance_id)?;
                let state = Lifecycle::parse(&d.state).ok_or_else(|| {
                    Error::Event(format!(
                        "{INSTANCE_STATE_CHANGE}: state {:?} is not an EC2 instance state",
                        d.state
                    ))
                })?;
                if !UNASKED_STATES.contains(&d.state.as_str()) {
                    return ignored(format!("{id} is {}", d.state));
                }
                Ok(AwsEvent::Notice {
                    instances: vec![id],
                    notice: Notice::State { state },
                })
            }
            SPOT_INTERRUPTION => {
                let d: SpotInterruption = detail(env)?;
                let id = instance(env, "instance-id", &d.instance_id)?;
                if d.instance_action.trim().is_empty() {
                    return Err(Error::Event(format!(
                        "{SPOT_INTERRUPTION}: instance-action is empty"
                    )));
                }
                Ok(AwsEvent::Notice {
                    instances: vec![id],
                    notice: Notice::Interruption {
                        action: d.instance_action,
                        at: env.time + SPOT_WARNING,
                    },
                })
            }
            REBALANCE_RECOMMENDATION => {
                let d: RebalanceRecommendation = detail(env)?;
                Ok(AwsEvent::Notice {
                    instances: vec![instance(env, "instance-id", &d.instance_id)?],
                    notice: Notice::Rebalance,
                })
            }
            HEALTH_EVENT => {
                let d: HealthEvent = detail(env)?;
                if d.service != "EC2" || d.event_type_category != "scheduledChange" {
                    return ignored(format!(
                        "{} {} is not a scheduled EC2 change",
                        d.service, d.event_type_category
                    ));
                }
                let raw = d.start_time.as_deref().ok_or_else(|| {
                    Error::Event(format!("{HEALTH_EVENT}: missing field `startTime`"))
                })?;
                let start = parse_rfc1123(raw).ok_or_else(|| {
                    Error::Event(format!(
                        "{HEALTH_EVENT}: startTime {raw:?} is not an RFC 1123 date like \"Wed, 26 Jun 2019 15:00:00 GMT\""
                    ))
                })?;
                // Entities and resources both list the instances; entities that are not instances
                // (volumes, hosts) are not phoenix's business.
                let mut ids = BTreeSet::new();
                for value in d
                    .affected_entities
                    .iter()
                    .map(|e| e.entity_value.as_str())
                    .chain(env.resources.iter().map(String::as_str))
                {
                    if let Ok(id) = InstanceId::parse(value) {
                        ids.insert(id);
                    }
                }
                if ids.is_empty() {
                    return ignored(format!("{} names no instance", d.event_type_code));
                }
                Ok(AwsEvent::Notice {
                    instances: ids.into_iter().collect(),
                    notice: Notice::Maintenance {
                        code: d.event_type_code,
                        start,
                    },
                })
            }
            API_CALL => {
                let d: ApiCall = detail(env)?;
                if d.event_source == "ec2.amazonaws.com"
                    && TEMPLATE_CHANGES.contains(&d.event_name.as_str())
                {
                    if let Some(code) = &d.error_code {
                        return ignored(format!(
                            "{} failed ({code}): nothing changed",
                            d.event_name
                        ));
                    }
                    // The request spells the keys as EC2's API does, the response in camel case.
                    let find = |keys: [&str; 2]| {
                        [&d.request_parameters, &d.response_elements]
                            .into_iter()
                            .flatten()
                            .find_map(|v| keys.iter().find_map(|k| find_string(v, k)))
                    };
                    let id = find(["LaunchTemplateId", "launchTemplateId"]);
                    let name = find(["LaunchTemplateName", "launchTemplateName"]);
                    if id.is_none() && name.is_none() {
                        return ignored(format!("{} names no launch template", d.event_name));
                    }
                    return Ok(AwsEvent::TemplateChanged { id, name });
                }
                let watched = MUTATIONS.iter().any(|(src, names)| {
                    *src == d.event_source && names.contains(&d.event_name.as_str())
                });
                if !watched {
                    return ignored(format!(
                        "{} {} changes no instance in place",
                        d.event_source, d.event_name
                    ));
                }
                if let Some(code) = &d.error_code {
                    return ignored(format!("{} failed ({code}): nothing changed", d.event_name));
                }
                let mut ids = BTreeSet::new();
                for v in [&d.request_parameters, &d.response_elements]
                    .into_iter()
                    .flatten()
                {
                    instance_ids(v, &mut ids);
                }
                if ids.is_empty() {
                    return ignored(format!("{} names no instance", d.event_name));
                }
                let who = d
                    .user_identity
                    .arn
                    .or(d.user_identity.principal_id)
                    .or(d.user_identity.kind)
                    .unwrap_or_else(|| "unknown".into());
                Ok(AwsEvent::Notice {
                    instances: ids.into_iter().collect(),
                    notice: Notice::Mutated {
                        who,
                        what: d.event_name,
                    },
                })
            }
            other => Err(Error::Event(format!("unknown detail-type {other:?}"))),
        }
    }
}

/// The first string under `key` at any depth (CloudTrail nests EC2's request in
/// `CreateLaunchTemplateVersionRequest`, and its answer in `...Response`).
fn find_string(v: &Value, key: &str) -> Option<String> {
    match v {
        Value::Object(map) => map
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| map.values().find_map(|v| find_string(v, key))),
        Value::Array(items) => items.iter().find_map(|v| find_string(v, key)),
        _ => None,
    }
}

/// Instance ids under the keys CloudTrail uses for them (`instanceId`, `InstanceId`,
/// `instanceIds`, SSM's `target`), at any depth.
fn instance_ids(v: &Value, out: &mut BTreeSet<InstanceId>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = k.to_ascii_lowercase();
                if matches!(key.as_str(), "instanceid" | "instanceids" | "target") {
                    let values = match v {
                        Value::Array(items) => items.iter().collect(),
                        single => vec![single],
                    };
                    out.extend(
                        values
                            .into_iter()
                            .filter_map(Value::as_str)
                            .filter_map(|s| InstanceId::parse(s).ok()),
                    );
                }
                instance_ids(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| instance_ids(i, out)),
        _ => {}
    }
}

/// `Wed, 26 Jun 2019 15:00:00 GMT` (RFC 1123, a profile of RFC 2822).
pub fn parse_rfc1123(s: &str) -> Option<Timestamp> {
    chrono::DateTime::parse_from_rfc2822(s.trim())
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// The identity of an event for deduplication: AWS Health sends a communication again (updates,
/// several regions) under new EventBridge ids, so its key is the account and `communicationId`;
/// every other event's is its EventBridge id.
pub fn identity(env: &Envelope) -> String {
    if env.source == HEALTH {
        if let Some(c) = env.detail.get("communicationId").and_then(Value::as_str) {
            return format!("health:{}:{c}", env.account.as_deref().unwrap_or("unknown"));
        }
    }
    env.id.clone()
}

// ------------------------------------------------------------------------------ allow-list

/// Every source phoenix has a parser for.
pub const KNOWN_SOURCES: [&str; 7] = [
    crate::events::SOURCE,
    crate::events::SCHEDULE_SOURCE,
    EC2,
    IMAGE_BUILDER,
    CLOUDWATCH,
    HEALTH,
    SSM,
];

/// Which accounts and sources phoenix accepts events from (`PHOENIX_ALLOWED_ACCOUNTS`,
/// `PHOENIX_ALLOWED_SOURCES`). `None`: any account / every known source.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourcePolicy {
    pub accounts: Option<BTreeSet<String>>,
    pub sources: Option<BTreeSet<String>>,
}

fn list(text: &str) -> Option<BTreeSet<String>> {
    let items: BTreeSet<String> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    (!items.is_empty()).then_some(items)
}

impl SourcePolicy {
    /// From comma-separated lists; an empty list means no restriction.
    pub fn from_lists(accounts: &str, sources: &str) -> Self {
        SourcePolicy {
            accounts: list(accounts),
            sources: list(sources),
        }
    }

    /// Refuses an event from an account or source not allowed, with the reason. The schedule's
    /// own tick is exempt: it carries no account locally and only ever asks for a reconcile.
    pub fn check(&self, env: &Envelope) -> Result<()> {
        if env.source == crate::events::SCHEDULE_SOURCE
            && env.detail_type == crate::events::SCHEDULED_EVENT
        {
            return Ok(());
        }
        let source_ok = match &self.sources {
            Some(allowed) => allowed.contains(&env.source),
            None => KNOWN_SOURCES.contains(&env.source.as_str()),
        };
        if !source_ok {
            return Err(Error::Event(format!(
                "source {:?} is not allowed (PHOENIX_ALLOWED_SOURCES)",
                env.source
            )));
        }
        if let Some(allowed) = &self.accounts {
            match env.account.as_deref() {
                Some(a) if allowed.contains(a) => {}
                Some(a) => {
                    return Err(Error::Event(format!(
                        "event from account {a}, which is not allowed (PHOENIX_ALLOWED_ACCOUNTS)"
                    )))
                }
                None => {
                    return Err(Error::Event(
                        "event names no account; only allowed accounts may send events (PHOENIX_ALLOWED_ACCOUNTS)"
                            .into(),
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(source: &str, dt: &str, detail: Value) -> Envelope {
        Envelope {
            id: "e1".into(),
            source: source.into(),
            detail_type: dt.into(),
            time: "2030-01-01T00:00:00Z".parse().unwrap(),
            account: Some("123456789012".into()),
            region: Some("us-east-1".into()),
            resources: Vec::new(),
            detail,
        }
    }

    #[test]
    fn phoenix_and_schedule_events_are_not_aws_events() {
        assert!(AwsEvent::from_envelope(&env("phoenix", "ImageReady", json!({}))).is_none());
        assert!(
            AwsEvent::from_envelope(&env("aws.events", "Scheduled Event", json!({}))).is_none()
        );
        assert!(AwsEvent::from_envelope(&env("aws.ec2", "Surprise", json!({}))).is_none());
    }

    #[test]
    fn alarms_name_their_instance_or_are_ignored() {
        let alarm = |value: &str, dims: Value| {
            env(
                CLOUDWATCH,
                ALARM_STATE_CHANGE,
                json!({"alarmName": "cpu", "state": {"value": value, "reason": "too hot"},
                       "configuration": {"metrics": [{"id": "m", "metricStat": {"metric": {"name": "CPUUtilization", "dimensions": dims}}}]}}),
            )
        };
        let got = AwsEvent::from_envelope(&alarm("ALARM", json!({"InstanceId": "i-12345678"})))
            .unwrap()
            .unwrap();
        assert_eq!(
            got,
            AwsEvent::HealthCheckFailed {
                instance: InstanceId::parse("i-12345678").unwrap(),
                reason: "alarm cpu: too hot".into()
            }
        );
        for ev in [
            alarm("OK", json!({"InstanceId": "i-12345678"})),
            alarm("ALARM", json!({"LoadBalancer": "app/x"})),
        ] {
            assert!(matches!(
                AwsEvent::from_envelope(&ev).unwrap().unwrap(),
                AwsEvent::Ignored { .. }
            ));
        }
        let bad = AwsEvent::from_envelope(&alarm("ALARM", json!({"InstanceId": "host-1"})))
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(bad.contains("InstanceId"), "{bad}");
    }

    #[test]
    fn cloudtrail_finds_instances_under_their_usual_keys() {
        let call = |name: &str, source: &str, params: Value| {
            env(
                EC2,
                API_CALL,
                json!({"eventSource": source, "eventName": name,
                       "userIdentity": {"arn": "arn:aws:iam::123456789012:user/alice"},
                       "requestParameters": params}),
            )
        };
        let cases = [
            call(
                "ModifyInstanceAttribute",
                "ec2.amazonaws.com",
                json!({"instanceId": "i-12345678"}),
            ),
            call(
                "AssociateIamInstanceProfile",
                "ec2.amazonaws.com",
                json!({"AssociateIamInstanceProfileRequest": {"InstanceId": "i-12345678"}}),
            ),
            call(
                "StartSession",
                "ssm.amazonaws.com",
                json!({"target": "i-12345678"}),
            ),
            call(
                "SendCommand",
                "ssm.amazonaws.com",
                json!({"instanceIds": ["i-12345678"]}),
            ),
        ];
        for ev in cases {
            match AwsEvent::from_envelope(&ev).unwrap().unwrap() {
                AwsEvent::Notice { instances, notice } => {
                    assert_eq!(instances, [InstanceId::parse("i-12345678").unwrap()]);
                    assert!(
                        matches!(notice, Notice::Mutated { ref who, .. } if who.ends_with("alice"))
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        let read = call(
            "DescribeInstances",
            "ec2.amazonaws.com",
            json!({"instanceId": "i-12345678"}),
        );
        assert!(matches!(
            AwsEvent::from_envelope(&read).unwrap().unwrap(),
            AwsEvent::Ignored { .. }
        ));
    }

    #[test]
    fn health_dates_are_rfc_1123() {
        assert_eq!(
            parse_rfc1123("Wed, 26 Jun 2019 15:00:00 GMT"),
            Some("2019-06-26T15:00:00Z".parse().unwrap())
        );
        assert_eq!(parse_rfc1123("2019-06-26T15:00:00Z"), None);
    }

    #[test]
    fn health_events_dedupe_on_their_communication() {
        let mut a = env(HEALTH, HEALTH_EVENT, json!({"communicationId": "c-1"}));
        let mut b = a.clone();
        b.id = "e2".into();
        assert_eq!(identity(&a), identity(&b));
        a.account = Some("999999999999".into());
        assert_ne!(identity(&a), identity(&b));
        assert_eq!(identity(&env(EC2, AMI_STATE_CHANGE, json!({}))), "e1");
    }

    #[test]
    fn the_allow_list_refuses_foreign_accounts_and_sources() {
        let policy = SourcePolicy::from_lists("123456789012", "");
        assert!(policy
            .check(&env("phoenix", "ImageReady", json!({})))
            .is_ok());
        let mut foreign = env("phoenix", "ImageReady", json!({}));
        foreign.account = Some("999999999999".into());
        let err = policy.check(&foreign).unwrap_err().to_string();
        assert!(err.contains("999999999999"), "{err}");
        let forged = env("evil", "ImageReady", json!({}));
        assert!(policy
            .check(&forged)
            .unwrap_err()
            .to_string()
            .contains("not allowed"));
        let only_phoenix = SourcePolicy::from_lists("", "phoenix");
        assert!(only_phoenix
            .check(&env(EC2, AMI_STATE_CHANGE, json!({})))
            .is_err());
        let mut tick = env("aws.events", "Scheduled Event", json!({}));
        tick.account = None;
        assert!(policy.check(&tick).is_ok());
    }
}
