"""When does JAX abort a survivor after a lost process? (not run in CI; a few minutes)

    python experiments/heartbeat_probe.py --kills 12 --heartbeat 10 \
        --out experiments/results/heartbeat_probe.json

Starts two processes that only call `jax.distributed.initialize` (127.0.0.1, the given
`heartbeat_timeout_seconds`) and idle; after a random wait of up to one timeout it SIGKILLs
process 1 and times how long process 0 (which hosts the coordination service) lives on before
JAX's own fatal abort. `dnl_jax.train.distributed.PeerWatch` must end a survivor before the
earliest of these. Writes every kill's delay and exit code, and the smallest and largest delay.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time

IDLE_PROCESS = """
import sys, time
import jax
port, index, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
jax.distributed.initialize(f"127.0.0.1:{port}", 2, index, heartbeat_timeout_seconds=timeout)
print("ready", flush=True)
while True:
    time.sleep(0.01)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_once(heartbeat: int, rng: random.Random) -> dict:
    """One pair of processes, process 1 SIGKILLed: seconds until process 0 ended, its code."""
    port, env = _free_port(), dict(os.environ, JAX_PLATFORMS="cpu")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", IDLE_PROCESS, str(port), str(i), str(heartbeat)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for process in processes:
            line = process.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"a probe process did not start: {process.stderr.read()[-800:]}")
        waited = rng.uniform(0, heartbeat)
        time.sleep(waited)
        processes[1].kill()
        killed = time.monotonic()
        processes[0].wait(timeout=3 * heartbeat)
        return {
            "waited_s": round(waited, 2),
            "abort_after_s": round(time.monotonic() - killed, 2),
            "exit_code": processes[0].returncode,
        }
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--heartbeat", type=int, default=10, help="heartbeat_timeout_seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="a JSON record (optional)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    kills = []
    for i in range(args.kills):
        kills.append(kill_once(args.heartbeat, rng))
        print(f"kill {i}: {kills[-1]}", flush=True)
    delays = [k["abort_after_s"] for k in kills]
    result = {
        "command": " ".join(["python", *sys.argv]),
        "heartbeat_timeout_seconds": args.heartbeat,
        "min_abort_after_s": min(delays),
        "max_abort_after_s": max(delays),
        "kills": kills,
    }
    print(f"process 0 aborted {min(delays):.2f}-{max(delays):.2f} s after process 1's SIGKILL")
    if args.out:
        with open(args.out, "w") as file:
            json.dump(result, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
