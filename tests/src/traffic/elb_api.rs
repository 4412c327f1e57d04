//! The ELB API as AWS answers it, in front of an emulator that leaves target health out.
//!
//! An HTTP/1.1 proxy on 127.0.0.1 that forwards every request to the emulator unchanged (method,
//! path, headers with their case — Host included — and body, byte for byte), whatever the service,
//! so a whole controller can use it as its only endpoint. ELBv2 requests are those of the query
//! protocol with `Version=2015-12-01` in the form, or signed for `elasticloadbalancing`. Of those:
//!
//! - `RegisterTargets` and `DeregisterTargets` answered 200 record, per target group and instance,
//!   the moment of the registration or of the deregistration (each forgets the other).
//! - `DescribeTargetHealth` answers are rewritten where the emulator has no notion of the state
//!   AWS would report (the emulator says `healthy` for every registered running instance, and
//!   `unused` or nothing at all right after a deregistration):
//!   - `draining` (`Target.DeregistrationInProgress`) for a target deregistered less than the
//!     group's deregistration delay ago while the load balancer still routes to it or has requests
//!     in flight on it. With neither, AWS completes the deregistration at once ("If a deregistering
//!     target has no in-flight requests and no active connections, Elastic Load Balancing
//!     immediately completes the deregistration process"), and so does this proxy. The entry
//!     replaces the emulator's if it answered one (targets named in the request) and is added if
//!     it did not (all targets of the group).
//!   - `initial` (`Elb.RegistrationInProgress`) for a target registered less than `initial_for`
//!     ago (zero unless set), as during a new target's first health checks;
//!   - `unhealthy` (`Target.ResponseCodeMismatch`) for a registered target the test marked so.
//!
//!   Only entries the emulator reports `healthy` become `initial` or `unhealthy`.
//!
//! And of Auto Scaling's requests (`Version=2011-01-01`), `DetachInstances` answered 200 is
//! followed, as AWS does it and the emulator does not, by the detached instances' deregistration
//! from every target group of the group (recorded as a `DeregisterTargets` would be: they drain);
//! `DescribeInstanceRefreshes`, which the emulator does not implement, is answered here: an
//! `InProgress` refresh for each group the test said is being refreshed, else none. Of STS's,
//! `AssumeRole` of a role the test said its trust policy refuses is answered 403 `AccessDenied`
//! (the emulator lets any role be assumed). The delay is
//!   read from the emulator (`DescribeTargetGroupAttributes`, `deregistration_delay.timeout_seconds`,
//!   300 when absent) the first time a group's deregistration matters, and kept.
//!
//! The emulator's answer has a regular shape, edited as text without an XML library:
//!
//! ```xml
//! <DescribeTargetHealthResponse xmlns="..."><DescribeTargetHealthResult><TargetHealthDescriptions>
//!   <member><Target><Id>i-...</Id><Port>80</Port></Target><HealthCheckPort>traffic-port</HealthCheckPort>
//!     <TargetHealth><State>healthy</State></TargetHealth></member>
//!   <member>...<TargetHealth><State>unused</State><Reason>Target.NotRegistered</Reason>
//!     <Description>Target is not registered to the target group</Description></TargetHealth></member>
//! </TargetHealthDescriptions></DescribeTargetHealthResult><ResponseMetadata>...</ResponseMetadata>
//! </DescribeTargetHealthResponse>
//! ```
//!
//! (without the whitespace; an empty list is `<TargetHealthDescriptions/>`). An answer of another
//! shape is forwarded unchanged, with a line on stderr.

use super::http::{self, Body, Client};
use super::router::InFlight;
use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::http::request::Parts;
use hyper::{header, Request, Response, StatusCode};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The API version of ELBv2 requests (EC2, the other query-protocol service, uses others).
const ELBV2_VERSION: &str = "2015-12-01";
/// The API version of Auto Scaling requests.
const AUTOSCALING_VERSION: &str = "2011-01-01";
/// The API version of STS requests.
const STS_VERSION: &str = "2011-06-15";

/// AWS's default deregistration delay.
const DEFAULT_DELAY: Duration = Duration::from_secs(300);

/// The proxy. Dropping it stops serving.
pub struct ElbApiProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

struct Shared {
    /// `http://host:port` of the emulator.
    upstream: String,
    client: Client,
    /// Straight to the emulator, for the target groups' attributes.
    elb: aws_sdk_elasticloadbalancingv2::Client,
    /// Straight to the emulator, for a group's target groups.
    autoscaling: aws_sdk_autoscaling::Client,
    in_flight: InFlight,
    book: Mutex<Book>,
    groups: Mutex<HashMap<String, Group>>,
}

#[derive(Default)]
struct Book {
    /// (target group ARN, instance id) -> deregistration.
    deregistered: BTreeMap<(String, String), Deregistration>,
    /// (target group ARN, instance id) -> moment of registration.
    registered: HashMap<(String, String), Instant>,
    unhealthy: BTreeSet<String>,
    initial_for: Duration,
    calls: BTreeMap<String, u64>,
    /// Auto Scaling groups with an instance refresh under way.
    refreshing: BTreeSet<String>,
    /// Roles whose trust policy refuses the caller.
    denied_roles: BTreeSet<String>,
}

struct Deregistration {
    at: Instant,
    /// The port named in the request, if any (the group's port otherwise).
    port: Option<String>,
}

/// What the proxy needs of a target group.
#[derive(Clone)]
struct Group {
    delay: Duration,
    port: Option<i32>,
    health_check_port: Option<String>,
}

impl ElbApiProxy {
    /// Starts the proxy in front of `upstream` (`http://127.0.0.1:PORT`). `in_flight` is the load
    /// balancer's state that decides when a deregistration completes.
    pub async fn start(upstream: &str, in_flight: InFlight) -> Result<ElbApiProxy> {
        let upstream = upstream.trim_end_matches('/').to_string();
        let sdk = phoenix_aws::config::emulator_sdk_config(&upstream).await;
        let shared = Arc::new(Shared {
            upstream,
            client: http::client(true),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&sdk),
            autoscaling: aws_sdk_autoscaling::Client::new(&sdk),
            in_flight,
            book: Mutex::new(Book::default()),
            groups: Mutex::new(HashMap::new()),
        });
        let (listener, addr) = http::bind().await?;
        let server = {
            let shared = shared.clone();
            http::serve(listener, true, move |req| {
                let shared = shared.clone();
                async move {
                    match shared.proxy(req).await {
                        Ok(response) => response,
                        Err(e) => http::text(StatusCode::BAD_GATEWAY, format!("{e:#}\n")),
                    }
                }
            })
        };
        Ok(ElbApiProxy {
            addr,
            shared,
            server,
        })
    }

    /// The endpoint to give the SDK clients (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Marks an instance unhealthy in every group it is registered in, or healthy again.
    pub fn set_unhealthy(&self, instance: &str, unhealthy: bool) {
        let mut book = self.shared.book();
        if unhealthy {
            book.unhealthy.insert(instance.to_string());
        } else {
            book.unhealthy.remove(instance);
        }
    }

    /// Reports an instance refresh under way in an Auto Scaling group, or none.
    pub fn set_refreshing(&self, group: &str, refreshing: bool) {
        let mut book = self.shared.book();
        if refreshing {
            book.refreshing.insert(group.to_string());
        } else {
            book.refreshing.remove(group);
        }
    }

    /// Refuses `AssumeRole` of this role from now on, as a trust policy that does not name the
    /// caller (or wants another external id) does.
    pub fn deny_role(&self, arn: &str) {
        self.shared.book().denied_roles.insert(arn.to_string());
    }

    /// How long a newly registered target is reported `initial`.
    pub fn set_initial_for(&self, initial_for: Duration) {
        self.shared.book().initial_for = initial_for;
    }

    /// ELBv2 calls of an action seen so far (the router's `DescribeTargetHealth` included).
    pub fn calls(&self, action: &str) -> u64 {
        self.shared.book().calls.get(action).copied().unwrap_or(0)
    }

    /// ELBv2 calls seen so far, by action.
    pub fn all_calls(&self) -> BTreeMap<String, u64> {
        self.shared.book().calls.clone()
    }
}

impl Drop for ElbApiProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An ELBv2 request: its form fields.
struct ElbCall {
    fields: Vec<(String, String)>,
}

/// A target named in a request.
struct Target {
    id: String,
    port: Option<String>,
}

impl ElbCall {
    /// The call, if the request is an ELBv2 one.
    fn read(parts: &Parts, body: &[u8]) -> Option<ElbCall> {
        let call = Self::fields(parts, body);
        let signed_for_elb = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("/elasticloadbalancing/"));
        (call.field("Version") == Some(ELBV2_VERSION) || signed_for_elb).then_some(call)
    }

    /// An STS `AssumeRole`: the role it names.
    fn assume_role(parts: &Parts, body: &[u8]) -> Option<String> {
        let call = Self::fields(parts, body);
        (call.field("Version") == Some(STS_VERSION) && call.field("Action") == Some("AssumeRole"))
            .then(|| call.field("RoleArn").unwrap_or("").to_string())
    }

    /// An Auto Scaling `DescribeInstanceRefreshes`: the group it names.
    fn refreshes(parts: &Parts, body: &[u8]) -> Option<String> {
        let call = Self::fields(parts, body);
        (call.field("Version") == Some(AUTOSCALING_VERSION)
            && call.field("Action") == Some("DescribeInstanceRefreshes"))
        .then(|| call.field("AutoScalingGroupName").unwrap_or("").to_string())
    }

    /// An Auto Scaling `DetachInstances`: the group and the instances.
    fn detach(parts: &Parts, body: &[u8]) -> Option<(String, Vec<String>)> {
        let call = Self::fields(parts, body);
        if call.field("Version") != Some(AUTOSCALING_VERSION)
            || call.field("Action") != Some("DetachInstances")
        {
            return None;
        }
        let group = call.field("AutoScalingGroupName")?.to_string();
        let ids = call
            .fields
            .iter()
            .filter(|(k, _)| k.starts_with("InstanceIds.member."))
            .map(|(_, v)| v.clone())
            .collect();
        Some((group, ids))
    }

    /// A query-protocol request's fields: the URI's query and the form body.
    fn fields(parts: &Parts, body: &[u8]) -> ElbCall {
        let mut fields: Vec<(String, String)> = parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let form = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if form {
            fields.extend(form_urlencoded::parse(body).into_owned());
        }
        ElbCall { fields }
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Targets.member.N.Id` (and `.Port`), in the order of N.
    fn targets(&self) -> Vec<Target> {
        let mut by_index: BTreeMap<u32, (Option<String>, Option<String>)> = BTreeMap::new();
        for (k, v) in &self.fields {
            let Some(rest) = k.strip_prefix("Targets.member.") else {
                continue;
            };
            let Some((index, name)) = rest.split_once('.') else {
                continue;
            };
            let Ok(index) = index.parse::<u32>() else {
                continue;
            };
            let entry = by_index.entry(index).or_default();
            match name {
                "Id" => entry.0 = Some(v.clone()),
                "Port" => entry.1 = Some(v.clone()),
                _ => {}
            }
        }
        by_index
            .into_values()
            .filter_map(|(id, port)| id.map(|id| Target { id, port }))
            .collect()
    }
}

/// STS's answer to an `AssumeRole` the role's trust policy refuses.
fn access_denied(role: &str) -> Response<Body> {
    let xml = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
         <Type>Sender</Type><Code>AccessDenied</Code><Message>User is not authorized to \
         perform: sts:AssumeRole on resource: {role}</Message></Error>\
         <RequestId>denied</RequestId></ErrorResponse>"
    );
    let mut response = http::text(StatusCode::FORBIDDEN, xml);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/xml"),
    );
    response
}

impl Shared {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn proxy(&self, req: Request<Incoming>) -> Result<Response<Body>> {
        let (mut parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .context("reading the request")?
            .to_bytes();
        if let Some(group) = ElbCall::refreshes(&parts, &body) {
            return Ok(self.instance_refreshes(&group));
        }
        if let Some(role) = ElbCall::assume_role(&parts, &body) {
            if self.book().denied_roles.contains(&role) {
                return Ok(access_denied(&role));
            }
        }
        let call = ElbCall::read(&parts, &body);
        let detach = ElbCall::detach(&parts, &body);
        let action = call
            .as_ref()
            .map(|c| c.field("Action").unwrap_or("").to_string());
        if let Some(action) = &action {
            *self.book().calls.entry(action.clone()).or_insert(0) += 1;
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("{}{}", self.upstream, path)
            .parse()
            .context("the upstream URI")?;
        // The Host header stays as received: the client only sets one when there is none.
        let response = self
            .client
            .request(Request::from_parts(parts, Full::new(body)))
            .await
            .context("forwarding to the emulator")?;
        let (mut parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .context("reading the emulator's answer")?
            .to_bytes();
        if let Some((group, ids)) = detach.filter(|_| parts.status == StatusCode::OK) {
            self.detached(&group, &ids).await?;
        }
        let (Some(call), Some(action)) = (call, action) else {
            return Ok(Response::from_parts(parts, Full::new(body)));
        };
        if parts.status != StatusCode::OK {
            return Ok(Response::from_parts(parts, Full::new(body)));
        }
        let body = match action.as_str() {
            "RegisterTargets" => {
                self.registered(&call);
                body
            }
            "DeregisterTargets" => {
                self.deregistered(&call);
                body
            }
            "DescribeTargetHealth" => match self.describe_target_health(&call, &body).await {
                Ok(Some(rewritten)) => {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, rewritten.len().into());
                    Bytes::from(rewritten)
                }
                Ok(None) => body,
                Err(e) => {
                    eprintln!("traffic ELB API: DescribeTargetHealth forwarded as is: {e:#}");
                    body
                }
            },
            _ => body,
        };
        Ok(Response::from_parts(parts, Full::new(body)))
    }

    fn registered(&self, call: &ElbCall) {
        let Some(group) = call.field("TargetGroupArn") else {
            return;
        };
        let now = Instant::now();
        let mut book = self.book();
        for target in call.targets() {
            let key = (group.to_string(), target.id);
            book.deregistered.remove(&key);
            book.registered.insert(key, now);
        }
    }

    fn deregistered(&self, call: &ElbCall) {
        let Some(group) = call.field("TargetGroupArn") else {
            return;
        };
        let now = Instant::now();
        let mut book = self.book();
        for target in call.targets() {
            let key = (group.to_string(), target.id);
            book.registered.remove(&key);
            book.deregistered.insert(
                key,
                Deregistration {
                    at: now,
                    port: target.port,
                },
            );
        }
    }

    /// `DescribeInstanceRefreshes` as AWS answers it.
    fn instance_refreshes(&self, group: &str) -> Response<Body> {
        let member = if self.book().refreshing.contains(group) {
            format!(
                "<member><InstanceRefreshId>refresh-1</InstanceRefreshId>\
                 <AutoScalingGroupName>{group}</AutoScalingGroupName>\
                 <Status>InProgress</Status></member>"
            )
        } else {
            String::new()
        };
        let xml = format!(
            "<DescribeInstanceRefreshesResponse \
             xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\">\
             <DescribeInstanceRefreshesResult><InstanceRefreshes>{member}</InstanceRefreshes>\
             </DescribeInstanceRefreshesResult><ResponseMetadata><RequestId>refreshes\
             </RequestId></ResponseMetadata></DescribeInstanceRefreshesResponse>"
        );
        let mut response = http::text(StatusCode::OK, xml);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/xml"),
        );
        response
    }

    /// What AWS does after `DetachInstances` and the emulator does not: the instances leave
    /// the group's target groups, and drain.
    async fn detached(&self, group: &str, ids: &[String]) -> Result<()> {
        let described = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(group)
            .send()
            .await
            .with_context(|| format!("DescribeAutoScalingGroups of {group}"))?;
        let arns: Vec<String> = described
            .auto_scaling_groups()
            .iter()
            .flat_map(|g| g.target_group_arns().to_vec())
            .collect();
        for arn in arns {
            let targets = ids
                .iter()
                .map(|id| {
                    aws_sdk_elasticloadbalancingv2::types::TargetDescription::builder()
                        .id(id)
                        .build()
                })
                .collect();
            self.elb
                .deregister_targets()
                .target_group_arn(&arn)
                .set_targets(Some(targets))
                .send()
                .await
                .with_context(|| format!("DeregisterTargets of {arn}"))?;
            let now = Instant::now();
            let mut book = self.book();
            for id in ids {
                let key = (arn.clone(), id.clone());
                book.registered.remove(&key);
                book.deregistered.insert(
                    key,
                    Deregistration {
                        at: now,
                        port: None,
                    },
                );
            }
        }
        Ok(())
    }

    /// The emulator's group, read once.
    async fn group(&self, arn: &str) -> Result<Group> {
        let cached = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(arn)
            .cloned();
        if let Some(group) = cached {
            return Ok(group);
        }
        let attributes = self
            .elb
            .describe_target_group_attributes()
            .target_group_arn(arn)
            .send()
            .await
            .with_context(|| format!("DescribeTargetGroupAttributes of {arn}"))?;
        let delay = match attributes
            .attributes()
            .iter()
            .find(|a| a.key() == Some("deregistration_delay.timeout_seconds"))
            .and_then(|a| a.value())
        {
            Some(seconds) => Duration::from_secs(
                seconds
                    .parse()
                    .with_context(|| format!("deregistration delay {seconds:?} of {arn}"))?,
            ),
            None => DEFAULT_DELAY,
        };
        let groups = self
            .elb
            .describe_target_groups()
            .target_group_arns(arn)
            .send()
            .await
            .with_context(|| format!("DescribeTargetGroups of {arn}"))?;
        let described = groups.target_groups().first();
        let group = Group {
            delay,
            port: described.and_then(|g| g.port()),
            health_check_port: described.and_then(|g| g.health_check_port().map(str::to_string)),
        };
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(arn.to_string(), group.clone());
        Ok(group)
    }

    /// The answer as AWS would give it, or `None` when it is already.
    async fn describe_target_health(
        &self,
        call: &ElbCall,
        answer: &[u8],
    ) -> Result<Option<String>> {
        let group_arn = call
            .field("TargetGroupArn")
            .context("no TargetGroupArn in the request")?;
        let deregistrations = self.book().deregistered.keys().any(|(g, _)| g == group_arn);
        let group = if deregistrations {
            Some(self.group(group_arn).await?)
        } else {
            None
        };
        let answer = std::str::from_utf8(answer).context("the answer is not UTF-8")?;
        let mut descriptions = Descriptions::parse(answer)?;
        let now = Instant::now();
        let book = self.book();
        let draining = |instance: &str| -> bool {
            let key = (group_arn.to_string(), instance.to_string());
            match (book.deregistered.get(&key), &group) {
                (Some(d), Some(group)) => {
                    now.duration_since(d.at) < group.delay && self.in_flight.busy(instance)
                }
                _ => false,
            }
        };
        let mut changed = false;
        for member in &mut descriptions.members {
            let key = (group_arn.to_string(), member.id.clone());
            let health = if book.deregistered.contains_key(&key) {
                draining(&member.id).then_some(Health::DRAINING)
            } else if member.state.as_deref() != Some("healthy") {
                None
            } else if book
                .registered
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < book.initial_for)
            {
                Some(Health::INITIAL)
            } else if book.unhealthy.contains(&member.id) {
                Some(Health::UNHEALTHY)
            } else {
                None
            };
            if let Some(health) = health {
                member.health = Some(health);
                changed = true;
            }
        }
        // Asked for every target: the emulator leaves deregistered ones out, AWS lists the
        // draining ones.
        if call.targets().is_empty() {
            for ((g, instance), d) in &book.deregistered {
                if g != group_arn
                    || descriptions.members.iter().any(|m| &m.id == instance)
                    || !draining(instance)
                {
                    continue;
                }
                let port = d
                    .port
                    .clone()
                    .or_else(|| group.as_ref().and_then(|g| g.port).map(|p| p.to_string()))
                    .unwrap_or_else(|| "80".to_string());
                let health_check_port = group
                    .as_ref()
                    .and_then(|g| g.health_check_port.clone())
                    .unwrap_or_else(|| "traffic-port".to_string());
                descriptions.added.push(format!(
                    "<member><Target><Id>{}</Id><Port>{}</Port></Target>\
                     <HealthCheckPort>{}</HealthCheckPort>{}</member>",
                    escape(instance),
                    escape(&port),
                    escape(&health_check_port),
                    Health::DRAINING.xml()
                ));
                changed = true;
            }
        }
        Ok(changed.then(|| descriptions.render()))
    }
}

/// A target's health as AWS reports it.
#[derive(Clone, Copy)]
struct Health {
    state: &'static str,
    reason: &'static str,
    description: &'static str,
}

impl Health {
    const DRAINING: Health = Health {
        state: "draining",
        reason: "Target.DeregistrationInProgress",
        description: "Target deregistration is in progress",
    };
    const INITIAL: Health = Health {
        state: "initial",
        reason: "Elb.RegistrationInProgress",
        description: "Target registration is in progress",
    };
    const UNHEALTHY: Health = Health {
        state: "unhealthy",
        reason: "Target.ResponseCodeMismatch",
        description: "Health checks failed with these codes: [500]",
    };

    fn xml(&self) -> String {
        format!(
            "<TargetHealth><State>{}</State><Reason>{}</Reason><Description>{}</Description></TargetHealth>",
            self.state, self.reason, self.description
        )
    }
}

/// A DescribeTargetHealth answer cut around its `<member>` entries.
struct Descriptions<'a> {
    /// Up to and including the list's opening tag.
    head: String,
    members: Vec<Member<'a>>,
    /// Members to add at the end of the list.
    added: Vec<String>,
    /// From the list's closing tag on.
    tail: String,
}

struct Member<'a> {
    /// The whole `<member>...</member>`.
    text: &'a str,
    /// Byte range of the `<TargetHealth>` element in `text`, or where it would go.
    health_at: std::ops::Range<usize>,
    id: String,
    state: Option<String>,
    /// The health to report instead of the emulator's.
    health: Option<Health>,
}

impl<'a> Descriptions<'a> {
    fn parse(xml: &'a str) -> Result<Descriptions<'a>> {
        const OPEN: &str = "<TargetHealthDescriptions>";
        const CLOSE: &str = "</TargetHealthDescriptions>";
        const EMPTY: &str = "<TargetHealthDescriptions/>";
        if let Some(at) = xml.find(EMPTY) {
            return Ok(Descriptions {
                head: format!("{}{OPEN}", &xml[..at]),
                members: Vec::new(),
                added: Vec::new(),
                tail: format!("{CLOSE}{}", &xml[at + EMPTY.len()..]),
            });
        }
        let open = xml.find(OPEN).context("no TargetHealthDescriptions")? + OPEN.len();
        let close = open
            + xml[open..]
                .find(CLOSE)
                .context("TargetHealthDescriptions is not closed")?;
        let mut rest = &xml[open..close];
        let mut members = Vec::new();
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                break;
            }
            if !rest.starts_with("<member>") {
                bail!("expected <member> in TargetHealthDescriptions, found {rest:.40}");
            }
            let end = rest.find("</member>").context("<member> is not closed")? + "</member>".len();
            let text = &rest[..end];
            if text["<member>".len()..].contains("<member>") {
                bail!("nested <member> in a target health description");
            }
            members.push(Member::parse(text)?);
            rest = &rest[end..];
        }
        Ok(Descriptions {
            head: xml[..open].to_string(),
            members,
            added: Vec::new(),
            tail: xml[close..].to_string(),
        })
    }

    fn render(&self) -> String {
        let mut out = self.head.clone();
        for member in &self.members {
            match member.health {
                None => out.push_str(member.text),
                Some(health) => {
                    out.push_str(&member.text[..member.health_at.start]);
                    out.push_str(&health.xml());
                    out.push_str(&member.text[member.health_at.end..]);
                }
            }
        }
        for added in &self.added {
            out.push_str(added);
        }
        out.push_str(&self.tail);
        out
    }
}

impl<'a> Member<'a> {
    fn parse(text: &'a str) -> Result<Member<'a>> {
        let target = element(text, "Target").context("a member without <Target>")?;
        let id = element(target, "Id")
            .context("a target without <Id>")?
            .to_string();
        let (health_at, state) = if let Some(start) = text.find("<TargetHealth>") {
            let end = start
                + text[start..]
                    .find("</TargetHealth>")
                    .context("<TargetHealth> is not closed")?
                + "</TargetHealth>".len();
            let state = element(&text[start..end], "State").map(str::to_string);
            (start..end, state)
        } else if let Some(start) = text.find("<TargetHealth/>") {
            (start..start + "<TargetHealth/>".len(), None)
        } else {
            let at = text.len() - "</member>".len();
            (at..at, None)
        };
        Ok(Member {
            text,
            health_at,
            id,
            state,
            health: None,
        })
    }
}

/// The text inside the first `<name>...</name>` of `xml`.
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(&xml[start..end])
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
