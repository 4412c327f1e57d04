//! The EventBridge rules phoenix needs: which events go to which function. This is the single
//! source of truth: the local dispatcher creates exactly these rules on the emulator, and a test
//! checks that `infra/template.yaml` and `infra/cfn-plain.yaml` carry the same patterns, each on
//! the same bus (`RuleBus`).

use crate::events::{
    HEALTH_CHECK_FAILED, HEALTH_CHECK_PASSED, IMAGE_READY, LIFECYCLE_ACTION_COMPLETED,
    RECONCILE_REQUESTED, ROLLOUT_CONTROL, SCALE_REQUESTED, SCHEDULED_EVENT, SCHEDULE_SOURCE,
    SOURCE,
};
use serde_json::{json, Value};

/// The Lambda functions, one per event kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Function {
    Image,
    Health,
    Scale,
    Reconcile,
}

impl Function {
    pub const ALL: [Function; 4] = [
        Function::Image,
        Function::Health,
        Function::Scale,
        Function::Reconcile,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Function::Image => "image",
            Function::Health => "health",
            Function::Scale => "scale",
            Function::Reconcile => "reconcile",
        }
    }
}

/// Which event bus a rule listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleBus {
    /// phoenix's bus (`PHOENIX_BUS`; the template's `EventBusName`): phoenix's own events.
    Phoenix,
    /// The account's default bus: AWS services put their events (`aws.*`) only there.
    Default,
}

/// One EventBridge rule: its name (also the CloudFormation logical id stem), bus and pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub name: &'static str,
    pub function: Function,
    pub bus: RuleBus,
    pub pattern: Value,
}

/// Every rule phoenix installs: its own events on its bus, AWS's on the default bus.
///
/// AWS events go to the function whose work they are: new images to `image`; everything said
/// about one instance (an alarm, a state phoenix did not ask for, a Spot interruption or
/// rebalance, scheduled maintenance, an in-place change) to `health`, which already replaces
/// single instances and reads only the instance's record to find its fleet; so does a launch
/// template's new version (CloudTrail, as the in-place changes), which reconciles the fleets
/// floating on it.
pub fn rules() -> Vec<RuleSpec> {
    use crate::aws_events as aws;
    let mutations: Vec<&str> = aws::MUTATIONS
        .iter()
        .flat_map(|(_, names)| names.iter().copied())
        .collect();
    let mutation_sources: Vec<&str> = aws::MUTATIONS.iter().map(|(src, _)| *src).collect();
    let phoenix = |name, function, pattern| RuleSpec {
        name,
        function,
        bus: RuleBus::Phoenix,
        pattern,
    };
    let aws = |name, function, pattern| RuleSpec {
        name,
        function,
        bus: RuleBus::Default,
        pattern,
    };
    vec![
        phoenix(
            "ImageReady",
            Function::Image,
            json!({"source": [SOURCE], "detail-type": [IMAGE_READY, ROLLOUT_CONTROL]}),
        ),
        // A lifecycle hook's answer is about one instance, as a health report is.
        phoenix(
            "HealthCheck",
            Function::Health,
            json!({"source": [SOURCE],
                   "detail-type": [HEALTH_CHECK_FAILED, HEALTH_CHECK_PASSED, LIFECYCLE_ACTION_COMPLETED]}),
        ),
        phoenix(
            "ScaleRequested",
            Function::Scale,
            json!({"source": [SOURCE], "detail-type": [SCALE_REQUESTED]}),
        ),
        phoenix(
            "ReconcileRequested",
            Function::Reconcile,
            json!({"source": [SOURCE], "detail-type": [RECONCILE_REQUESTED]}),
        ),
        aws(
            "AmiAvailable",
            Function::Image,
            json!({"source": [aws::EC2], "detail-type": [aws::AMI_STATE_CHANGE],
                   "detail": {"State": ["available"]}}),
        ),
        aws(
            "ImageBuildAvailable",
            Function::Image,
            json!({"source": [aws::IMAGE_BUILDER], "detail-type": [aws::IMAGE_BUILDER_STATE_CHANGE],
                   "detail": {"state": {"status": ["AVAILABLE"]}}}),
        ),
        aws(
            "InstanceAlarm",
            Function::Health,
            json!({"source": [aws::CLOUDWATCH], "detail-type": [aws::ALARM_STATE_CHANGE],
                   "detail": {"state": {"value": ["ALARM"]}}}),
        ),
        aws(
            "InstanceStateChange",
            Function::Health,
            json!({"source": [aws::EC2], "detail-type": [aws::INSTANCE_STATE_CHANGE],
                   "detail": {"state": aws::UNASKED_STATES}}),
        ),
        aws(
            "SpotInterruption",
            Function::Health,
            json!({"source": [aws::EC2],
                   "detail-type": [aws::SPOT_INTERRUPTION, aws::REBALANCE_RECOMMENDATION]}),
        ),
        aws(
            "ScheduledMaintenance",
            Function::Health,
            json!({"source": [aws::HEALTH], "detail-type": [aws::HEALTH_EVENT],
                   "detail": {"service": ["EC2"], "eventTypeCategory": ["scheduledChange"]}}),
        ),
        aws(
            "InstanceMutation",
            Function::Health,
            json!({"source": [aws::EC2, aws::SSM], "detail-type": [aws::API_CALL],
                   "detail": {"eventSource": mutation_sources, "eventName": mutations}}),
        ),
        // The same detail-type, so the same function (routing goes by detail-type).
        aws(
            "LaunchTemplateChange",
            Function::Health,
            json!({"source": [aws::EC2], "detail-type": [aws::API_CALL],
                   "detail": {"eventSource": ["ec2.amazonaws.com"],
                              "eventName": aws::TEMPLATE_CHANGES}}),
        ),
    ]
}

/// How often the scheduled reconcile runs in AWS.
pub const RECONCILE_SCHEDULE: &str = "rate(1 minute)";

/// Whether an event matches a pattern of the simple form phoenix uses (exact values listed per
/// top-level field). The dispatcher relies on EventBridge itself for matching; this exists so the
/// core can route without a bus (tests, the simulator).
pub fn matches(pattern: &Value, source: &str, detail_type: &str) -> bool {
    let field_ok = |key: &str, value: &str| {
        pattern
            .get(key)
            .and_then(Value::as_array)
            .is_none_or(|allowed| allowed.iter().any(|a| a == value))
    };
    field_ok("source", source) && field_ok("detail-type", detail_type)
}

/// The function that handles a phoenix event of this detail-type.
pub fn route(source: &str, detail_type: &str) -> Option<Function> {
    if source == SCHEDULE_SOURCE && detail_type == SCHEDULED_EVENT {
        return Some(Function::Reconcile);
    }
    rules()
        .into_iter()
        .find(|r| matches(&r.pattern, source, detail_type))
        .map(|r| r.function)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phoenix_event_routes_to_exactly_one_function() {
        for dt in [
            IMAGE_READY,
            ROLLOUT_CONTROL,
            HEALTH_CHECK_FAILED,
            HEALTH_CHECK_PASSED,
            LIFECYCLE_ACTION_COMPLETED,
            SCALE_REQUESTED,
            RECONCILE_REQUESTED,
        ] {
            let hits: Vec<_> = rules()
                .into_iter()
                .filter(|r| matches(&r.pattern, SOURCE, dt))
                .collect();
            assert_eq!(hits.len(), 1, "{dt}");
        }
        assert_eq!(route(SOURCE, HEALTH_CHECK_PASSED), Some(Function::Health));
        assert_eq!(
            route(SOURCE, LIFECYCLE_ACTION_COMPLETED),
            Some(Function::Health)
        );
        assert_eq!(route("aws.ec2", IMAGE_READY), None);
        use crate::aws_events as aws;
        for (source, dt, function) in [
            (aws::EC2, aws::AMI_STATE_CHANGE, Function::Image),
            (
                aws::IMAGE_BUILDER,
                aws::IMAGE_BUILDER_STATE_CHANGE,
                Function::Image,
            ),
            (aws::CLOUDWATCH, aws::ALARM_STATE_CHANGE, Function::Health),
            (aws::EC2, aws::INSTANCE_STATE_CHANGE, Function::Health),
            (aws::EC2, aws::SPOT_INTERRUPTION, Function::Health),
            (aws::EC2, aws::REBALANCE_RECOMMENDATION, Function::Health),
            (aws::HEALTH, aws::HEALTH_EVENT, Function::Health),
            (aws::EC2, aws::API_CALL, Function::Health),
            (aws::SSM, aws::API_CALL, Function::Health),
        ] {
            // Several rules may share a detail-type (CloudTrail's) only when they go to the same
            // function and their `eventName`s are disjoint: one event never reaches two rules.
            let hits: Vec<RuleSpec> = rules()
                .into_iter()
                .filter(|r| matches(&r.pattern, source, dt))
                .collect();
            assert!(!hits.is_empty(), "{source} {dt}");
            assert!(hits.iter().all(|r| r.function == function), "{source} {dt}");
            let mut names = std::collections::BTreeSet::new();
            for r in &hits {
                for n in r.pattern["detail"]["eventName"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    assert!(names.insert(n.to_string()), "{n} in two rules");
                }
            }
            assert!(hits.len() == 1 || names.len() > 1, "{source} {dt}");
            assert_eq!(route(source, dt), Some(function), "{source} {dt}");
            assert!(aws::is_known(source, dt), "{source} {dt}");
        }
        // AWS services publish only on the default bus; phoenix's own events use phoenix's bus.
        for r in rules() {
            let aws_source = r.pattern["source"].as_array().is_some_and(|s| {
                s.iter()
                    .all(|s| s.as_str().is_some_and(|s| s.starts_with("aws.")))
            });
            assert_eq!(r.bus == RuleBus::Default, aws_source, "{}", r.name);
        }
        assert_eq!(route(SOURCE, "Other"), None);
        assert_eq!(
            route(SCHEDULE_SOURCE, SCHEDULED_EVENT),
            Some(Function::Reconcile)
        );
    }
}
