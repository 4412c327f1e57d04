//! The local stack: the same rules as in AWS, installed on the emulator's EventBridge with SQS
//! queues as targets, and a dispatcher that stands where EventBridge → Lambda stands in AWS: it
//! receives each matched event and calls the same handler the function would, with the same
//! function routing. The scheduled reconcile is a tick that delivers the same `Scheduled Event`
//! envelope an EventBridge schedule does.

use aws_config::SdkConfig;
use aws_sdk_eventbridge::types::Target;
use aws_sdk_sqs::types::QueueAttributeName;
use phoenix_aws::config::Settings;
use phoenix_aws::error::{sdk_error, Error, Result};
use phoenix_aws::lambda::envelope_from_json;
use phoenix_aws::table::DynamoTable;
use phoenix_core::events::{Envelope, SCHEDULED_EVENT, SCHEDULE_SOURCE};
use phoenix_core::patterns::{rules, Function, RuleBus};
use phoenix_protocol::ports::Time;
use phoenix_protocol::{Controller, Ports, Report};
use serde::Serialize;
use tracing::{info, warn};

/// Where rejected events go (in AWS: the rule's and the function's DLQ).
pub const DLQ: &str = "phoenix-dlq";

pub fn queue_name(f: Function) -> String {
    format!("phoenix-{}", f.name())
}

fn sqs_err<E, R>(e: aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Error
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    sdk_error("sqs", e)
}

fn events_err<E, R>(e: aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Error
where
    E: aws_sdk_eventbridge::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    sdk_error("eventbridge", e)
}

/// Creates the table, the bus (unless it is the default bus), one queue per function plus the DLQ,
/// and every rule of `patterns::rules()` targeting its function's queue — phoenix's own rules on
/// its bus, the rules for AWS's events (`aws.*`) on the default bus. Safe to run twice.
pub async fn provision(sdk: &SdkConfig, settings: &Settings) -> Result<()> {
    DynamoTable::new(aws_sdk_dynamodb::Client::new(sdk), &settings.table)
        .create_table()
        .await?;
    let events = aws_sdk_eventbridge::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    if settings.bus != "default" {
        if let Err(e) = events.create_event_bus().name(&settings.bus).send().await {
            if !e
                .as_service_error()
                .is_some_and(|s| s.is_resource_already_exists_exception())
            {
                return Err(events_err(e));
            }
        }
    }
    create_queue(&sqs, DLQ).await?;
    for rule in rules() {
        let url = create_queue(&sqs, &queue_name(rule.function)).await?;
        let arn = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(sqs_err)?
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or_else(|| Error::Permanent {
                service: "sqs",
                message: format!("queue {url} has no ARN"),
            })?;
        let rule_name = format!("phoenix-{}", rule.name);
        // AWS services put their events on the default bus only, as in AWS.
        let bus = match rule.bus {
            RuleBus::Phoenix => settings.bus.as_str(),
            RuleBus::Default => "default",
        };
        events
            .put_rule()
            .name(&rule_name)
            .event_bus_name(bus)
            .event_pattern(rule.pattern.to_string())
            .send()
            .await
            .map_err(events_err)?;
        let target = Target::builder()
            .id(format!("dispatch-{}", rule.function.name()))
            .arn(arn)
            .build()
            .map_err(|e| Error::Permanent {
                service: "eventbridge",
                message: e.to_string(),
            })?;
        events
            .put_targets()
            .rule(&rule_name)
            .event_bus_name(bus)
            .targets(target)
            .send()
            .await
            .map_err(events_err)?;
    }
    Ok(())
}

async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<String> {
    // A short visibility timeout: a failed (retryable) delivery comes back within seconds locally.
    let out = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, "5")
        .send()
        .await
        .map_err(sqs_err)?;
    out.queue_url.ok_or_else(|| Error::Permanent {
        service: "sqs",
        message: format!("queue {name} has no URL"),
    })
}

/// One event the dispatcher delivered, and what came of it.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub function: &'static str,
    pub event_id: String,
    pub detail_type: String,
    pub report: Option<Report>,
    pub error: Option<String>,
}

/// Delivers queued events to the handlers, as EventBridge → Lambda does in AWS.
pub struct Dispatcher<P: Ports> {
    sqs: aws_sdk_sqs::Client,
    queues: Vec<(Function, String)>,
    dlq: String,
    pub controller: Controller<P>,
}

impl<P: Ports> Dispatcher<P> {
    pub async fn connect(sdk: &SdkConfig, controller: Controller<P>) -> Result<Self> {
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let url = |name: String| {
            let sqs = sqs.clone();
            async move {
                sqs.get_queue_url()
                    .queue_name(name)
                    .send()
                    .await
                    .map_err(sqs_err)?
                    .queue_url
                    .ok_or_else(|| Error::NotFound("queue".into()))
            }
        };
        let mut queues = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for rule in rules() {
            if seen.insert(rule.function) {
                queues.push((rule.function, url(queue_name(rule.function)).await?));
            }
        }
        let dlq = url(DLQ.to_string()).await?;
        Ok(Dispatcher {
            sqs,
            queues,
            dlq,
            controller,
        })
    }

    /// Receives what is queued now (waiting up to `wait_secs` on each queue) and handles it.
    pub async fn poll_once(&self, wait_secs: i32) -> Result<Vec<Delivery>> {
        let mut delivered = Vec::new();
        for (function, url) in &self.queues {
            let out = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(wait_secs)
                .send()
                .await
                .map_err(sqs_err)?;
            for msg in out.messages.unwrap_or_default() {
                let body = msg.body.clone().unwrap_or_default();
                let d = self.deliver(*function, &body).await;
                // Handled, or failed for good: done. Failed but retryable: left for redelivery.
                let done = !d.retryable;
                if d.rejected {
                    // Bad input: keep it for a person, with the reason, as a DLQ does.
                    self.sqs
                        .send_message()
                        .queue_url(&self.dlq)
                        .message_body(&body)
                        .message_attributes(
                            "reason",
                            aws_sdk_sqs::types::MessageAttributeValue::builder()
                                .data_type("String")
                                .string_value(d.delivery.error.clone().unwrap_or_default())
                                .build()
                                .map_err(|e| Error::Permanent {
                                    service: "sqs",
                                    message: e.to_string(),
                                })?,
                        )
                        .send()
                        .await
                        .map_err(sqs_err)?;
                }
                if done {
                    if let Some(handle) = msg.receipt_handle {
                        self.sqs
                            .delete_message()
                            .queue_url(url)
                            .receipt_handle(handle)
                            .send()
                            .await
                            .map_err(sqs_err)?;
                    }
                }
                delivered.push(d.delivery);
            }
        }
        Ok(delivered)
    }

    async fn deliver(&self, function: Function, body: &str) -> Handled {
        let parsed = serde_json::from_str(body)
            .map_err(|e| {
                Error::Invalid(phoenix_core::Error::Event(format!(
                    "malformed EventBridge event: {e}"
                )))
            })
            .and_then(envelope_from_json);
        let env = match parsed {
            Ok(env) => env,
            Err(e) => {
                warn!(function = function.name(), error = %e, "rejected");
                return Handled::failed(function, "?", "?", &e);
            }
        };
        match self.controller.handle(&env, Some(function)).await {
            Ok(report) => {
                info!(function = function.name(), event_id = %env.id, detail_type = %env.detail_type, "handled");
                Handled {
                    delivery: Delivery {
                        function: function.name(),
                        event_id: env.id.clone(),
                        detail_type: env.detail_type.clone(),
                        report: Some(report),
                        error: None,
                    },
                    retryable: false,
                    rejected: false,
                }
            }
            Err(e) => {
                warn!(function = function.name(), event_id = %env.id, error = %e, retryable = e.is_retryable(), "failed");
                Handled::failed(function, &env.id, &env.detail_type, &e)
            }
        }
    }

    /// Delivers until every queue is empty.
    pub async fn drain(&self) -> Result<Vec<Delivery>> {
        let mut all = Vec::new();
        loop {
            let batch = self.poll_once(0).await?;
            if batch.is_empty() {
                return Ok(all);
            }
            all.extend(batch);
        }
    }

    /// The scheduled reconcile, with the envelope an EventBridge schedule sends.
    pub async fn tick(&self) -> Result<Report> {
        let now = self.controller.time.now();
        let env = Envelope::new(
            &uuid::Uuid::new_v4().to_string(),
            SCHEDULE_SOURCE,
            SCHEDULED_EVENT,
            now,
            serde_json::json!({}),
        );
        self.controller
            .handle(&env, Some(Function::Reconcile))
            .await
    }
}

struct Handled {
    delivery: Delivery,
    retryable: bool,
    rejected: bool,
}

impl Handled {
    fn failed(function: Function, id: &str, detail_type: &str, e: &Error) -> Self {
        Handled {
            delivery: Delivery {
                function: function.name(),
                event_id: id.into(),
                detail_type: detail_type.into(),
                report: None,
                error: Some(e.to_string()),
            },
            retryable: e.is_retryable(),
            rejected: !e.is_retryable(),
        }
    }
}

/// Registers a machine image on the emulator (standing in for an image pipeline) and returns its id.
pub async fn register_image(sdk: &SdkConfig, name: &str) -> Result<phoenix_core::ImageId> {
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    let out = ec2
        .register_image()
        .name(name)
        .root_device_name("/dev/xvda")
        .architecture(aws_sdk_ec2::types::ArchitectureValues::X8664)
        .send()
        .await
        .map_err(|e| sdk_error("ec2", e))?;
    let id = out.image_id.ok_or_else(|| Error::Permanent {
        service: "ec2",
        message: "RegisterImage returned no id".into(),
    })?;
    Ok(phoenix_core::ImageId::parse(&id)?)
}
