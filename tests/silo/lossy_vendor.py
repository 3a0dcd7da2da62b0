"""``fedcollab silo serve`` whose vendor loses one site's Ray worker mid-round.

The fault is the test's, dealt with Ray itself right after the vendor answered a
chosen stage of a chosen round: ``ray.kill`` of the site's actor, or SIGKILL of the
worker process that hosts it. Everything else is the real gateway on the vendor's
own embedded Ray::

    python tests/silo/lossy_vendor.py ROUND STAGE SITE kill|sigkill silo serve ...
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Any


def main() -> int:
    round_id, stage, site, how = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    from fedcollab.cli import main as cli
    from fedcollab.silo.vendor import VendorHost

    answer = VendorHost._stage

    def lossy(self: VendorHost, seq: int, body: Any, decide_out: Any) -> Any:
        reply = answer(self, seq, body, decide_out)
        if int(body.round_id) == round_id and body.stage == stage:
            pool = self.pool
            actor = pool.workers[int(pool.owner[site])]
            if how == "sigkill":
                pid = pool.ray.get(actor.__ray_call__.remote(lambda worker: os.getpid()))
                os.kill(pid, signal.SIGKILL)
            else:
                pool.ray.kill(actor, no_restart=True)
            print(f"lossy vendor: site {site} lost ({how}) after {stage} of round {round_id}",
                  file=sys.stderr, flush=True)
        return reply

    VendorHost._stage = lossy  # type: ignore[method-assign]
    return cli(sys.argv[5:])


if __name__ == "__main__":
    sys.exit(main())
