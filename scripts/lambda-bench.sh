#!/usr/bin/env bash
# Size and init time of the four Lambda functions (a benchmark, not a test; `make bench-lambda`
# builds what it needs and runs it).
#
#   zip bytes  the deployable arm64 zip from `make build` (target/lambda/<function>/bootstrap.zip)
#   init ms    process start to the function's first `GET /2018-06-01/runtime/invocation/next` on a
#              local Lambda Runtime API (tests/src/bin/lambda_init.rs), median (min-max) of RUNS
#              starts of the x86_64 release binary (`cargo build --release`): arm64 binaries do not
#              run here. Fake static credentials and region; init makes no AWS call.
#
# Environment: RUNS (default 20), CARGO_TARGET_DIR (default target).
# Figures depend on the machine and its load: compare runs made on the same machine.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
runs="${RUNS:-20}"
functions=(phoenix-image phoenix-health phoenix-scale phoenix-reconcile)
tool="$target/debug/lambda-init"

if [[ ! -x "$tool" ]]; then
    echo "lambda-bench: $tool is missing: run \`cargo build --workspace\` (make bench-lambda does)" >&2
    exit 2
fi
bins=()
for f in "${functions[@]}"; do
    bin="$target/release/$f"
    if [[ ! -x "$bin" ]]; then
        echo "lambda-bench: $bin is missing: run \`cargo build --release --workspace\` (make bench-lambda does)" >&2
        exit 2
    fi
    bins+=("$bin")
done

times="$(mktemp)"
trap 'rm -f "$times"' EXIT
echo "measuring init time: ${#bins[@]} functions x $runs starts (+1 warm-up each)..." >&2
"$tool" --runs "$runs" "${bins[@]}" >"$times"

echo "init ms: process start to its first GET /runtime/invocation/next, x86_64 release build, $runs starts"
row() { printf '%-18s %15s %15s %10s %8s %8s\n' "$@"; }
row function "zip bytes" "binary bytes" "init ms" "" ""
row "" "(arm64)" "(x86_64)" "median" "min" "max"
missing_zip=0
while IFS=$'\t' read -r name _runs min median max; do
    zip="$target/lambda/$name/bootstrap.zip"
    if [[ -f "$zip" ]]; then
        zip_bytes="$(stat -c %s "$zip")"
    else
        zip_bytes="-"
        missing_zip=1
    fi
    bin_bytes="$(stat -c %s "$target/release/$name")"
    row "$name" "$zip_bytes" "$bin_bytes" "$median" "$min" "$max"
done <"$times"
if [[ "$missing_zip" -eq 1 ]]; then
    echo "(no arm64 zip: run \`make build\` for the zip sizes)" >&2
fi
