"""Stage: loop, step ``dispatch`` split across processes (issue 16, "many workers, one plan";
docs/state.md, "Workers"). The leader plans as ever; with ``--external-workers`` its pass's
executor (:class:`QueueExecutor`) enqueues each action in the PostgreSQL job queue instead of
running it, and hands back a future completed when the queue shows the entry done, so that the
pass's budgets, refills and re-plans stay as they are. Any number of ``patchctl worker``
processes (:class:`Worker`) claim the entries, run each through the same :class:`JobRunner` as
the leader's threads (claim by key, hooks, reboots, record), heartbeat them while they run,
mark them done, and reclaim the entries of a worker that stopped heartbeating.

Both wait on the queue's notifications (PostgreSQL ``LISTEN``/``NOTIFY``, the store's
``listen_queue``): a worker wakes when entries are queued, the leader when one is done, each
also when one of its own jobs ends; the queue is read on a slow beat (:data:`POLL`) only as the
fallback for a notification that cannot arrive.

A queued payload (:func:`job_payload`) is the whole job: the action, the revision and the
resources the job reads (its instance, its window, the groups and baselines it resolves to), so
a worker needs nothing from the source. Touches the store's queue and what a JobRunner touches;
may not read the source or plan.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from reconciler.api.enums import JobStatus, OperatingSystem, Operation
from reconciler.api.resources import MaintenanceWindow, ManagedInstance, PatchBaseline, PatchGroup
from reconciler.api.snapshot import Snapshot
from reconciler.evaluation import resolve
from reconciler.loop.common import Clock, Emitter, InForce, Log, TransportFor
from reconciler.loop.executions import WindowExecutions
from reconciler.loop.jobs import JobRunner, action_of
from reconciler.loop.oneoffs import is_one_off
from reconciler.loop.reboots import RebootSettings
from reconciler.plan import Action
from reconciler.state import JobRecord, StateBackend, StoreWriteFailed

Held = dict[Future[None], str]
PAYLOAD_FORMAT = 1
POLL = 5.0
"""Seconds between reads of the queue when nothing woke the reader: the fallback for a lost
notification (the listening session being made anew, a restarted server). The leader and the
workers otherwise read the queue when it announces a change (:class:`Wakeup`)."""
HEARTBEATS = 4
"""Heartbeats per lease: a worker renews the entries it holds every lease ÷ HEARTBEATS."""
MIN_LEASE = 2.0
"""The shortest lease ``patchctl worker`` accepts, in seconds: shorter, a heartbeat delayed by a
busy host would let another worker reclaim a live one's job."""
UNCLAIMED_WARNING = timedelta(minutes=2)
"""How long an entry may stay queued, claimed by no worker, before the leader says so: with
``--external-workers`` and no ``patchctl worker`` running, the pass would otherwise wait in
silence."""


class Listening(Protocol):
    """A started listener on the queue's notifications (``reconciler.state.postgres.notify``)."""

    def close(self) -> None: ...


class QueuedEntry(Protocol):
    """An entry a worker holds (``reconciler.state.postgres.queue.QueuedJob``)."""

    @property
    def key(self) -> str: ...
    @property
    def payload(self) -> dict[str, Any]: ...


class JobQueue(Protocol):
    """The store's job queue (PostgreSQL state: ``reconciler.state.postgres.queue``)."""

    def enqueue_jobs(self, entries: Iterable[tuple[str, dict[str, Any]]], now: datetime) -> int: ...
    def claim_queued(self, worker: str, *, limit: int, now: datetime) -> Sequence[QueuedEntry]: ...
    def reclaim_lapsed(
        self, worker: str, *, lease: timedelta, limit: int, now: datetime
    ) -> Sequence[QueuedEntry]: ...
    def heartbeat_queued(self, worker: str, keys: Iterable[str], now: datetime) -> set[str]: ...
    def finish_queued(self, worker: str, key: str, now: datetime) -> bool: ...
    def queued_states(self, keys: Iterable[str]) -> dict[str, str]: ...
    def job_by_key(self, key: str) -> JobRecord | None: ...
    def listen_queue(self, event: str, wake: Callable[[], None]) -> Listening: ...


class Wakeup:
    """What a waiting leader or worker sleeps on: set by a notification of the queue, by one of
    its own jobs ending, or by stopping; a wait that nothing ends lasts the fallback poll."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._waiting = False

    @property
    def asleep(self) -> bool:
        """Whether the reader waits now with no wake-up pending: it has read the queue since
        the last wake-up, and waits for the next."""
        return self._waiting and not self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Sleep until set (True) or ``timeout`` seconds (False); the caller reads the queue
        next, so a wake-up that comes between this return and that read is not lost."""
        self._waiting = True
        woken = self._event.wait(timeout)
        self._waiting = False
        self._event.clear()
        return woken


class PayloadRefused(ValueError):
    """A queued payload this worker cannot run: its job fails with this message."""


def job_payload(action: Action, in_force: InForce) -> dict[str, Any]:
    """What a worker needs to run ``action``: the action, the revision in force and the
    resources its job reads, as their documents."""
    snapshot, revision = in_force.snapshot, in_force.revision
    assert snapshot is not None and revision is not None
    instance = snapshot.instances[action.instance]
    found = [resolve(snapshot, instance.metadata.labels, system) for system in OperatingSystem]
    baselines = {r.baseline.metadata.name: r.baseline for r in found if r.baseline is not None}
    return {
        "format": PAYLOAD_FORMAT,
        "revision": revision,
        "action": asdict(action),
        "instance": _document(instance),
        "windows": [_document(window) for window in _windows(snapshot, action)],
        "groups": [_document(r.group) for r in found[:1] if r.group is not None],
        "baselines": [_document(b) for n, b in baselines.items() if n in snapshot.baselines],
        "predefined": [_document(b) for n, b in baselines.items() if n not in snapshot.baselines],
    }


def decode(payload: Mapping[str, Any]) -> tuple[Action, InForce]:
    """The action and the revision in force of a queued payload, or :class:`PayloadRefused`."""
    try:
        if payload.get("format") != PAYLOAD_FORMAT:
            raise PayloadRefused(
                f"payload format {payload.get('format')!r} is not {PAYLOAD_FORMAT}: run a worker"
                " of the leader's version"
            )
        action = action_of(payload["action"])
        instance = ManagedInstance.model_validate(payload["instance"])
        snapshot = Snapshot(
            instances={instance.metadata.name: instance},
            windows=_named(MaintenanceWindow, payload["windows"]),
            groups=_named(PatchGroup, payload["groups"]),
            baselines=_named(PatchBaseline, payload["baselines"]),
            predefined=_named(PatchBaseline, payload["predefined"]),
        )
        revision = str(payload["revision"])
    except PayloadRefused:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # pydantic's are ValueErrors
        raise PayloadRefused(f"cannot decode the queued job: {_first_line(exc)}") from None
    if action.instance != instance.metadata.name:
        raise PayloadRefused(f"the queued job is for {action.instance}, its instance is another")
    return action, InForce(snapshot=snapshot, revision=revision)


def _windows(snapshot: Snapshot, action: Action) -> list[MaintenanceWindow]:
    """The windows a job reads: its own (cutoff, task, hooks); for a one-off job (patch now)
    every window, as its ``--hooks-from`` may name any window's task."""
    if is_one_off(action):
        return list(snapshot.windows.values())
    window = snapshot.windows.get(action.window) if action.window else None
    return [] if window is None else [window]


Resource = TypeVar("Resource", bound=BaseModel)


def _named(kind: type[Resource], documents: Iterable[Any]) -> dict[str, Resource]:
    resources = [kind.model_validate(document) for document in documents]
    return {resource.metadata.name: resource for resource in resources}  # type: ignore[attr-defined]


def _document(resource: BaseModel) -> dict[str, Any]:
    return resource.model_dump(mode="json", by_alias=True, exclude_none=True)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n")[:2]) or type(exc).__name__


class QueueExecutor(Executor):
    """The leader's pool with external workers: :meth:`submit` of ``runner.execute`` enqueues
    the action; its future completes when a worker marked the entry done, with the key's job
    (None when none ran). The slot the action holds stays held until then. Anything else
    submitted (resuming a job left waiting for a reboot), and a Kubernetes Node's job, runs on
    this process's threads. The queue is read when it announces an entry done, and every
    ``poll`` seconds (default :data:`POLL`) when nothing was announced."""

    def __init__(
        self,
        queue: JobQueue,
        in_force: InForce,
        runner: JobRunner,
        workers: int,
        clock: Clock,
        *,
        poll: float | None = None,
    ) -> None:
        self.queue, self.in_force, self.runner, self.clock = queue, in_force, runner, clock
        self.poll = POLL if poll is None else poll
        self._local = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self._pending: dict[str, Future[JobRecord | None]] = {}
        self._queued_at: dict[str, datetime] = {}
        self._warned = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.wakeup = Wakeup()
        self._listener = queue.listen_queue("done", self.wakeup.set)
        self._poller = threading.Thread(target=self._poll, name="job-queue", daemon=True)
        self._poller.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if fn != self.runner.execute or kwargs or len(args) != 1 or self._on_node(args[0]):
            return self._local.submit(fn, *args, **kwargs)
        action: Action = args[0]
        future: Future[JobRecord | None] = Future()
        future.set_running_or_notify_cancel()
        payload = job_payload(action, self.in_force)
        # Followed before it is queued: a worker may finish it, and the queue announce it done,
        # before enqueue_jobs returns; that announcement must find the key pending.
        with self._lock:
            self._pending[action.key] = future
            self._queued_at[action.key] = self.clock()
        try:
            self.queue.enqueue_jobs([(action.key, payload)], self.clock())
        except BaseException:
            with self._lock:
                self._pending.pop(action.key, None)
                self._queued_at.pop(action.key, None)
            raise
        return future

    def _on_node(self, action: Action) -> bool:
        """A Kubernetes Node's job runs here: its node Job, cordon and drain need the
        controller's API access, which workers are never given (docs/kubernetes.md)."""
        snapshot = self.in_force.snapshot
        instance = None if snapshot is None else snapshot.instances.get(action.instance)
        return instance is not None and instance.spec.connection.type == "kubernetes"

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop following the queue: entries queued or claimed go on in the workers, and the
        next pass follows them again by their keys (a key is queued once)."""
        self._closed.set()
        self.wakeup.set()
        self._poller.join()
        self._listener.close()
        self._local.shutdown(wait=wait, cancel_futures=cancel_futures)
        with self._lock:
            for future in self._pending.values():
                future.cancel()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self.wakeup.wait(self.poll)
            if self._closed.is_set():
                break
            try:
                self._complete_done()
            except StoreWriteFailed:  # the database is away: the next poll tries again
                continue

    def _complete_done(self) -> None:
        with self._lock:
            keys = list(self._pending)
        if not keys:
            return
        states = self.queue.queued_states(keys)
        for key in (k for k in keys if states.get(k) == "done"):
            job = self.queue.job_by_key(key)
            with self._lock:
                future = self._pending.pop(key)
                self._queued_at.pop(key, None)
            future.set_result(job if job is not None and job.finished_at is not None else None)
        self._warn_unclaimed([k for k in keys if states.get(k) == "queued"])

    def _warn_unclaimed(self, queued: list[str]) -> None:
        """Say once per pass when entries wait unclaimed past :data:`UNCLAIMED_WARNING`: the
        usual cause is that no ``patchctl worker`` is running against this database."""
        with self._lock:
            waiting = [self._queued_at[k] for k in queued if k in self._queued_at]
        if self._warned or not waiting or self.clock() - min(waiting) < UNCLAIMED_WARNING:
            return
        self._warned = True
        self.runner.log.warning(
            "queued jobs wait for a worker: start `patchctl worker` against this state database"
            " (the leader runs with --external-workers and runs no job itself)",
            queued=len(waiting),
            waiting_seconds=int((self.clock() - min(waiting)).total_seconds()),
        )


def queue_pool(
    queue: JobQueue, in_force: InForce, runner: JobRunner, clock: Clock
) -> Callable[[int], Executor]:
    """The leader's pool factory for a pass (``LoopParts.pool``) with external workers."""
    return lambda workers: QueueExecutor(queue, in_force, runner, workers, clock)


def runners(
    store: StateBackend,
    transport_for: TransportFor,
    *,
    clock: Clock,
    log: Log,
    stopping: threading.Event,
    reboot_settings: RebootSettings,
) -> Callable[[InForce], JobRunner]:
    """A worker's JobRunner for each queued job's revision in force, as the leader's own is
    built (waits end when the worker stops; a job left waiting for a reboot is resumed by the
    leader). Occurrences go to the worker's log only: the leader's observers see its jobs'
    results in the store."""

    def runner_for(in_force: InForce) -> JobRunner:
        emit = Emitter((), clock, log, in_force)
        executions = WindowExecutions(store, in_force, clock, emit)
        return JobRunner(
            store, in_force, transport_for, executions, clock=clock, log=log, emit=emit,
            wait=stopping.wait, reboot_settings=reboot_settings,
        )  # fmt: skip

    return runner_for


@dataclass(frozen=True)
class WorkerSettings:
    """``patchctl worker``'s identity, how many jobs it runs at once, and its lease."""

    worker_id: str
    slots: int
    lease: timedelta
    poll: float | None = None
    """Seconds between reads of the queue when nothing woke the worker (default :data:`POLL`)."""


class Worker:
    """Claims queued jobs, runs each through a :class:`JobRunner` of its payload, heartbeats
    them while they run, marks them done; reclaims entries whose worker's lease lapsed. Once
    ``stopping`` is set it claims nothing more and returns when its running jobs finished."""

    def __init__(
        self,
        queue: JobQueue,
        store: StateBackend,
        runner_for: Callable[[InForce], JobRunner],
        settings: WorkerSettings,
        *,
        clock: Clock,
        log: Log,
        stopping: threading.Event,
    ) -> None:
        self.queue, self.store, self.runner_for = queue, store, runner_for
        self.settings, self.clock, self.stopping = settings, clock, stopping
        self.log = log.bind(worker=settings.worker_id)
        self.poll = POLL if settings.poll is None else settings.poll
        self.wakeup = Wakeup()
        self._beat_every = settings.lease.total_seconds() / HEARTBEATS
        self._beat_due = 0.0
        """When (``time.monotonic``) the held entries' leases are next renewed and lapsed
        entries looked for: on this beat, not at every wake-up (no notice announces a lapse)."""
        self._poll_due = 0.0
        """When queued entries are next looked for if nothing wakes the worker before."""

    def run(self) -> None:
        running: Held = {}
        wakeup = self.wakeup
        threading.Thread(target=self._wake_on_stop, daemon=True).start()
        listener = self.queue.listen_queue("queued", wakeup.set)
        woken = True  # the first round reads the queue
        try:
            with ThreadPoolExecutor(self.settings.slots, thread_name_prefix="job") as pool:
                while running or not self.stopping.is_set():
                    try:
                        self._round(pool, running, woken=woken)
                    except StoreWriteFailed as exc:  # the database is away: held jobs go on,
                        self.log.warning("job queue unreachable", error=str(exc))  # and so do we
                    woken = wakeup.wait(self._pause())
        finally:
            listener.close()

    def _wake_on_stop(self) -> None:
        """A stop ends the wait at once, however long the fallback poll."""
        self.stopping.wait()
        self.wakeup.set()

    def _pause(self) -> float:
        """How long to sleep unless woken: until the next beat or fallback poll."""
        return max(0.0, min(self._beat_due, self._poll_due) - time.monotonic())

    def _round(self, pool: Executor, running: Held, *, woken: bool) -> None:
        """Forget the finished jobs, renew the lease on the others, take what slots are free:
        queued entries when woken (or on the fallback poll), lapsed ones on the beat."""
        for future in [f for f in running if f.done()]:
            key, exc = running.pop(future), future.exception()
            if exc is not None:  # not recorded (the store failed): the entry lapses, and its
                # job is abandoned by the reclaim and its machine rescanned by the plan.
                self.log.error("job not recorded", key=key, error=_first_line(exc))
        beat = self._beat(running.values())
        read = woken or time.monotonic() >= self._poll_due
        if read:
            self._poll_due = time.monotonic() + self.poll
        if not self.stopping.is_set():
            free = self.settings.slots - len(running)
            for entry in self._take(free, reclaim=beat, claim=read):
                future = pool.submit(self._execute, entry)
                future.add_done_callback(lambda _: self.wakeup.set())  # its slot is free
                running[future] = entry.key

    def _beat(self, keys: Iterable[str]) -> bool:
        """On the beat (rounds come at every wake-up): renew the held entries' leases; whether
        it was the beat's turn."""
        if time.monotonic() < self._beat_due:
            return False
        self._beat_due = time.monotonic() + self._beat_every
        held = list(keys)
        if held:
            kept = self.queue.heartbeat_queued(self.settings.worker_id, held, self.clock())
            for key in set(held) - kept:
                self.log.warning("job reclaimed by another worker: its lease lapsed", key=key)
        return True

    def _take(self, free: int, *, reclaim: bool, claim: bool) -> list[QueuedEntry]:
        """Up to ``free`` entries: lapsed ones when ``reclaim``, then queued ones when ``claim``."""
        if free <= 0:
            return []
        me, now, lease = self.settings.worker_id, self.clock(), self.settings.lease
        lapsed = self.queue.reclaim_lapsed(me, lease=lease, limit=free, now=now) if reclaim else []
        taken = list(lapsed)
        for entry in taken:
            self.log.warning("job reclaimed: its worker stopped heartbeating", key=entry.key)
        left = free - len(taken)
        queued = self.queue.claim_queued(me, limit=left, now=now) if claim and left else []
        return taken + list(queued)

    def _execute(self, entry: QueuedEntry) -> None:
        try:
            action, in_force = decode(entry.payload)
        except PayloadRefused as exc:
            self._refuse(entry, str(exc))
        else:
            # A reclaimed entry whose job its dead worker claimed finds the key taken (that
            # job is abandoned, its machine rescanned by the plan): nothing runs twice.
            self.runner_for(in_force).execute(action)
        if not self.queue.finish_queued(self.settings.worker_id, entry.key, self.clock()):
            self.log.warning("job finished after another worker reclaimed it", key=entry.key)

    def _refuse(self, entry: QueuedEntry, message: str) -> None:
        """A payload this worker cannot run: its job is claimed and failed, with the reason."""
        self.log.error("queued job refused", key=entry.key, error=message)
        fields = entry.payload.get("action") if isinstance(entry.payload, dict) else None
        fields = fields if isinstance(fields, dict) else {}
        try:
            operation = Operation(str(fields.get("operation")))
        except ValueError:
            operation = Operation.SCAN
        job = self.store.claim_job(
            key=entry.key,
            instance=str(fields.get("instance") or "unknown"),
            operation=operation,
            window=_text(fields.get("window")),
            task=_text(fields.get("task")),
            opening=_text(fields.get("opening")),
            revision=str(entry.payload.get("revision") or "unknown"),
            payload=dict(entry.payload),
            now=self.clock(),
        )
        if job is not None:
            error = {"code": "PayloadRefused", "message": message}
            self.store.finish_job(
                job.id, status=JobStatus.FAILED, result={"error": error}, now=self.clock()
            )
