//! The EventBridge rules phoenix needs: which events go to which function. This is the single
//! source of truth: the local dispatcher creates exactly these rules on the emulator, and a test
//! checks that `infra/template.yaml` carries the same patterns.

use crate::events::{
    HEALTH_CHECK_FAILED, HEALTH_CHECK_PASSED, IMAGE_READY, RECONCILE_REQUESTED, ROLLOUT_CONTROL,
    SCALE_REQUESTED, SCHEDULED_EVENT, SCHEDULE_SOURCE, SOURCE,
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

/// One EventBridge rule: its name (also the CloudFormation logical id stem) and pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub name: &'static str,
    pub function: Function,
    pub pattern: Value,
}

/// Every rule phoenix installs on its bus.
pub fn rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec {
            name: "ImageReady",
            function: Function::Image,
            pattern: json!({"source": [SOURCE], "detail-type": [IMAGE_READY, ROLLOUT_CONTROL]}),
        },
        RuleSpec {
            name: "HealthCheck",
            function: Function::Health,
            pattern: json!({"source": [SOURCE], "detail-type": [HEALTH_CHECK_FAILED, HEALTH_CHECK_PASSED]}),
        },
        RuleSpec {
            name: "ScaleRequested",
            function: Function::Scale,
            pattern: json!({"source": [SOURCE], "detail-type": [SCALE_REQUESTED]}),
        },
        RuleSpec {
            name: "ReconcileRequested",
            function: Function::Reconcile,
            pattern: json!({"source": [SOURCE], "detail-type": [RECONCILE_REQUESTED]}),
        },
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
        assert_eq!(route("aws.ec2", IMAGE_READY), None);
        assert_eq!(route(SOURCE, "Other"), None);
        assert_eq!(
            route(SCHEDULE_SOURCE, SCHEDULED_EVENT),
            Some(Function::Reconcile)
        );
    }
}
