"""
Test doubles for txlb's L7 tests: a recording L{IExchange}, backends, and
an L{UpstreamPool} over L{FakeNetwork} on a L{MemoryReactorClock}.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from txlb.pool import Backend
from txlb.protocols.upstream import IExchange, UpstreamConnection, UpstreamPool
from txlb.test.helpers import FakeNetwork, FakeTCPTransport


def makeBackend(name: str = "app1", port: int = 3000) -> Backend:
    """
    @return: a L{Backend} on 127.0.0.1 at C{port}.
    """
    return Backend(
        name=name,
        address="127.0.0.1",
        port=port,
        endpoint=f"tcp:host=127.0.0.1:port={port}",
    )


@implementer(IExchange)
class RecordingExchange:
    """
    An L{IExchange} that records what it is told, in order.

    @ivar events: C{(name, details...)} tuples, one per call; body bytes
        are not in it (see C{body}).
    @ivar body: every body byte, joined.
    @ivar head: the C{responseStarted} arguments, or C{None}.
    @ivar failure: the L{Failure} given to C{responseFailed}, or C{None}.
    @ivar started: the C{started} given to C{responseFailed}, or C{None}.
    @ivar upgradedWith: C{(connection, extra)} from C{upgraded}, or C{None}.
    @ivar whole: the response came in one C{responseWhole} call.
    @ivar onEvent: called with each event's name before it is recorded,
        so a test can act (abort, pause) from inside a callback.
    """

    def __init__(self, onEvent: Callable[[str], object] | None = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.body = b""
        self.head: tuple[Any, ...] | None = None
        self.failure: Failure | None = None
        self.started: bool | None = None
        self.upgradedWith: tuple[UpstreamConnection, bytes] | None = None
        self.whole = False
        self.onEvent = onEvent

    def _event(self, name: str, *details: Any) -> None:
        """
        Run C{onEvent}, then record the event.
        """
        if self.onEvent is not None:
            self.onEvent(name)
        self.events.append((name, *details))

    def names(self) -> list[str]:
        """
        @return: the event names, in order, adjacent C{body} events merged.
        """
        out: list[str] = []
        for event in self.events:
            if not (event[0] == "body" and out and out[-1] == "body"):
                out.append(event[0])
        return out

    def responseStarted(self, version, status, reason, headers, framing):
        """
        Record the head.
        """
        # A head the reader remembers comes as a tuple: compare as lists.
        self.head = (version, status, reason, list(headers), framing)
        self._event("started", status)

    def informational(self, status, reason, headers):
        """
        Record an interim response.
        """
        self._event("informational", status, reason, headers)

    def responseWhole(self, version, status, reason, headers, framing, body):
        """
        Record it as the head, the body (if any) and the end, and that it
        came whole.
        """
        self.whole = True
        self.responseStarted(version, status, reason, headers, framing)
        if body:
            self.responseBody(body)
        self.responseComplete()

    def responseBody(self, data):
        """
        Record body bytes.
        """
        self.body += data
        self._event("body", data)

    def responseComplete(self):
        """
        Record the end.
        """
        self._event("complete")

    def responseFailed(self, reason, started):
        """
        Record the failure.
        """
        self.failure = reason
        self.started = started
        self._event("failed", reason.type, started)

    def upgraded(self, connection, extra):
        """
        Record the upgrade.
        """
        self.upgradedWith = (connection, extra)
        self._event("upgraded", extra)


class PoolHarness:
    """
    An L{UpstreamPool} whose connects the test completes.

    @ivar clock: the L{MemoryReactorClock} every timer runs on.
    @ivar network: the L{FakeNetwork} recording connects.
    @ivar pool: the L{UpstreamPool} under test.
    @ivar backend: a default backend.
    """

    def __init__(self, onCancel: str = "fail", **poolOptions: Any) -> None:
        self.clock = MemoryReactorClock()
        self.network = FakeNetwork(onCancel=onCancel)
        self.pool = UpstreamPool(
            self.clock,
            endpointForBackend=self.network.endpointForBackend,
            **poolOptions,
        )
        self.backend = makeBackend()

    def open(
        self, backend: Backend | None = None
    ) -> tuple[UpstreamConnection, FakeTCPTransport]:
        """
        Check out a new connection, completing its connect at once.

        @return: the connection and its transport.
        @raise AssertionError: the pool handed out an idle connection.
        """
        d = self.pool.connect(backend or self.backend)
        pending = self.network.attempts[-1]
        _, transport = pending.succeed()
        results: list[UpstreamConnection] = []
        d.addCallback(results.append)
        assert results and not results[0].reused, "expected a new connection"
        return results[0], transport

    def checkout(self, backend: Backend | None = None) -> UpstreamConnection:
        """
        Check out a connection that the pool has at once (an idle one).

        @raise AssertionError: it had none.
        """
        results: list[UpstreamConnection] = []
        self.pool.connect(backend or self.backend).addCallback(results.append)
        assert results, "the pool had no idle connection"
        return results[0]
