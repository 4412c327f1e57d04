#!/usr/bin/env bash
# The demo: a fleet on the local AWS emulator, replaced three ways through EventBridge events.
# Leaves nothing running. Run through `make demo`, which builds and installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

export PHOENIX_STATE_DIR=.local/demo
rm -rf "$PHOENIX_STATE_DIR"
mkdir -p "$PHOENIX_STATE_DIR"
phoenix="${CARGO_TARGET_DIR:-target}/debug/phoenix"
dispatcher=""

cleanup() {
    local status=$?
    if [ -n "$dispatcher" ]; then
        kill "$dispatcher" 2>/dev/null || true
        wait "$dispatcher" 2>/dev/null || true
    fi
    scripts/emulator.sh stop
    if [ "$status" -ne 0 ]; then
        echo "demo failed; the dispatcher's log:" >&2
        tail -n 30 "$PHOENIX_STATE_DIR/dispatch.log" >&2 || true
    fi
    exit "$status"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# The event id `publish` printed, so `rollout wait --event` waits for that event to be handled.
event_id() { python3 -c 'import json,sys; print(json.load(sys.stdin)["event_id"])'; }

step "Local AWS: emulator, table, event rules, dispatcher"
AWS_ENDPOINT_URL="$(scripts/emulator.sh start)"
export AWS_ENDPOINT_URL AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export PHOENIX_TABLE=phoenix PHOENIX_BUS=default
echo "emulator at $AWS_ENDPOINT_URL"
"$phoenix" local provision
"$phoenix" local dispatch --tick 2 >"$PHOENIX_STATE_DIR/dispatch.log" 2>&1 &
dispatcher=$!

image_a="$("$phoenix" local register-image web-v1)"
image_b="$("$phoenix" local register-image web-v2)"
echo "images: v1 = $image_a, v2 = $image_b"

step "Fleet web: 4 instances on v1 (max_surge 2, max_unavailable 0)"
cat >"$PHOENIX_STATE_DIR/web.yaml" <<YAML
name: web
image: $image_a
capacity: 4
instance_type: t3.micro
tags:
  team: storefront
policy:
  max_surge: 2
  max_unavailable: 0
YAML
cat "$PHOENIX_STATE_DIR/web.yaml"
"$phoenix" fleet apply "$PHOENIX_STATE_DIR/web.yaml"
"$phoenix" rollout wait web --timeout 120

step "ImageReady: v2 is approved -> rolling replacement, launch before terminate"
id="$("$phoenix" publish image-ready --fleet web --image "$image_b" -o json | event_id)"
echo "published ImageReady (event $id)"
"$phoenix" rollout wait web --event "$id" --timeout 180
"$phoenix" status web

step "HealthCheckFailed: one instance fails its health check -> replaced, never repaired"
victim="$("$phoenix" status web -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["instances"][0]["id"])')"
id="$("$phoenix" publish health-failed --instance "$victim" --reason "GET /health returned 503" -o json | event_id)"
echo "published HealthCheckFailed for $victim (event $id)"
"$phoenix" rollout wait web --event "$id" --timeout 120

step "ScaleRequested: capacity 6"
id="$("$phoenix" publish scale --fleet web --desired 6 -o json | event_id)"
echo "published ScaleRequested (event $id)"
"$phoenix" rollout wait web --event "$id" --timeout 120

step "Status"
"$phoenix" status web

step "Behind a load balancer: a rollout under steady traffic, then the same without a target group"
# Each on its own emulator, with a local load balancer, a backend per instance and slow requests
# mixed in: instances are drained from the target group before they are terminated.
"${CARGO_TARGET_DIR:-target}/debug/traffic" --demo

step "History: every decision with its cause"
"$phoenix" history web

step "Timeline: each instance from launch to termination, coloured by image"
"$phoenix" history web --svg "$PHOENIX_STATE_DIR/timeline.svg" --html "$PHOENIX_STATE_DIR/timeline.html"
echo "the picture is $PHOENIX_STATE_DIR/timeline.svg (with the decisions: $PHOENIX_STATE_DIR/timeline.html)"

step "History --at: the fleet mid-rollout, rebuilt from its history alone"
mid="$("$phoenix" history web -o json | python3 -c '
import json, sys
entries = json.load(sys.stdin)
waves = [e for e in entries if any(c["change"] == "wave_started" for c in e["changes"])]
print((waves[1] if len(waves) > 1 else waves[0])["at"])')"
echo "the moment the second wave started: $mid"
"$phoenix" history web --at "$mid"

step "Explain: why $victim was launched, and why it was replaced"
"$phoenix" explain "$victim"

step "Done: the emulator and the dispatcher are stopped on exit"
