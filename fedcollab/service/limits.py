"""Per-token limits: open WatchJob streams and the submit rate.

One token must not be able to take the service from everyone else. Each limit is
counted per token (its owner id) and refused with RESOURCE_EXHAUSTED naming the
limit and the flag that sets it. Admin tokens (the operator's) are not limited
and have a share of their own, so the streams other roles open never keep an
admin out; health checks have no limit. The queued-jobs limit is checked by the
store, in the submit's transaction; the running quota by the runner, which starts
a token's next job only while it has fewer running (its jobs wait, queued, and
other tokens' jobs start meanwhile). A limit of 0 turns that limit off.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from fedcollab.service.auth import Caller
from fedcollab.service.errors import ResourceExhausted

__all__ = ["Limits", "LimitsConfig"]


@dataclass(frozen=True)
class LimitsConfig:
    watch_per_token: int = 64
    watch_total: int = 2048  # streams of every non-admin token together
    queued_per_token: int = 20
    submits_per_minute: int = 60
    running_per_token: int = 0  # jobs RUNNING at once, for tokens that name no max_running

    def __post_init__(self) -> None:
        for name in ("watch_per_token", "watch_total", "queued_per_token", "submits_per_minute",
                     "running_per_token"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (no limit) or more")


class Limits:
    """Counters behind the limits; thread-safe, O(1) per call."""

    def __init__(self, config: LimitsConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._streams: dict[str, int] = {}
        self._shared_streams = 0
        self._buckets: dict[str, tuple[float, float]] = {}  # owner -> (tokens, at)

    @contextlib.contextmanager
    def watch_stream(self, caller: Caller) -> Iterator[None]:
        """Hold one WatchJob stream for `caller` while the context is open."""
        cfg, owner = self.config, caller.owner_id
        shared = not caller.is_admin
        with self._lock:
            mine = self._streams.get(owner, 0)
            if shared and cfg.watch_per_token and mine >= cfg.watch_per_token:
                raise ResourceExhausted(
                    f"{caller.name} has {mine} WatchJob streams open; the limit is "
                    f"{cfg.watch_per_token} per token (serve --max-watch-per-token)"
                )
            if shared and cfg.watch_total and self._shared_streams >= cfg.watch_total:
                raise ResourceExhausted(
                    f"the service has {self._shared_streams} WatchJob streams open; the limit "
                    f"is {cfg.watch_total} (serve --max-watch-total)"
                )
            self._streams[owner] = mine + 1
            self._shared_streams += shared
        try:
            yield
        finally:
            with self._lock:
                left = self._streams[owner] - 1
                if left:
                    self._streams[owner] = left
                else:
                    del self._streams[owner]
                self._shared_streams -= shared

    def running_quota(self, caller: Caller) -> int:
        """Jobs the caller may have running at once (0: no limit; admins none)."""
        if caller.is_admin:
            return 0
        if caller.max_running is not None:
            return caller.max_running
        return self.config.running_per_token

    def streams(self, caller: Caller) -> int:
        with self._lock:
            return self._streams.get(caller.owner_id, 0)

    def take_submit(self, caller: Caller) -> None:
        """Spend one submit from the caller's bucket (refilled continuously, holding
        at most a minute's worth).

        Raises:
            ResourceExhausted: the bucket is empty.
        """
        rate = self.config.submits_per_minute
        if not rate or caller.is_admin:
            return
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(caller.owner_id, (float(rate), now))
            tokens = min(float(rate), tokens + (now - at) * rate / 60.0)
            if tokens < 1.0:
                self._buckets[caller.owner_id] = (tokens, now)
                wait = (1.0 - tokens) * 60.0 / rate
                raise ResourceExhausted(
                    f"{caller.name} submits too fast: the limit is {rate} per minute per token "
                    f"(serve --submits-per-minute); retry in {wait:.0f} s"
                )
            self._buckets[caller.owner_id] = (tokens - 1.0, now)
