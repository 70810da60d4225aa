"""Watches restart with backoff after a normal end, not only after errors (docs/kubernetes.md).

A loopback HTTP proxy stands in front of the real kube-apiserver (tests/kubeapi.py): it passes
every request through with the admin's token, except watches, which it answers at once with an
empty, complete response, as a proxy that does not stream would. Without a pause between
watches that is a tight loop of requests; the tests count the proxy's watch requests against
the pauses a watcher took, over an injected clock and sleep (nothing here really sleeps).
"""

from __future__ import annotations

import random
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes
import pytest

from reconciler.kube import Kube
from reconciler.kube.backoff import Backoff, BackoffPolicy
from reconciler.sources.kubernetes import KubernetesSource, _Watcher
from tests.kubeapi import ADMIN_TOKEN, KubeApi


class WatchCuttingProxy:
    """Plain HTTP on loopback to the API server's HTTPS, every watch ended at once."""

    def __init__(self, kube_api: KubeApi) -> None:
        self.watches = 0
        self.on_watch: Callable[[int], object] = lambda number: None
        """Called with each watch's number (1, 2, …) before it is ended: a test moves its
        clock there to make that watch last."""
        context = ssl.create_default_context(cafile=str(kube_api.ca))
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if "watch=true" in self.path:
                    proxy.watches += 1
                    proxy.on_watch(proxy.watches)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = urllib.request.Request(
                    kube_api.server + self.path,
                    data=body,
                    method=self.command,
                    headers={
                        "Authorization": f"Bearer {ADMIN_TOKEN}",
                        "Content-Type": self.headers.get("Content-Type") or "application/json",
                        "Accept": "application/json",
                    },
                )
                try:
                    with urllib.request.urlopen(request, context=context, timeout=30) as answer:
                        status, data = answer.status, answer.read()
                except urllib.error.HTTPError as refused:
                    status, data = refused.code, refused.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def client(self) -> kubernetes.client.ApiClient:
        configuration = kubernetes.client.Configuration()
        configuration.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return kubernetes.client.ApiClient(configuration)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(kube_api: KubeApi) -> Iterator[WatchCuttingProxy]:
    cutting = WatchCuttingProxy(kube_api)
    yield cutting
    cutting.close()


class FakeTime:
    """A clock that moves only when slept on (or when a test moves it)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_pause_doubles_up_to_its_cap_with_jitter_and_resets_after_a_long_watch() -> None:
    backoff = Backoff(BackoffPolicy(initial=1.0, cap=8.0, healthy_after=30.0), jitter=lambda: 1.0)
    assert [backoff.delay(0.1) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.delay(31.0) == 0.0  # a watch that lasted: the next starts at once
    assert backoff.delay(0.1) == 1.0  # and the pause starts small again
    assert backoff.delay(5.0, enough=5.0) == 0.0  # a watch asked to last 5 s that did
    halved = Backoff(BackoffPolicy(initial=1.0, cap=8.0), jitter=lambda: 0.0)
    assert [halved.delay(0.0) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


@pytest.mark.apiserver
def test_a_watch_ended_at_once_is_restarted_after_a_growing_pause(
    kube_api: KubeApi, proxy: WatchCuttingProxy
) -> None:
    ns = kube_api.namespace()
    time = FakeTime()
    stop = threading.Event()
    pauses = 12

    def sleep(seconds: float) -> None:
        time.sleep(seconds)
        if len(time.slept) == pauses:
            stop.set()

    def lasting(number: int) -> None:
        if number == 8:
            time.now += 60.0  # the 8th watch delivered for a minute before it was cut

    proxy.on_watch = lasting
    source = KubernetesSource(proxy.client(), ns, watch_nodes=False)
    policy = BackoffPolicy(initial=0.8, cap=30.0, healthy_after=30.0)
    backoff = Backoff(policy, clock=lambda: time.now, sleep=sleep, jitter=random.Random(7).random)
    watcher = _Watcher(
        source._lister("PatchBaseline"), lambda: None, stop, name="cut", backoff=backoff
    )
    watcher.start()
    watcher.thread.join(timeout=60)
    assert not watcher.thread.is_alive(), f"still watching after {proxy.watches} watches"
    # One watch per pause, and one more: the 8th, which lasted, was followed at once.
    assert proxy.watches == pauses + 1
    ceilings = [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 0.8, 1.6, 3.2, 6.4, 12.8]
    assert len(time.slept) == len(ceilings)
    for slept, ceiling in zip(time.slept, ceilings, strict=True):
        assert ceiling / 2 <= slept <= ceiling  # jittered, never more than the cap
    assert len(set(time.slept)) == len(time.slept)  # drawn, not fixed


@pytest.mark.apiserver
def test_waiting_for_an_object_pauses_between_watches_ended_at_once(
    kube_api: KubeApi, proxy: WatchCuttingProxy
) -> None:
    """What node patching waits on (a Job to finish, a node to come back) watches too."""
    ns = kube_api.namespace()
    time = FakeTime()
    backoff = Backoff(clock=lambda: time.now, sleep=time.sleep, jitter=lambda: 1.0)
    kube = Kube(proxy.client())
    collection = f"/api/v1/namespaces/{ns}/configmaps"
    never = 1e12  # a monotonic deadline no test reaches: the waiting ends by done()
    found = kube.wait(
        collection, "never", lambda obj: len(time.slept) >= 5, deadline=never, backoff=backoff
    )
    assert found is None
    assert proxy.watches == 5
    assert time.slept == [0.8, 1.6, 3.2, 6.4, 12.8]
