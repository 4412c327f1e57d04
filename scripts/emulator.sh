#!/usr/bin/env bash
# Starts and stops the local AWS emulator (moto server, from the project's venv) on loopback.
#   scripts/emulator.sh start   -> prints the endpoint URL; state in .local/
#   scripts/emulator.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
state="${PHOENIX_STATE_DIR:-.local}"
mkdir -p "$state"

case "${1:-}" in
start)
    if [ -f "$state/emulator.pid" ] && kill -0 "$(cat "$state/emulator.pid")" 2>/dev/null; then
        cat "$state/endpoint"
        exit 0
    fi
    port="${PHOENIX_EMULATOR_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
    .venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$state/emulator.log" 2>&1 &
    echo $! >"$state/emulator.pid"
    for _ in $(seq 1 100); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then
            echo "http://127.0.0.1:$port" | tee "$state/endpoint"
            exit 0
        fi
        sleep 0.1
    done
    echo "emulator did not start; see $state/emulator.log" >&2
    exit 1
    ;;
stop)
    if [ -f "$state/emulator.pid" ]; then
        kill "$(cat "$state/emulator.pid")" 2>/dev/null || true
        rm -f "$state/emulator.pid" "$state/endpoint"
    fi
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
