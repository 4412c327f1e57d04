#!/usr/bin/env bash
# Deploys phoenix to the AWS account of the current credentials: `sam build` (cargo-lambda builds
# each function for the template's Architecture) then `sam deploy --guided`. docs/deploy.md walks
# through every question `--guided` asks.
#
#   scripts/deploy.sh --preflight   only check credentials, region and terminal (make deploy runs it
#                                   before installing the build tools)
#   scripts/deploy.sh               check, build, deploy
#   ARCHITECTURE=x86_64 ...         build and deploy x86_64 functions (default arm64)
#
# Answers to --guided are saved in samconfig.toml (git-ignored: it names your account's
# resources); the next run offers them as defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv/bin

fail() {
    echo "deploy: $*" >&2
    exit 1
}

# The Rust SDK (the functions, the CLI) reads AWS_REGION; botocore (sam, the check below) reads
# AWS_DEFAULT_REGION. Honour either.
if [[ -n "${AWS_REGION:-}" && -z "${AWS_DEFAULT_REGION:-}" ]]; then
    export AWS_DEFAULT_REGION="$AWS_REGION"
fi

preflight() {
    [[ -x "$venv/sam" ]] || fail "$venv/sam is missing: run \`make venv\` first"
    if [[ -n "${AWS_ENDPOINT_URL:-}" ]]; then
        fail "AWS_ENDPOINT_URL is set ($AWS_ENDPOINT_URL): that is the local emulator's environment
        (make up). Unset it (and the emulator's test credentials) to deploy to AWS."
    fi
    # The same credential chain sam uses (environment, profile, SSO, instance role).
    local identity
    if ! identity="$("$venv/python" - 2>&1 <<'PY'
import sys
import boto3
from botocore.exceptions import BotoCoreError, ClientError

session = boto3.Session()
if session.get_credentials() is None:
    sys.exit("no AWS credentials found (environment, AWS_PROFILE, ~/.aws, SSO or instance role)")
if not session.region_name:
    sys.exit("no AWS region: set AWS_REGION (or a region in your profile)")
try:
    who = session.client("sts").get_caller_identity()
except (BotoCoreError, ClientError) as e:
    sys.exit(f"the credentials do not work: {e}")
print(f"account {who['Account']} as {who['Arn']} in {session.region_name}")
PY
    )"; then
        fail "$identity
        Configure credentials first, for example \`aws configure sso\` then \`export AWS_PROFILE=...\`,
        and \`export AWS_REGION=...\`; see docs/deploy.md."
    fi
    echo "deploy: $identity"
    [[ -t 0 ]] || fail "\`sam deploy --guided\` asks questions: run \`make deploy\` in a terminal"
}

preflight
if [[ "${1:-}" == "--preflight" ]]; then
    exit 0
fi

# cargo-lambda (and Zig) from the venv: sam's rust-cargolambda build method calls `cargo lambda`.
export PATH="$PWD/$venv:$PATH" SAM_CLI_TELEMETRY="${SAM_CLI_TELEMETRY:-0}"
command -v cargo-lambda >/dev/null || fail "cargo-lambda is missing: run \`make build\` once"

# The build and the stack must agree on the architecture: pass the same value to both.
arch="${ARCHITECTURE:-arm64}"
case "$arch" in
arm64 | x86_64) ;;
*) fail "ARCHITECTURE must be arm64 or x86_64, not $arch" ;;
esac

echo "deploy: sam build for $arch (a cold release build takes ~15 minutes on 2 cores)"
"$venv/sam" build --template-file infra/template.yaml --parameter-overrides "Architecture=$arch"

echo "deploy: sam deploy --guided (docs/deploy.md explains each parameter)"
"$venv/sam" deploy --guided --template-file .aws-sam/build/template.yaml \
    --capabilities CAPABILITY_IAM --parameter-overrides "Architecture=$arch"
