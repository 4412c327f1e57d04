#!/usr/bin/env bash
# Lints the CloudFormation templates: cfn-lint on all three (the control plane's, its plain
# rendering for the emulator, the member accounts'), plus `sam validate --lint` on the SAM
# template when the SAM CLI is installed in the venv; then creates infra/cfn-plain.yaml as a stack
# on the local emulator's CloudFormation and checks what it built (scripts/cfn-emulator-check.py:
# table, rules, IAM, delivery to the right queue, what survives deleting the stack).
# Exits non-zero on any finding. The tools come from the project venv (.venv, installed from
# requirements-dev.txt).
set -euo pipefail

cd "$(dirname "$0")/.."
venv=.venv/bin
templates=(infra/template.yaml infra/cfn-plain.yaml infra/member-account.yaml)

if [[ ! -x "$venv/cfn-lint" ]]; then
    echo "check-template: $venv/cfn-lint not found; install requirements-dev.txt into .venv" >&2
    exit 2
fi

echo "cfn-lint $("$venv/cfn-lint" --version | awk '{print $2}'): ${templates[*]}"
# Errors and warnings fail the check (cfn-lint's exit code is non-zero for either).
"$venv/cfn-lint" -- "${templates[@]}"

if [[ -x "$venv/sam" ]]; then
    echo "sam validate --lint: infra/template.yaml"
    # Validation is offline; the region only satisfies the CLI's configuration lookup.
    SAM_CLI_TELEMETRY=0 "$venv/sam" validate --lint \
        --template-file infra/template.yaml --region "${AWS_REGION:-us-east-1}"
else
    echo "sam validate: skipped ($venv/sam not installed)"
fi

# Starts and stops its own emulator on a free port.
"$venv/python" scripts/cfn-emulator-check.py --template infra/cfn-plain.yaml

# The pipeline examples must at least be well-formed YAML of the right shape.
"$venv/python" - <<'PY'
import sys
from pathlib import Path
import yaml

shapes = {"github-actions": ("jobs",), "codebuild": ("version", "phases")}
bad = []
files = sorted(Path("examples").glob("*/*.yml"))
for path in files:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        bad.append(f"{path}: {e}")
        continue
    missing = [k for k in shapes.get(path.parent.name, ()) if not isinstance(doc, dict) or k not in doc]
    if missing:
        bad.append(f"{path}: missing {', '.join(missing)}")
if bad:
    sys.exit("examples:\n  " + "\n  ".join(bad))
print(f"examples: {len(files)} YAML files parse")
PY

echo "templates OK"
