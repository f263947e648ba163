#!/usr/bin/env python3
"""Python client figures beside the Go SDK's, in one run (medians).

- rtt: round trip of ``vm.run("true")`` on a running VM, Python client
  (HTTP over the UNIX socket to ``smolvm serve``) vs the Go SDK's ``Run``;
- cold: ``SmolVM()`` + ``start()`` + first ``run("true")`` in Python vs
  ``smolvm.Start`` + ``Run`` in Go (both from the default image's warm
  template; the template is made once, before timing, and reported);
- process: a fresh ``python3 -c`` doing ``with SmolVM() as vm: vm.run("true")``
  (interpreter start, import, connect, create, start, run, delete).

Run from the repository root after ./scripts/build.sh:

    source scripts/env.sh && python3 python/bench.py [-n 7] [--rtt 200]

It uses a fresh SMOLVM_HOME unless one is set, and prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

import smolvm  # noqa: E402


def ms(ns: float) -> str:
    return f"{ns / 1e6:8.2f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=7, help="cold starts to time on each side")
    ap.add_argument("--rtt", type=int, default=200, help="round trips of `true` to time on each side")
    args = ap.parse_args()

    bin_dir = ROOT / "bin"
    for b in ("smolvm", "smolvm-agent"):
        if not (bin_dir / b).exists():
            sys.exit(f"bin/{b} missing: run ./scripts/build.sh first")
    own_home = "SMOLVM_HOME" not in os.environ
    os.environ.setdefault("SMOLVM_HOME", tempfile.mkdtemp(prefix="smolvm-bench-"))
    os.environ["SMOLVM_BIN"] = str(bin_dir / "smolvm")
    os.environ["SMOLVM_AGENT"] = str(bin_dir / "smolvm-agent")
    os.environ.pop("SMOLVM_HOST", None)
    alpine = ROOT.parent / "shared" / "alpine"
    if not os.environ.get("SMOLVM_ALPINE_SOURCE") and alpine.is_dir():
        os.environ["SMOLVM_ALPINE_SOURCE"] = str(alpine)
    home = os.environ["SMOLVM_HOME"]

    gobin = Path(tempfile.mkdtemp(prefix="smolvm-benchgo-")) / "benchgo"
    subprocess.run(["go", "build", "-o", str(gobin), "./python/benchgo"], cwd=ROOT, check=True)

    client = smolvm.Client(idle_timeout="10s")
    t0 = time.perf_counter_ns()
    with smolvm.SmolVM(client=client) as vm:  # builds the image and the warm template once
        vm.run("true")
    first = time.perf_counter_ns() - t0

    # Go and Python alternate, round by round, so that the load other work
    # puts on the machine falls on both sides alike.
    go = {"cold_ns": [], "rtt_ns": []}
    cold, rtt = [], []
    per_round = max(1, args.rtt // args.n)
    for _ in range(args.n):
        gp = subprocess.run([str(gobin), "-n", "1", "-rtt", str(per_round)], capture_output=True, text=True)
        if gp.returncode != 0:
            sys.exit(f"Go side failed: {gp.stderr.strip()}")
        g = json.loads(gp.stdout)
        go["cold_ns"] += g["cold_ns"]
        go["rtt_ns"] += g["rtt_ns"]

        t0 = time.perf_counter_ns()
        vm = smolvm.SmolVM(client=client)
        vm.start()
        vm.run("true")
        cold.append(time.perf_counter_ns() - t0)
        try:
            for i in range(per_round + 5):
                t0 = time.perf_counter_ns()
                vm.run("true")
                if i >= 5:  # as the Go side: the first few warm up
                    rtt.append(time.perf_counter_ns() - t0)
        finally:
            vm.delete()

    proc = []
    code = "from smolvm import SmolVM\nwith SmolVM() as vm:\n    vm.run('true')\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    for _ in range(max(3, args.n // 2)):
        t0 = time.perf_counter_ns()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        proc.append(time.perf_counter_ns() - t0)

    res = {
        "home": home,
        "first_create_ns": first,
        "go_cold_median_ns": statistics.median(go["cold_ns"]),
        "py_cold_median_ns": statistics.median(cold),
        "py_process_median_ns": statistics.median(proc),
        "go_rtt_median_ns": statistics.median(go["rtt_ns"]),
        "py_rtt_median_ns": statistics.median(rtt),
        "go_cold_ns": go["cold_ns"], "py_cold_ns": cold, "py_process_ns": proc,
    }
    res["py_rtt_overhead_ns"] = res["py_rtt_median_ns"] - res["go_rtt_median_ns"]
    res["py_cold_overhead_ns"] = res["py_cold_median_ns"] - res["go_cold_median_ns"]
    print(f"first SmolVM() ever (image + warm template)  {ms(first)}")
    print(f"cold start -> first run   Go SDK {ms(res['go_cold_median_ns'])}   Python {ms(res['py_cold_median_ns'])}"
          f"   ({res['py_cold_overhead_ns'] / 1e6:+.2f} ms)")
    print(f"fresh python3 process: with SmolVM(): run   {ms(res['py_process_median_ns'])}")
    print(f"run('true') round trip    Go SDK {ms(res['go_rtt_median_ns'])}   Python {ms(res['py_rtt_median_ns'])}"
          f"   ({res['py_rtt_overhead_ns'] / 1e6:+.2f} ms)")
    print(json.dumps(res))
    client.close()
    health = client.ping()
    if health and client.started_server is not None:
        client.started_server.terminate()
        client.started_server.wait(timeout=10)
    shutil.rmtree(gobin.parent, ignore_errors=True)
    if own_home:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
