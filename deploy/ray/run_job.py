"""`ray submit deploy/ray/cluster.yaml deploy/ray/run_job.py SPEC [fedcollab run options]`.

Runs ``fedcollab run SPEC --address auto ...`` on the head node of a cluster started
with ``ray up deploy/ray/cluster.yaml``. SPEC is a path on the head: the image carries
the examples under /opt/fedcollab/examples; copy your own with ``ray rsync-up``.
"""
from __future__ import annotations

import sys

from fedcollab.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--address" not in args:
        args += ["--address", "auto"]
    sys.exit(main(["run", *args]))
