"""Stage: report — notifications. Delivery that never blocks patching: a sink is an ``Observer``
whose call only turns a transition into an ``Event`` and appends it to a bounded in-memory queue;
one background thread per sink drains the queue, with retries (exponential backoff, full jitter,
bounded attempts). A dead endpoint therefore costs the loop nothing but queue space.

When the queue is full the OLDEST event is dropped: the newest say what is true now (an
instance's latest compliance, a window's latest status), which is what an alert should show when
the endpoint comes back. Drops and failures are counted (``sent``, ``failed``, ``dropped``) and
warned about at most once a minute. ``close(timeout)`` flushes what it can in that time; what is
left is counted as dropped.

Sinks subclass ``Sink`` and implement ``deliver(batch)``; this module does no network I/O itself.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from reconciler.report.notify.events.shapes import Event, to_event
from reconciler.report.notify.occurrences import Occurrence

Monotonic = Callable[[], float]


@dataclass(frozen=True)
class Failure:
    """An event a delivery attempt did not get through; ``retryable`` says whether to try again."""

    event: Event
    reason: str
    retryable: bool = True


@dataclass(frozen=True)
class Retry:
    """Bounded retries: ``attempts`` in all (the first included), waiting a random time up to
    ``base * 2**n`` seconds (capped at ``cap``) after the n-th failed attempt ("full jitter":
    senders that failed together do not retry together)."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        return rand() * min(self.cap, self.base * 2.0**attempt)


class Sink:
    """A queue, a thread and counters; ``deliver`` is the subclass's one job (a subclass sets its
    own fields before calling ``Sink.__init__``, which starts the thread)."""

    batch_size = 1
    """Events handed to one ``deliver`` call (EventBridge takes 10)."""

    def __init__(
        self,
        name: str,
        *,
        capacity: int = 1000,
        retry: Retry = Retry(),
        warn_every: float = 60.0,
        log: Any = None,
        warn_clock: Monotonic = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("an event queue holds at least one event")
        self.name, self.capacity, self.retry = name, capacity, retry
        self.sent = 0
        """Events the endpoint accepted."""
        self.failed = 0
        """Events given up on: refused for good, or still failing after the last attempt."""
        self.dropped = 0
        """Events never attempted: pushed out of a full queue, or left in it at ``close``."""
        self.retries = 0
        """Attempts after a first failure (each retried batch counts once per attempt)."""
        self._log = log or structlog.get_logger("patchwarden")
        self._warn_clock = warn_clock
        self._queue: deque[Event] = deque()
        self._lock = threading.Condition()
        self._busy = False
        self._closing = False
        self._deadline = float("inf")
        self._stop = threading.Event()
        self._warned: dict[str, float] = {}
        self._unwarned: dict[str, int] = {}
        self._warn_every = warn_every
        self._thread = threading.Thread(target=self._run, name=f"events-{name}", daemon=True)
        self._thread.start()

    # -- the loop's side: O(1), never raises ---------------------------------------------------

    def __call__(self, occurrence: Occurrence) -> None:
        try:
            event = self.event_for(occurrence)
        except Exception as exc:  # a malformed occurrence must not reach the loop as an error
            with self._lock:
                self.failed += 1
            self._warn("unmappable", "occurrence not turned into an event", error=repr(exc))
            return
        if event is not None:
            self.offer(event)

    def event_for(self, occurrence: Occurrence) -> Event | None:
        """What this sink queues for ``occurrence`` (None: nothing); on the loop's thread, so
        quick. Transitions as events, unless a subclass (the chat sinks) says otherwise."""
        return to_event(occurrence)

    def offer(self, event: Event) -> None:
        with self._lock:
            if self._closing:
                self.dropped += 1
                return
            full = len(self._queue) >= self.capacity
            if full:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(event)
            self._lock.notify()
        if full:
            self._warn("dropped", "event queue full: dropped the oldest event")

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- shutting down --------------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait until every queued event was delivered or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what can be delivered within ``timeout`` seconds, then stop; events still
        queued then are counted as dropped. Idempotent."""
        with self._lock:
            self._closing = True
            self._deadline = min(self._deadline, time.monotonic() + timeout)
            self._lock.notify_all()
        self._thread.join(max(0.0, self._deadline - time.monotonic()) + 0.1)
        self._stop.set()  # cuts a backoff wait short
        with self._lock:
            if self._queue:
                self.dropped += len(self._queue)
                self._queue.clear()
        self._close()

    def _close(self) -> None:
        """Release the sink's client (subclasses)."""

    # -- the worker ---------------------------------------------------------------------------

    def deliver(self, batch: Sequence[Event]) -> Sequence[Failure]:
        """Send ``batch``; return the events that did not get through. An exception means the
        whole batch failed and may be retried."""
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if not self._queue or time.monotonic() >= self._deadline:
                    return
                batch = [
                    self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))
                ]
                self._busy = True
            try:
                self._attempt(batch)
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def _attempt(self, batch: list[Event]) -> None:
        pending: list[Failure] = [Failure(event, "not sent") for event in batch]
        for attempt in range(self.retry.attempts):
            if attempt:
                wait = min(self.retry.delay(attempt - 1), self._deadline - time.monotonic())
                if wait < 0 or self._stop.wait(wait):
                    break  # closing, and no time left to retry
                with self._lock:
                    self.retries += 1
            events = [f.event for f in pending]
            failures = self._try(events)
            with self._lock:
                self.sent += len(events) - len(failures)
            refused = [f for f in failures if not f.retryable]
            if refused:
                self._give_up(refused)
            pending = [f for f in failures if f.retryable]
            if not pending:
                return
        self._give_up(pending)

    def _try(self, batch: list[Event]) -> Sequence[Failure]:
        try:
            return self.deliver(batch)
        except Exception as exc:  # any transport error: the batch may be retried
            return [Failure(event, f"{type(exc).__name__}: {exc}") for event in batch]

    def _give_up(self, failures: Sequence[Failure]) -> None:
        with self._lock:
            self.failed += len(failures)
        self._warn(
            "failed",
            "events not delivered",
            count=len(failures),
            reason=failures[0].reason,
            types=sorted({f.event.type for f in failures}),
        )

    def _warn(self, what: str, message: str, count: int = 1, **fields: Any) -> None:
        """At most one warning per kind per ``warn_every`` seconds, with the count since then."""
        now = self._warn_clock()
        with self._lock:
            self._unwarned[what] = self._unwarned.get(what, 0) + count
            last = self._warned.get(what)
            if last is not None and now - last < self._warn_every:
                return
            self._warned[what] = now
            events, self._unwarned[what] = self._unwarned[what], 0
            totals = {"sent": self.sent, "failed": self.failed, "dropped": self.dropped}
        self._log.warning(
            message, sink=self.name, events_since_last_warning=events, **totals, **fields
        )
