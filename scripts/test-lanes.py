#!/usr/bin/env python3
"""Runs the workspace's test binaries in two lanes at once, as `cargo test --workspace` would one
after the other: each end-to-end test waits mostly on its own emulator, so two binaries share two
cores better than one. Arguments after `--` go to every binary (`--test-threads=4`, say).

Each binary runs from its package's directory, as cargo runs it. The longest binaries start
first, so the lanes end together. Output is printed binary by binary, whole, as each ends; the
exit status is the first failure's, else 0.
"""

import json
import os
import subprocess
import sys
import threading

# Measured wall times (seconds) of the slowest binaries; the rest count as short.
LONG_FIRST = [
    "rollout", "placement", "reliability", "aws_events", "chaos", "serving", "operate",
    "adopt", "delivery", "replacements", "lambda_runtime",
]


def binaries():
    out = subprocess.run(
        ["cargo", "test", "--workspace", "--no-run", "--message-format=json"],
        check=True, capture_output=True, text=True,
    ).stdout
    found = []
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["profile"]["test"]:
            name = msg["target"]["name"]
            cwd = os.path.dirname(msg["manifest_path"])
            found.append((name, msg["executable"], cwd))
    rank = {n: i for i, n in enumerate(LONG_FIRST)}
    return sorted(found, key=lambda b: rank.get(b[0], len(LONG_FIRST)))


def main():
    args = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    queue = binaries()
    lock = threading.Lock()
    failed = []

    def lane():
        while True:
            with lock:
                if not queue:
                    return
                name, exe, cwd = queue.pop(0)
            run = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True)
            with lock:
                print(f"     Running {name} ({os.path.relpath(exe)})", flush=True)
                sys.stdout.write(run.stdout)
                sys.stderr.write(run.stderr)
                sys.stdout.flush()
                if run.returncode != 0:
                    failed.append((name, run.returncode))

    lanes = [threading.Thread(target=lane) for _ in range(2)]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()
    for name, code in failed:
        print(f"error: test binary {name} failed (exit {code})", file=sys.stderr)
    return failed[0][1] if failed else 0


if __name__ == "__main__":
    sys.exit(main())
