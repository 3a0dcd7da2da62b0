"""The service's own Ray head, kept up for the service's lifetime.

Started by the runner as ``python -m fedcollab.service.rayhead``: it starts a local
Ray instance in its own temp dir on free ports, prints its address as one JSON
line and waits until its stdin closes (the service stopping) or its parent dies
(the kernel kills it, and Ray's reaper takes the cluster down with it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from fedcollab.service.jobproc import tie_to_parent

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fedcollab.service.rayhead")
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--temp-dir", required=True)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--nice", type=int, default=0, help="lower CPU priority by this")
    args = parser.parse_args(argv)
    tie_to_parent(args.parent_pid, args.nice)
    from fedcollab.cluster.connect import start_local_head

    ray, address = start_local_head(num_cpus=args.num_cpus, temp_dir=args.temp_dir)
    # A new local cluster turns Ray's token authentication on; job processes must too.
    print(json.dumps({"address": address, "auth_mode": os.environ.get("RAY_AUTH_MODE", "")}),
          flush=True)
    sys.stdin.read()  # until the service closes our stdin
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
