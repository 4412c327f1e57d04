//! The controller's side of AWS's own events (`phoenix_core::aws_events`): which fleets an event
//! concerns, and the same plan → commit → execute path as phoenix's events for each of them.
//!
//! - An event about an image goes to every fleet whose `image_selector` matches what EC2
//!   reports about the AMI, through the accounts allowed and the fleet's admission gate.
//! - A launch template's new version or default goes to every fleet floating on it, as a
//!   reconcile (which resolves the template again: a new version is drift).
//! - An event about instances goes to the fleet of each instance (found by the instance index);
//!   instances no fleet manages are ignored (logged at debug level: success, not an error).
//! - An event may concern several fleets, so its record is kept per fleet (`<id>#<fleet>`); AWS
//!   Health's is keyed by account and `communicationId`, which AWS reuses when it sends the same
//!   communication again.

use super::{fnv, refuse_misrouted, Controller, FleetOutcome, FleetReport, Report, MAX_CONFLICTS};
use crate::error::{Error, Result};
use crate::ports::images::BoxFuture;
use crate::ports::{Deadline, Ports};
use crate::store::{EventKey, EventRecord};
use phoenix_core::aws_events::{self, AwsEvent};
use phoenix_core::events::{Cause, Envelope, Intent};
use phoenix_core::images::{self, ImageBuild, ImageFacts};
use phoenix_core::model::{Fleet, FleetSpec, Location};
use phoenix_core::patterns::Function;
use phoenix_core::{FleetName, ImageId, InstanceId};
use std::collections::BTreeMap;
use tracing::{debug, warn};

/// The record key of an AWS event for one fleet: its identity (EventBridge id, or Health's
/// communication) and the fleet. Health's content may change between sends of the same
/// communication, so its hash covers the identity alone; a redelivery is a duplicate either way.
fn key_for(env: &Envelope, fleet: &FleetName) -> EventKey {
    let identity = aws_events::identity(env);
    let content = if identity == env.id {
        format!("{}\n{}\n{}", env.source, env.detail_type, env.detail)
    } else {
        identity.clone()
    };
    EventKey {
        id: format!("{identity}#{fleet}"),
        hash: fnv(&content),
    }
}

/// What an AWS event asks of one fleet. Worked out first (reads only), then carried out by the
/// same calls as phoenix's own events, one fleet at a time: no deeper nesting than theirs.
enum Job {
    /// Apply the intent to the whole fleet, then reconcile it.
    Fleet {
        name: FleetName,
        intent: Intent,
        key: EventKey,
    },
    /// Apply the intent to one instance (reads the instance and its fleet's record only).
    Instance {
        id: InstanceId,
        intent: Intent,
        key: EventKey,
    },
    /// Record that the image was refused: its owner is not allowed, or the fleet's gate refused it.
    Reject {
        name: FleetName,
        image: ImageId,
        reason: String,
        key: EventKey,
    },
}

impl<P: Ports> Controller<P> {
    /// Handles an event from an AWS service. Boxed here, in a plain function, so that the
    /// caller's frame holds a pointer rather than this future (debug builds keep every awaited
    /// future's temporary on the stack, and the fleet paths are deep).
    pub(super) fn handle_aws<'a>(
        &'a self,
        env: &'a Envelope,
        event: AwsEvent,
        function: Option<Function>,
        deadline: Deadline,
    ) -> BoxFuture<'a, Result<Report>> {
        Box::pin(self.handle_aws_inner(env, event, function, deadline))
    }

    async fn handle_aws_inner(
        &self,
        env: &Envelope,
        event: AwsEvent,
        function: Option<Function>,
        deadline: Deadline,
    ) -> Result<Report> {
        refuse_misrouted(env, function)?;
        self.check_time(deadline, "handle the event")?;
        let cause = Cause::from_envelope(env);
        let jobs = self.jobs(env, event, deadline).await?;
        let mut fleets = Vec::new();
        for job in jobs {
            self.check_time(deadline, "act on another fleet")?;
            let report = match job {
                Job::Fleet { name, intent, key } => {
                    self.reconcile_within(
                        &name,
                        Some(&intent),
                        env.time,
                        &cause,
                        Some(&key),
                        deadline,
                        None,
                    )
                    .await?
                }
                Job::Instance { id, intent, key } => {
                    self.instance_event(&id, &intent, env.time, &cause, &key, deadline)
                        .await?
                }
                Job::Reject {
                    name,
                    image,
                    reason,
                    key,
                } => self.reject_image(name, image, reason, &cause, &key).await?,
            };
            fleets.push(report);
        }
        Ok(Report {
            event_id: env.id.clone(),
            detail_type: env.detail_type.clone(),
            fleets,
        })
    }

    /// What the event asks of each fleet it concerns.
    async fn jobs(&self, env: &Envelope, event: AwsEvent, deadline: Deadline) -> Result<Vec<Job>> {
        let mut jobs = Vec::new();
        match event {
            AwsEvent::Ignored { reason } => {
                debug!(event_id = %env.id, detail_type = %env.detail_type, %reason, "ignored");
            }
            AwsEvent::ImageAvailable { image } => {
                self.image_jobs(env, &image, None, &mut jobs, deadline)
                    .await?;
            }
            AwsEvent::ImageBuilt { arn } => {
                let build = self.intake.images.resolve(&arn).await?;
                // A build distributes AMIs to several regions; this region's are ours.
                let here: Vec<&ImageId> = build
                    .amis
                    .iter()
                    .filter(|(region, _)| env.region.as_deref().is_none_or(|r| r == region))
                    .map(|(_, image)| image)
                    .collect();
                if here.is_empty() {
                    debug!(%arn, "the build has no AMI in this region: ignored");
                }
                for image in here {
                    self.image_jobs(env, image, Some(&build), &mut jobs, deadline)
                        .await?;
                }
            }
            AwsEvent::HealthCheckFailed { instance, reason } => {
                if let Some(name) = self.fleet_of(env, &instance).await? {
                    jobs.push(Job::Instance {
                        key: key_for(env, &name),
                        intent: Intent::HealthCheckFailed {
                            instance: instance.clone(),
                            reason,
                        },
                        id: instance,
                    });
                }
            }
            AwsEvent::TemplateChanged { id, name } => {
                for fleet in self
                    .fleets_on_template(env, id.as_deref(), name.as_deref(), deadline)
                    .await?
                {
                    jobs.push(Job::Fleet {
                        key: key_for(env, &fleet),
                        intent: Intent::Reconcile {
                            fleet: Some(fleet.clone()),
                        },
                        name: fleet,
                    });
                }
            }
            AwsEvent::Notice { instances, notice } => {
                let mut by_fleet: BTreeMap<FleetName, Vec<InstanceId>> = BTreeMap::new();
                for id in instances {
                    if let Some(name) = self.fleet_of(env, &id).await? {
                        by_fleet.entry(name).or_default().push(id);
                    }
                }
                for (name, ids) in by_fleet {
                    jobs.push(Job::Fleet {
                        key: key_for(env, &name),
                        intent: Intent::Notice {
                            instances: ids,
                            notice: notice.clone(),
                        },
                        name,
                    });
                }
            }
        }
        Ok(jobs)
    }

    /// The fleets whose launch template floats (`$Latest`, `$Default`, no version) and is the one
    /// named, by id or name. A fleet that names it one way and the event the other is matched
    /// through EC2 (the template's id).
    async fn fleets_on_template(
        &self,
        env: &Envelope,
        id: Option<&str>,
        name: Option<&str>,
        deadline: Deadline,
    ) -> Result<Vec<FleetName>> {
        let mut out = Vec::new();
        for fleet in self.store.list_fleets().await? {
            let f = self.store.load_partial(&fleet, &[]).await?;
            let Some(t) = f.spec.launch_template.as_ref().filter(|t| t.is_floating()) else {
                continue;
            };
            // A template of the same name in another account or region is another template.
            if !self.accepts(&f.spec, env) {
                continue;
            }
            let same = match (&t.id, &t.name) {
                (Some(tid), _) if id.is_some() => id == Some(tid.as_str()),
                (_, Some(tname)) if name.is_some() => name == Some(tname.as_str()),
                _ => {
                    let at = self.apis(&f.spec).await?;
                    let found = at.compute.launch_template(t, deadline).await?;
                    found.is_some_and(|v| id == Some(v.id.as_str()))
                }
            };
            if same {
                out.push(fleet);
            }
        }
        if out.is_empty() {
            debug!(
                ?id,
                ?name,
                "no fleet floats on this launch template: ignored"
            );
        }
        Ok(out)
    }

    /// What EC2 reports about an AMI an AWS event announced, in the account and region of a
    /// fleet of `spec`. Not visible yet (EC2's reads are eventually consistent): retryable, the
    /// event is delivered again.
    async fn visible_image(
        &self,
        spec: &FleetSpec,
        image: &ImageId,
        deadline: Deadline,
    ) -> Result<ImageFacts> {
        self.apis(spec)
            .await?
            .compute
            .describe_image(image, deadline)
            .await?
            .ok_or_else(|| Error::Transient {
                service: "ec2",
                message: format!("image {image} is not visible to this account yet"),
            })
    }

    /// The fleet managing an instance, if it still has to act on it: not for an instance no fleet
    /// manages, nor one phoenix already replaced or is replacing (EC2 reports every termination
    /// phoenix makes, too). Those are ignored, logged at debug level.
    async fn fleet_of(&self, env: &Envelope, id: &InstanceId) -> Result<Option<FleetName>> {
        let fleet = match self.store.load_for_instance(id).await {
            Ok(fleet) => fleet,
            Err(Error::NotFound(why)) => {
                debug!(instance = %id, %why, "not a fleet instance: ignored");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        match fleet.instances.get(id) {
            // The same id in another account or region is not this fleet's instance.
            _ if !self.accepts(&fleet.spec, env) => {
                debug!(
                    instance = %id,
                    fleet = %fleet.spec.name,
                    account = ?env.account,
                    region = ?env.region,
                    "from another account or region than the fleet's: ignored"
                );
                Ok(None)
            }
            Some(i) if !i.is_live() => {
                debug!(instance = %id, fleet = %fleet.spec.name, "already replaced: ignored");
                Ok(None)
            }
            Some(i) if i.disposal.is_some() => {
                debug!(instance = %id, fleet = %fleet.spec.name, "being replaced: ignored");
                Ok(None)
            }
            _ => Ok(Some(fleet.spec.name)),
        }
    }

    /// `ImageReady` (or a refusal) for every fleet whose selector matches the image.
    async fn image_jobs(
        &self,
        env: &Envelope,
        image: &ImageId,
        build: Option<&ImageBuild>,
        jobs: &mut Vec<Job>,
        deadline: Deadline,
    ) -> Result<()> {
        let before = jobs.len();
        // What EC2 reports about the image, read once per account and region.
        let mut seen: BTreeMap<Location, ImageFacts> = BTreeMap::new();
        for name in self.store.list_fleets().await? {
            let fleet = self.store.load_partial(&name, &[]).await?;
            let Some(selector) = &fleet.spec.image_selector else {
                continue;
            };
            // An AMI lives in one account's region: fleets elsewhere cannot launch it.
            if !self.accepts(&fleet.spec, env) {
                continue;
            }
            let location = fleet.spec.location();
            let facts = match seen.get(&location) {
                Some(f) => f.clone(),
                None => {
                    let f = self.visible_image(&fleet.spec, image, deadline).await?;
                    seen.insert(location, f.clone());
                    f
                }
            };
            let facts = &facts;
            if let Err(why) = selector.matches(facts, build) {
                debug!(fleet = %name, %image, %why, "image not selected");
                continue;
            }
            let key = key_for(env, &name);
            let refused = (fleet.spec.image != *image)
                .then(|| images::refusal(&fleet, &self.intake.image_accounts, image, facts))
                .flatten();
            jobs.push(match refused {
                Some(reason) => Job::Reject {
                    name,
                    image: image.clone(),
                    reason,
                    key,
                },
                None => Job::Fleet {
                    intent: Intent::ImageReady {
                        fleet: name.clone(),
                        image: image.clone(),
                    },
                    name,
                    key,
                },
            });
        }
        if jobs.len() == before {
            debug!(%image, "no fleet selects this image: ignored");
        }
        Ok(())
    }

    /// Why the image may not be launched for the fleet (as its record says) — its owner is not
    /// an allowed account, or the fleet's admission gate refuses it — if it may not (not for the
    /// image it runs).
    pub(super) fn refusal(
        &self,
        fleet: &Fleet,
        image: &ImageId,
        facts: &ImageFacts,
    ) -> Option<String> {
        (fleet.spec.image != *image)
            .then(|| images::refusal(fleet, &self.intake.image_accounts, image, facts))
            .flatten()
    }

    /// Records `ImageRejected` in the fleet's history, with the event, and publishes it.
    pub(super) fn reject_image<'a>(
        &'a self,
        name: FleetName,
        image: ImageId,
        reason: String,
        cause: &'a Cause,
        key: &'a EventKey,
    ) -> BoxFuture<'a, Result<FleetReport>> {
        Box::pin(self.reject_image_inner(name, image, reason, cause, key))
    }

    async fn reject_image_inner(
        &self,
        name: FleetName,
        image: ImageId,
        reason: String,
        cause: &Cause,
        key: &EventKey,
    ) -> Result<FleetReport> {
        let (name, image) = (&name, &image);
        warn!(fleet = %name, %image, %reason, "image refused");
        for attempt in 0..MAX_CONFLICTS {
            let fleet = self.store.load_partial(name, &[]).await?;
            let step = images::rejected(&fleet, image, reason.clone());
            // Nothing follows the commit: the event's record is complete at once.
            let record = EventRecord::Claim {
                key,
                in_progress_until: None,
            };
            match self
                .store
                .commit(&fleet, &step, cause, Some(record), self.now())
                .await
            {
                Ok(committed) => {
                    self.announce(&committed, &step.changes).await;
                    return Ok(FleetReport::of(
                        FleetOutcome::Changed,
                        &committed,
                        step.changes,
                    ));
                }
                Err(Error::Conflict(_)) => self.backoff(attempt).await,
                Err(seen) if seen.is_seen_before() => {
                    return Ok(FleetReport::of(FleetOutcome::Duplicate, &fleet, Vec::new()))
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(name.to_string()))
    }
}
