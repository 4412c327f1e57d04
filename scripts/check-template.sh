#!/usr/bin/env bash
# Lints the CloudFormation templates: cfn-lint on both, plus `sam validate --lint` on the SAM
# template when the SAM CLI is installed in the venv. Exits non-zero on any finding.
# The tools come from the project venv (.venv, installed from requirements-dev.txt).
set -euo pipefail

cd "$(dirname "$0")/.."
venv=.venv/bin
templates=(infra/template.yaml infra/cfn-plain.yaml)

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

echo "templates OK"
