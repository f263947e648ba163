#!/usr/bin/env python3
"""How late a keeper ends a VM after its lifetime: docs/lifetimes.md.

Usage (after ./scripts/build.sh, source scripts/env.sh, with SMOLVM_HOME and
SMOLVM_SUBNET set): python3 scripts/ttl-lateness.py delete|stop N

Creates N VMs with `bin/smolvm create --ttl 6s --on-expire ACTION`, one
after another; the CLI exits at once. Without running any smolvm command it
then polls until the VM's directory (delete) or its keeper's pid file
(stop: the keeper leaves once QEMU has exited) is gone, and prints how long
after config.expires_at that was, and the median.
"""
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime

home = os.environ["SMOLVM_HOME"]
action, n = sys.argv[1], int(sys.argv[2])
late = []
for i in range(n):
    vid = "ttl-lateness-%d" % i
    info = json.loads(subprocess.check_output(
        ["bin/smolvm", "--json", "create", "--name", vid, "--ttl", "6s", "--on-expire", action]))
    due = datetime.fromisoformat(info["config"]["expires_at"].replace("Z", "+00:00")).timestamp()
    d = os.path.join(home, "vms", vid)
    gone = d if action == "delete" else os.path.join(d, "keeper.pid")
    while os.path.exists(gone):
        time.sleep(0.01)
    late.append(time.time() - due)
    if action != "delete":
        subprocess.check_output(["bin/smolvm", "delete", vid])
print(action, "lateness (s):", " ".join("%.3f" % x for x in late), "median %.3f" % statistics.median(late))
