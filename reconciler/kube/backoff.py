"""Stage: kube. How long to wait before the next watch request: capped exponential backoff with
jitter, reset by a watch that lasted long enough.

A watch that ends is watched again, whether it ended with an error or normally (the server's
timeout, or a proxy or load balancer closing it). Without a pause, something that ends every
watch at once (a proxy that does not stream) turns each watcher into a tight loop of requests;
with a pause that only ever grows, a watch cut after an hour of good service would wait as long
as one that never worked. So: every short-lived attempt doubles the pause, from ``initial`` up
to ``cap``, each pause drawn between half and all of it (replicas that lost their watches
together do not come back together); an attempt that lasted ``healthy_after`` seconds resets it,
and the watch after it starts at once.

The clock, the sleep and the random source are injected, so tests count requests without
sleeping. Decides nothing about what is watched; imports nothing from reconciler.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    initial: float = 0.8
    """Seconds of the first pause (client-go's reflector starts there too)."""
    cap: float = 30.0
    """Longest pause."""
    healthy_after: float = 30.0
    """Seconds an attempt must last for the next one to start at once, the pause reset."""


class Backoff:
    """The pauses of one watcher (not thread-safe: one per watching thread)."""

    def __init__(
        self,
        policy: BackoffPolicy = BackoffPolicy(),
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.clock, self.sleep, self.jitter = clock, sleep, jitter
        self.short = 0
        """Attempts in a row that ended before ``healthy_after``."""

    def delay(self, lasted: float, enough: float | None = None) -> float:
        """The pause after an attempt that lasted ``lasted`` seconds (``enough``: what counts as
        long enough for this one, when less than the policy's, e.g. a watch asked to last
        less)."""
        healthy = (
            self.policy.healthy_after if enough is None else min(enough, self.policy.healthy_after)
        )
        if lasted >= healthy:
            self.short = 0
            return 0.0
        ceiling = min(self.policy.cap, self.policy.initial * 2.0 ** min(self.short, 32))
        self.short += 1
        return ceiling * (0.5 + 0.5 * self.jitter())

    def pause(
        self, started: float, *, enough: float | None = None, limit: float | None = None
    ) -> float:
        """Sleep the pause after an attempt begun at ``started`` (a reading of the clock), at
        most ``limit`` seconds; returns the seconds slept."""
        seconds = self.delay(self.clock() - started, enough)
        if limit is not None:
            seconds = min(seconds, max(0.0, limit))
        if seconds > 0:
            self.sleep(seconds)
        return seconds
