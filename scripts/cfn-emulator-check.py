#!/usr/bin/env python3
"""Creates infra/cfn-plain.yaml as a CloudFormation stack on the local emulator and checks it.

    .venv/bin/python scripts/cfn-emulator-check.py [--template infra/cfn-plain.yaml]

Starts its own moto server on a free loopback port (and stops it), creates the stack, then asserts
what CloudFormation built:

- the fleet table: key schema, attribute types, billing mode, the `by-instance` GSI;
- every rule of the template: on the right bus, with the template's pattern or schedule, targeting
  the template's queue with its retry policy and dead-letter queue;
- the IAM managed policy (the template's statements) and each function role (trusted by Lambda,
  the managed policy attached, its inline `logs` policy);
- delivery: for each detail-type a rule matches, an event put on the bus arrives in that rule's
  queue and in no other; an event no rule matches arrives nowhere.

Expectations are read from the template itself, so the check follows the template as it changes;
tests/tests/template.rs checks that the template agrees with the Rust sources and template.yaml.
Exits 0 when everything holds, 1 with every failed assertion listed, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import yaml
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
MOTO = ROOT / ".venv" / "bin" / "moto_server"
REGION = "us-east-1"
STACK = "phoenix-cfn-check"
# Resource types the emulator's CloudFormation creates without recording them as stack resources:
# an event bus is looked up by name instead; queue policies are accepted and dropped (not checked).
UNTRACKED = {"AWS::Events::EventBus", "AWS::SQS::QueuePolicy"}
# What phoenix relies on whatever the template says (README: "State" and "Events"); the rest of
# the expectations are read from the template.
SPEC_KEYS = [("pk", "HASH"), ("sk", "RANGE")]
SPEC_GSI = ("by-instance", [("instance_id", "HASH")], "KEYS_ONLY")
SPEC_ROUTES = {  # detail-type of source `phoenix` -> the function (rule target id) that handles it
    "ImageReady": "image",
    "HealthCheckFailed": "health",
    "HealthCheckPassed": "health",
    "LifecycleActionCompleted": "health",
    "ScaleRequested": "scale",
    "ReconcileRequested": "reconcile",
}
# What this check cannot see on the emulator; printed so nobody takes the green line for more.
NOT_CHECKED = (
    "queue policies (the emulator drops AWS::SQS::QueuePolicy)",
    "role policy attachments (the emulator ignores a role's ManagedPolicyArns)",
    "TTL and point-in-time recovery (accepted, not applied)",
    "IAM evaluation (policies are stored, never enforced)",
    "schedules (the emulator runs none)",
)


class CheckFailed(Exception):
    pass


# ------------------------------------------------------------------------------------ template


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form intrinsics (`!Ref X` -> {"Ref": "X"}, ...)."""


def _intrinsic(loader: CfnLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path) -> dict:
    with path.open() as f:
        return yaml.load(f, Loader=CfnLoader)


def resources_of(template: dict, kind: str) -> dict:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def getatt_target(value) -> str | None:
    """The logical id in `!GetAtt X.Arn`, else None."""
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return value["Fn::GetAtt"][0]
    return None


def sample_detail(pattern) -> dict:
    """A detail that a rule's `detail` filter matches: the first value listed for each field."""
    out = {}
    for key, want in (pattern or {}).items():
        if isinstance(want, dict):
            out[key] = sample_detail(want)
        elif isinstance(want, list) and want and isinstance(want[0], (str, int, float)):
            out[key] = want[0]
    return out


def resolve(value, template: dict, account: str):
    """`value` with the intrinsics a policy statement may hold resolved as CloudFormation resolves
    them for a stack created with the parameters' defaults: `Ref` (parameters and the pseudo
    parameters), `Fn::If` on the template's conditions, `Fn::Join`, `Fn::Equals`, `Fn::Not`."""
    params = template.get("Parameters", {})
    conditions = template.get("Conditions", {})
    pseudo = {"AWS::AccountId": account, "AWS::Region": REGION, "AWS::Partition": "aws", "AWS::StackName": STACK}

    def ref(name: str):
        if name in pseudo:
            return pseudo[name]
        param = params[name]
        default = str(param.get("Default", ""))
        return default.split(",") if param.get("Type") == "CommaDelimitedList" else default

    def r(v):
        if isinstance(v, list):
            return [r(x) for x in v]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            ((key, arg),) = v.items()
            if key == "Ref":
                return ref(arg)
            if key == "Condition":
                return r(conditions[arg])
            if key == "Fn::If":
                name, yes, no = arg
                return r(yes if r(conditions[name]) else no)
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(r(items))
            if key == "Fn::Equals":
                a, b = r(arg)
                return a == b
            if key == "Fn::Not":
                return not r(arg[0])
        return {k: r(x) for k, x in v.items()}

    return r(value)


def policy_document(doc) -> dict:
    """A policy document as returned by IAM: decoded already, JSON text, or (the emulator, for
    inline role policies created by CloudFormation) a Python literal."""
    if not isinstance(doc, str):
        return doc
    try:
        return json.loads(doc)
    except json.JSONDecodeError:
        return ast.literal_eval(doc)


# ------------------------------------------------------------------------------------ emulator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """A private moto server on a free loopback port; stopped on exit."""

    def __init__(self) -> None:
        if not MOTO.exists():
            raise RuntimeError(f"{MOTO.relative_to(ROOT)} not found: run `make venv` first")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(os.devnull, "wb")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Emulator":
        self.proc = subprocess.Popen(
            [str(MOTO), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the emulator exited with status {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError("the emulator did not accept connections within 30 s")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def client(self, service: str):
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"max_attempts": 2, "mode": "standard"}),
        )


# ------------------------------------------------------------------------------------ checks


class Checker:
    def __init__(self, emulator: Emulator, template: dict, template_path: Path) -> None:
        self.em = emulator
        self.t = template
        self.path = template_path
        self.failures: list[str] = []
        self.passed = 0
        self.physical: dict[str, str] = {}
        self.outputs: dict[str, str] = {}

    def expect(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
        return ok

    def equal(self, actual, expected, what: str) -> bool:
        return self.expect(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")

    # -- stack

    def create_stack(self) -> None:
        cfn = self.em.client("cloudformation")
        cfn.create_stack(
            StackName=STACK,
            TemplateBody=self.path.read_text(),
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
        )
        deadline = time.monotonic() + 60
        while True:
            stack = cfn.describe_stacks(StackName=STACK)["Stacks"][0]
            status = stack["StackStatus"]
            if not status.endswith("_IN_PROGRESS"):
                break
            if time.monotonic() > deadline:
                raise CheckFailed(f"stack still {status} after 60 s")
            time.sleep(0.2)
        if status != "CREATE_COMPLETE":
            events = cfn.describe_stack_events(StackName=STACK)["StackEvents"]
            reasons = [
                f"  {e['LogicalResourceId']}: {e['ResourceStatus']} {e.get('ResourceStatusReason', '')}"
                for e in events
                if "FAILED" in e["ResourceStatus"]
            ]
            raise CheckFailed(f"stack ended {status}:\n" + "\n".join(reasons))
        self.passed += 1
        self.outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        for r in cfn.describe_stack_resources(StackName=STACK)["StackResources"]:
            if r.get("LogicalResourceId") and r.get("PhysicalResourceId"):
                self.physical[r["LogicalResourceId"]] = r["PhysicalResourceId"]
        for logical, res in self.t["Resources"].items():
            if res["Type"] in UNTRACKED:
                continue
            self.expect(logical in self.physical, f"resource {logical}: not created by the stack")
        events = self.em.client("events")
        for logical, res in resources_of(self.t, "AWS::Events::EventBus").items():
            name = self.bus_of(logical)
            try:
                events.describe_event_bus(Name=name)
                self.passed += 1
            except events.exceptions.ResourceNotFoundException:
                self.expect(False, f"{logical}: no event bus {name!r}")
        for key in self.t.get("Outputs", {}):
            self.expect(key in self.outputs, f"output {key}: missing from the stack")

    # -- table

    def check_tables(self) -> None:
        ddb = self.em.client("dynamodb")
        tables = resources_of(self.t, "AWS::DynamoDB::Table")
        if self.equal(len(tables), 1, "number of DynamoDB tables"):
            (logical, res), = tables.items()
            name = self.physical.get(logical)
            if name is not None:
                table = ddb.describe_table(TableName=name)["Table"]
                self.equal(
                    [(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]],
                    SPEC_KEYS,
                    f"{logical} keys (as phoenix uses them)",
                )
                gsis = {
                    g["IndexName"]: (
                        g["IndexName"],
                        [(k["AttributeName"], k["KeyType"]) for k in g["KeySchema"]],
                        g["Projection"]["ProjectionType"],
                    )
                    for g in table.get("GlobalSecondaryIndexes", [])
                }
                self.equal(gsis.get(SPEC_GSI[0]), SPEC_GSI, f"{logical} GSI {SPEC_GSI[0]} (as phoenix uses it)")
            self.equal(res.get("DeletionPolicy"), "Retain", f"{logical} DeletionPolicy (the fleet state outlives the stack)")
        for logical, res in resources_of(self.t, "AWS::DynamoDB::Table").items():
            props = res["Properties"]
            name = self.physical.get(logical)
            if not self.expect(name is not None, f"{logical}: no physical table"):
                continue
            table = ddb.describe_table(TableName=name)["Table"]
            self.equal(
                sorted((k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]),
                sorted((k["AttributeName"], k["KeyType"]) for k in props["KeySchema"]),
                f"{logical} key schema",
            )
            self.equal(
                sorted((a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]),
                sorted((a["AttributeName"], a["AttributeType"]) for a in props["AttributeDefinitions"]),
                f"{logical} attribute definitions",
            )
            if "BillingMode" in props:
                self.equal(
                    table.get("BillingModeSummary", {}).get("BillingMode"),
                    props["BillingMode"],
                    f"{logical} billing mode",
                )
            actual_gsis = {g["IndexName"]: g for g in table.get("GlobalSecondaryIndexes", [])}
            for gsi in props.get("GlobalSecondaryIndexes", []):
                got = actual_gsis.get(gsi["IndexName"])
                if not self.expect(got is not None, f"{logical} GSI {gsi['IndexName']}: missing"):
                    continue
                self.equal(
                    [(k["AttributeName"], k["KeyType"]) for k in got["KeySchema"]],
                    [(k["AttributeName"], k["KeyType"]) for k in gsi["KeySchema"]],
                    f"{logical} GSI {gsi['IndexName']} key schema",
                )
                self.equal(
                    got["Projection"]["ProjectionType"],
                    gsi["Projection"]["ProjectionType"],
                    f"{logical} GSI {gsi['IndexName']} projection",
                )
            if "DeletionProtectionEnabled" in props:
                self.equal(
                    table.get("DeletionProtectionEnabled"),
                    props["DeletionProtectionEnabled"],
                    f"{logical} deletion protection",
                )
            self.equal(
                sorted(actual_gsis),
                sorted(g["IndexName"] for g in props.get("GlobalSecondaryIndexes", [])),
                f"{logical} GSI names",
            )

    # -- rules and queues

    def bus_name(self, rule_props: dict) -> str:
        bus = rule_props.get("EventBusName")
        if bus is None:
            return "default"
        target = getatt_target(bus)
        if target is not None:
            return self.bus_of(target)
        if isinstance(bus, dict) and "Ref" in bus:
            return self.param(bus["Ref"])
        return bus

    def bus_of(self, logical: str) -> str:
        name = self.t["Resources"][logical]["Properties"]["Name"]
        if isinstance(name, dict) and "Ref" in name:
            return self.param(name["Ref"])
        return name

    def param(self, name: str) -> str:
        return self.t["Parameters"][name]["Default"]

    def queue_url(self, logical: str) -> str:
        # A queue's physical id (and !Ref) is its URL; moto may answer with its own host name.
        url = self.physical[logical]
        return self.em.client("sqs").get_queue_url(QueueName=url.rstrip("/").rsplit("/", 1)[-1])[
            "QueueUrl"
        ]

    def queue_arn(self, logical: str) -> str:
        attrs = self.em.client("sqs").get_queue_attributes(
            QueueUrl=self.queue_url(logical), AttributeNames=["QueueArn"]
        )
        return attrs["Attributes"]["QueueArn"]

    def check_rules(self) -> None:
        events = self.em.client("events")
        for logical, res in resources_of(self.t, "AWS::Events::Rule").items():
            props = res["Properties"]
            bus = self.bus_name(props)
            name = self.physical.get(logical, "")
            # The physical id of a rule is its name (moto may return the ARN).
            name = name.rsplit("/", 1)[-1]
            try:
                rule = events.describe_rule(Name=name, EventBusName=bus)
            except events.exceptions.ResourceNotFoundException:
                self.expect(False, f"{logical}: no rule {name!r} on bus {bus!r}")
                continue
            self.passed += 1
            if "EventPattern" in props:
                self.equal(
                    json.loads(rule.get("EventPattern", "null")),
                    props["EventPattern"],
                    f"{logical} event pattern",
                )
            if "ScheduleExpression" in props:
                self.equal(
                    rule.get("ScheduleExpression"),
                    props["ScheduleExpression"],
                    f"{logical} schedule",
                )
            self.equal(rule.get("State", "ENABLED"), props.get("State", "ENABLED"), f"{logical} state")
            targets = events.list_targets_by_rule(Rule=name, EventBusName=bus)["Targets"]
            by_id = {t["Id"]: t for t in targets}
            self.equal(
                sorted(by_id), sorted(t["Id"] for t in props.get("Targets", [])), f"{logical} target ids"
            )
            for want in props.get("Targets", []):
                got = by_id.get(want["Id"])
                if got is None:
                    continue
                queue = getatt_target(want["Arn"])
                self.equal(got["Arn"], self.queue_arn(queue), f"{logical} target {want['Id']} ARN ({queue})")
                if "RetryPolicy" in want:
                    self.equal(got.get("RetryPolicy"), want["RetryPolicy"], f"{logical} retry policy")
                if "DeadLetterConfig" in want:
                    dlq = getatt_target(want["DeadLetterConfig"]["Arn"])
                    self.equal(
                        got.get("DeadLetterConfig", {}).get("Arn"),
                        self.queue_arn(dlq),
                        f"{logical} dead-letter queue ({dlq})",
                    )

    def check_queues(self) -> None:
        sqs = self.em.client("sqs")
        for logical, res in resources_of(self.t, "AWS::SQS::Queue").items():
            props = res.get("Properties", {})
            attrs = sqs.get_queue_attributes(
                QueueUrl=self.queue_url(logical), AttributeNames=["All"]
            )["Attributes"]
            if "MessageRetentionPeriod" in props:
                self.equal(
                    int(attrs.get("MessageRetentionPeriod", -1)),
                    int(props["MessageRetentionPeriod"]),
                    f"{logical} retention",
                )

    # -- IAM

    def check_iam(self) -> None:
        iam = self.em.client("iam")
        policies = resources_of(self.t, "AWS::IAM::ManagedPolicy")
        policy_arn: dict[str, str] = {}
        for logical, res in policies.items():
            arn = self.physical.get(logical, "")
            try:
                policy = iam.get_policy(PolicyArn=arn)["Policy"]
            except Exception as e:  # noqa: BLE001 - any failure is a finding
                self.expect(False, f"{logical}: managed policy {arn!r} not found ({e})")
                continue
            policy_arn[logical] = policy["Arn"]
            version = iam.get_policy_version(PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"])
            document = policy_document(version["PolicyVersion"]["Document"])
            statements = document["Statement"]
            expected = res["Properties"]["PolicyDocument"]["Statement"]
            self.equal(
                [s.get("Sid") for s in statements],
                [s.get("Sid") for s in expected],
                f"{logical} statement ids",
            )
            account = self.em.client("sts").get_caller_identity()["Account"]
            for got, want in zip(statements, expected):
                for key in ("Effect", "Action", "Condition"):
                    # A condition may name parameters (the accounts whose images may be launched).
                    wanted = resolve(want.get(key), self.t, account)
                    self.equal(got.get(key), wanted, f"{logical} {want.get('Sid')} {key}")
                resources = got.get("Resource")
                resources = resources if isinstance(resources, list) else [resources]
                # Intrinsics are resolved by now: no unresolved reference may be left behind.
                self.expect(
                    all(isinstance(r, str) and "${" not in r and not r.startswith("{") for r in resources),
                    f"{logical} {want.get('Sid')} Resource not fully resolved: {resources}",
                )

        for logical, res in resources_of(self.t, "AWS::IAM::Role").items():
            props = res["Properties"]
            name = self.physical.get(logical, "").rsplit("/", 1)[-1]
            try:
                role = iam.get_role(RoleName=name)["Role"]
            except Exception as e:  # noqa: BLE001
                self.expect(False, f"{logical}: role {name!r} not found ({e})")
                continue
            trust = policy_document(role["AssumeRolePolicyDocument"])
            self.equal(
                [(s.get("Principal"), s.get("Action")) for s in trust["Statement"]],
                [(s.get("Principal"), s.get("Action")) for s in props["AssumeRolePolicyDocument"]["Statement"]],
                f"{logical} trust policy",
            )
            # The emulator's CloudFormation ignores a role's ManagedPolicyArns (nothing is
            # attached), so check that each one names a policy this stack created, and compare
            # the attachments only if the emulator made any.
            wanted = []
            for p in props.get("ManagedPolicyArns", []):
                ref = p.get("Ref") if isinstance(p, dict) else None
                if ref is not None:
                    self.expect(ref in policy_arn, f"{logical} ManagedPolicyArns: {ref} is no managed policy of the stack")
                    wanted.append(policy_arn.get(ref, f"<{ref}>"))
                else:
                    wanted.append(p)
            attached = sorted(
                p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]
            )
            if attached:
                self.equal(attached, sorted(wanted), f"{logical} attached managed policies")
            inline = sorted(iam.list_role_policies(RoleName=name)["PolicyNames"])
            self.equal(
                inline, sorted(p["PolicyName"] for p in props.get("Policies", [])), f"{logical} inline policies"
            )
            for p in props.get("Policies", []):
                doc = policy_document(
                    iam.get_role_policy(RoleName=name, PolicyName=p["PolicyName"])["PolicyDocument"]
                )
                self.equal(
                    [(s.get("Effect"), s.get("Action")) for s in doc["Statement"]],
                    [(s.get("Effect"), s.get("Action")) for s in p["PolicyDocument"]["Statement"]],
                    f"{logical} inline policy {p['PolicyName']}",
                )

    # -- delivery

    def drain(self, url: str) -> list[dict]:
        sqs = self.em.client("sqs")
        got = []
        while True:
            msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
                "Messages", []
            )
            if not msgs:
                return got
            for m in msgs:
                got.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    def check_delivery(self) -> None:
        events = self.em.client("events")
        queues = {q: self.queue_url(q) for q in resources_of(self.t, "AWS::SQS::Queue")}
        for url in queues.values():
            self.drain(url)
        cases: list[tuple[str, str, str, str | None]] = []  # (bus, source, detail-type, queue)
        details: dict[tuple[str, str, str], dict] = {}  # what each rule's `detail` filter needs
        # The emulator delivers every event on a bus to a rule without a pattern (a schedule), which
        # AWS never does: deliveries to schedule-only queues on the default bus are not counted.
        scheduled: set[str] = set()
        for logical, res in resources_of(self.t, "AWS::Events::Rule").items():
            props = res["Properties"]
            pattern = props.get("EventPattern")
            if not pattern:
                if props.get("EventBusName") is None:
                    scheduled |= {getatt_target(t["Arn"]) for t in props.get("Targets", [])}
                continue  # schedules: the emulator runs none
            bus = self.bus_name(props)
            queue = getatt_target(props["Targets"][0]["Arn"])
            for source in pattern.get("source", []):
                for detail_type in pattern.get("detail-type", []):
                    if self.expect(
                        isinstance(source, str) and isinstance(detail_type, str),
                        f"{logical}: pattern value {source!r}/{detail_type!r} is not a plain string",
                    ):
                        cases.append((bus, source, detail_type, queue))
                        details[(bus, source, detail_type)] = sample_detail(pattern.get("detail"))
        for logical, res in resources_of(self.t, "AWS::Events::Rule").items():
            props = res["Properties"]
            if props.get("EventPattern") and self.bus_name(props) == "default":
                scheduled.discard(getatt_target(props["Targets"][0]["Arn"]))
        self.expect(bool(cases), "the template has no rule with an event pattern to deliver through")
        # The documented routes, whatever the patterns say: each queue stands in for the function
        # named by its rule target id (`image` -> ImageQueue).
        routed = {(c[1], c[2]): c[3] for c in cases}
        for detail_type, function in SPEC_ROUTES.items():
            self.equal(
                routed.get(("phoenix", detail_type)),
                f"{function.capitalize()}Queue",
                f"queue of the rule matching phoenix/{detail_type}",
            )
        for logical, res in resources_of(self.t, "AWS::Events::Rule").items():
            for target in res["Properties"].get("Targets", []):
                self.equal(
                    getatt_target(target["Arn"]),
                    f"{target['Id'].capitalize()}Queue",
                    f"{logical} target {target['Id']} queue",
                )
        buses = sorted({c[0] for c in cases}) or ["default"]
        # Events no rule subscribes to are delivered nowhere: another source, another type.
        cases.append((buses[0], "not-phoenix", "ImageReady", None))
        cases.append((buses[0], "phoenix", "NobodyListens", None))

        for bus, source, detail_type, queue in cases:
            marker = str(uuid.uuid4())
            detail = {**details.get((bus, source, detail_type), {}), "fleet": "web", "check": marker}
            entry = {
                "Source": source,
                "DetailType": detail_type,
                "Detail": json.dumps(detail),
                "EventBusName": bus,
            }
            answer = events.put_events(Entries=[entry])
            if not self.equal(answer.get("FailedEntryCount", 0), 0, f"put_events {detail_type} on {bus}"):
                continue
            deadline = time.monotonic() + 5
            arrived: dict[str, list[dict]] = {q: [] for q in queues}
            while True:
                for q, url in queues.items():
                    arrived[q] += [
                        m for m in self.drain(url) if m.get("detail", {}).get("check") == marker
                    ]
                if queue is None or arrived[queue] or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if queue is None:
                time.sleep(0.5)
                for q, url in queues.items():
                    arrived[q] += [m for m in self.drain(url) if m.get("detail", {}).get("check") == marker]
            where = sorted(
                q
                for q, msgs in arrived.items()
                if msgs and not (bus == "default" and q in scheduled and q != queue)
            )
            expected = [queue] if queue else []
            if self.equal(where, expected, f"{source}/{detail_type} on bus {bus} delivered to"):
                if queue:
                    body = arrived[queue][0]
                    self.equal(
                        (body.get("source"), body.get("detail-type")),
                        (source, detail_type),
                        f"{detail_type} envelope in {queue}",
                    )


    # -- teardown

    def check_teardown(self) -> None:
        """Deleting the stack keeps what the template retains (the table) and removes the rest."""
        before = {
            "table": set(self.em.client("dynamodb").list_tables()["TableNames"]),
            "queue": {u.rsplit("/", 1)[-1] for u in self.em.client("sqs").list_queues().get("QueueUrls", [])},
            "role": {r["RoleName"] for r in self.em.client("iam").list_roles()["Roles"]},
        }
        kinds = {"AWS::DynamoDB::Table": "table", "AWS::SQS::Queue": "queue", "AWS::IAM::Role": "role"}
        cfn = self.em.client("cloudformation")
        cfn.delete_stack(StackName=STACK)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status = cfn.describe_stacks(StackName=STACK)["Stacks"][0]["StackStatus"]
            except cfn.exceptions.ClientError:
                break  # gone
            if status == "DELETE_COMPLETE":
                break
            if status.endswith("_FAILED"):
                self.expect(False, f"stack deletion ended {status}")
                return
            time.sleep(0.2)
        after = {
            "table": set(self.em.client("dynamodb").list_tables()["TableNames"]),
            "queue": {u.rsplit("/", 1)[-1] for u in self.em.client("sqs").list_queues().get("QueueUrls", [])},
            "role": {r["RoleName"] for r in self.em.client("iam").list_roles()["Roles"]},
        }
        for logical, res in self.t["Resources"].items():
            kind = kinds.get(res["Type"])
            if kind is None or logical not in self.physical:
                continue
            name = self.physical[logical].rstrip("/").rsplit("/", 1)[-1]
            if not self.expect(name in before[kind], f"{logical}: {kind} {name!r} not found before deletion"):
                continue
            retained = res.get("DeletionPolicy") == "Retain"
            self.equal(
                name in after[kind],
                retained,
                f"{logical} ({kind}, DeletionPolicy {res.get('DeletionPolicy', 'Delete')}) kept after stack deletion",
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", default=str(ROOT / "infra" / "cfn-plain.yaml"))
    args = parser.parse_args()
    path = Path(args.template)
    try:
        template = load_template(path)
    except (OSError, yaml.YAMLError) as e:
        print(f"cfn-emulator-check: cannot read {path}: {e}", file=sys.stderr)
        return 2
    try:
        with Emulator() as em:
            checker = Checker(em, template, path)
            steps = [
                checker.create_stack,
                checker.check_tables,
                checker.check_queues,
                checker.check_rules,
                checker.check_iam,
                checker.check_delivery,
                checker.check_teardown,
            ]
            for step in steps:
                try:
                    step()
                except CheckFailed as e:
                    checker.failures.append(f"{step.__name__}: {e}")
                except Exception as e:  # noqa: BLE001 - report, never hide, an emulator or client error
                    checker.failures.append(f"{step.__name__}: {type(e).__name__}: {e}")
                if step == checker.create_stack and checker.failures:
                    break  # nothing else to look at
    except RuntimeError as e:
        print(f"cfn-emulator-check: {e}", file=sys.stderr)
        return 2
    name = path.name
    if checker.failures:
        print(f"cfn-emulator-check: {name}: {len(checker.failures)} failed, {checker.passed} passed", file=sys.stderr)
        for f in checker.failures:
            print(f"  FAIL {f}", file=sys.stderr)
        return 1
    print(f"cfn-emulator-check: {name} on the emulator's CloudFormation: {checker.passed} checks passed")
    print("cfn-emulator-check: not checked here: " + "; ".join(NOT_CHECKED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
