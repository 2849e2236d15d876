"""
The backend side of the L7 proxy: persistent HTTP/1.1 connections to each
backend, kept in a pool, and the responses read from them.

The client side (L{txlb.protocols.http}) asks an L{UpstreamPool} for a
connection to the backend its strategy chose, sends one request on it
(L{UpstreamConnection.sendRequest}, L{UpstreamConnection.writeBody},
L{UpstreamConnection.finishRequest}) and hears about the response through
an L{IExchange}.  The request head and body arrive serialized and framed;
this module only moves them, and parses and checks what comes back.

A connection goes back to the pool only when all of this holds: the whole
response was read, the whole request was written, the response allowed
keep-alive, and the backend sent nothing after its response.  Everything
else closes it: a malformed response, a timeout, a close-delimited body,
extra bytes, a caller that gives up.  Idle connections are checked out
most recently used first (the ones least likely to have been closed by the
backend), kept at most C{maxIdlePerBackend} per backend and closed after
C{idleTimeout}; one the backend closes, or that receives a byte, leaves the
pool at once.

Failures are reported as subclasses of L{UpstreamError}:

  - L{ConnectionLostEarly}: the connection ended before any byte of the
    response (for a reused connection, typically the backend's keep-alive
    timeout racing the request: the caller may retry an idempotent request);
  - L{ConnectionLostMidResponse}: it ended after part of the response,
    including a body cut short (never passed off as complete);
  - L{BadResponse}: the response broke HTTP/1.1 or txlb's framing rules;
  - L{ResponseTimeout}: no complete response head in time;
  - L{PoolClosed}: L{UpstreamPool.connect} after L{UpstreamPool.closeAll}.

A failed or timed-out connect fails the L{Deferred} of
L{UpstreamPool.connect} with the endpoint's error (a
L{twisted.internet.error.TimeoutError} for the connect timeout, a
L{CancelledError} when the caller cancelled).  The pool counts connects;
accounting requests on the backend (L{Backend.acquire}, L{Backend.release},
L{Backend.recordFailure}, L{txlb.pool.Pool.observeLatency}) is the
caller's.

Every public name is importable from here; the connection lives in
L{txlb.protocols._upstreamconn} and the response parser in
L{txlb.protocols._upstreamparse}.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

from twisted.internet import error
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IAddress, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from txlb.interfaces import IExchange
from txlb.pool import Backend
from txlb.protocols._backendleg import _skipEndpointWrapper
from txlb.protocols._upstreamconn import (
    BadResponse,
    ConnectionLostEarly,
    ConnectionLostMidResponse,
    ConnectionState,
    PoolClosed,
    ResponseTimeout,
    UpstreamConnection,
    UpstreamError,
)
from txlb.protocols._upstreamparse import MAX_RESPONSE_HEAD
from txlb.protocols.tcp import backendEndpoint

__all__ = [
    "BadResponse",
    "ConnectionLostEarly",
    "ConnectionLostMidResponse",
    "ConnectionState",
    "IExchange",
    "PoolClosed",
    "ResponseTimeout",
    "UpstreamConnection",
    "UpstreamError",
    "UpstreamPool",
]

_S = ConnectionState
# As in txlb.protocols._upstreamconn: module constants cost less to read.
_CONNECTING = _S.connecting
_READY = _S.ready
_IDLE = _S.idle
_GONE = frozenset({_S.closing, _S.closed})

# Connect failures that are the network's doing: one log line, no traceback.
_NETWORK_ERRORS = (
    error.ConnectError,
    error.ConnectingCancelledError,
    error.DNSLookupError,
    error.ConnectionClosed,
    error.TimeoutError,
    CancelledError,
    OSError,
)


def _connectTimedOut(result: object, timeout: float) -> object:
    """
    Turn a connect cancelled by its timeout into a L{error.TimeoutError},
    whatever the endpoint's canceller gave.
    """
    if isinstance(result, Failure):
        raise error.TimeoutError(string=f"no connection within {timeout} seconds")
    return result


class _ConnectionFactory(Factory):
    """
    Builds the L{UpstreamConnection} of one connect attempt.

    @ivar cancelled: the caller cancelled the attempt.
    @ivar abandoned: the attempt failed or was given up: a connection made
        for it after all is closed.
    @ivar built: every connection built.
    """

    noisy = False

    def __init__(self, pool: UpstreamPool, backend: Backend) -> None:
        self.pool = pool
        self.backend = backend
        self.cancelled = False
        self.abandoned = False
        self.built: list[UpstreamConnection] = []

    def buildProtocol(self, addr: IAddress) -> UpstreamConnection:
        """
        Build an L{UpstreamConnection} to the attempt's backend.
        """
        conn = UpstreamConnection(self.pool, self.backend)
        conn.factory = self
        self.built.append(conn)
        return conn

    def abandon(self) -> None:
        """
        Give the attempt up: close what it connected.
        """
        self.abandoned = True
        for conn in self.built:
            if conn.state is _CONNECTING and conn.transport is not None:
                conn._closeNow(abort=True)


class UpstreamPool:
    """
    Persistent connections to backends: checked out for one exchange at a
    time, kept idle in between.

    @ivar reactor: the reactor for connects and every timer.
    @ivar endpointForBackend: C{(reactor, backend) -> IStreamClientEndpoint}.
    @ivar connectTimeout: seconds a connect may take.
    @ivar maxIdlePerBackend: idle connections kept per backend.
    @ivar idleTimeout: seconds an idle connection is kept.
    @ivar maxResponseHeadSize: the most bytes of one response head.
    @ivar connectionsOpened: new connections handed out.
    @ivar connectionsReused: idle connections handed out.
    @ivar connectFailures: connects that failed, timed out or were
        cancelled.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        endpointForBackend: Callable[
            [Any, Backend], IStreamClientEndpoint
        ] = backendEndpoint,
        connectTimeout: float = 5.0,
        maxIdlePerBackend: int = 32,
        idleTimeout: float = 4.0,
        maxResponseHeadSize: int = MAX_RESPONSE_HEAD,
    ) -> None:
        """
        @raise ValueError: a timeout is not positive, or a limit negative.
        """
        if not connectTimeout > 0:
            raise ValueError(f"connectTimeout must be positive: {connectTimeout!r}")
        if not idleTimeout > 0:
            raise ValueError(f"idleTimeout must be positive: {idleTimeout!r}")
        if maxIdlePerBackend < 0:
            raise ValueError(f"maxIdlePerBackend is negative: {maxIdlePerBackend!r}")
        if maxResponseHeadSize < 1:
            raise ValueError(f"maxResponseHeadSize too small: {maxResponseHeadSize!r}")
        self.reactor = reactor
        self.endpointForBackend = endpointForBackend
        self.connectTimeout = connectTimeout
        self.maxIdlePerBackend = maxIdlePerBackend
        self.idleTimeout = idleTimeout
        self.maxResponseHeadSize = maxResponseHeadSize
        self.connectionsOpened = 0
        self.connectionsReused = 0
        self.connectFailures = 0
        self._idle: dict[Backend, collections.deque[UpstreamConnection]] = {}
        self._connections: set[UpstreamConnection] = set()
        self._connecting = 0
        self._sweepCall: Any = None
        # Connections waiting for a response head within their timeout,
        # in the order they started waiting, and the one timer for them.
        self._waiting: dict[UpstreamConnection, None] = {}
        self._responseCall: Any = None
        self._responseAt = 0.0
        self._closing = False
        self._closedWaiters: list[Deferred[None]] = []

    def connect(self, backend: Backend, fresh: bool = False) -> Deferred[UpstreamConnection]:
        """
        Check out a connection to C{backend}: the most recently used idle
        one, else a new one.

        @param fresh: open a new connection even when an idle one is there
            (after a reused one turned out to be closed by the backend).

        @return: a L{Deferred} firing with a checked-out
            L{UpstreamConnection} (its C{reused} says which kind), or
            failing with the connect's error (L{error.TimeoutError} after
            C{connectTimeout}; L{PoolClosed} after L{closeAll}).
            Cancelling it gives up the connect (a connection made anyway is
            closed) and fails it with L{CancelledError}.
        """
        if self._closing:
            return fail(PoolClosed("the upstream pool is closed"))
        if not fresh:
            conn = self.takeIdle(backend)
            if conn is not None:
                return succeed(conn)
        return self._open(backend)

    def takeIdle(self, backend: Backend) -> UpstreamConnection | None:
        """
        Check out the most recently used idle connection to C{backend},
        without a L{Deferred}: the hot path of L{connect}, for callers that
        want to skip it.

        @return: the checked-out connection (C{reused} is C{True}), or
            C{None} when there is none (or the pool is closed).
        """
        idle = self._idle.get(backend)
        if not idle or self._closing:
            return None
        conn = idle.pop()
        # conn._checkout(True), inline.
        conn.state = _READY
        conn.reused = True
        self.connectionsReused += 1
        return conn

    def idleCount(self, backend: Backend | None = None) -> int:
        """
        @return: idle connections to C{backend}, or to every backend.
        """
        if backend is not None:
            return len(self._idle.get(backend, ()))
        return sum(map(len, self._idle.values()))

    def closeIdle(self, backend: Backend | None = None) -> None:
        """
        Close the idle connections to C{backend} (e.g. removed or
        draining), or to every backend.  Connections checked out stay open.
        """
        backends = list(self._idle) if backend is None else [backend]
        for each in backends:
            for conn in self._idle.pop(each, ()):
                conn._closeNow(abort=False)

    def closeAll(self) -> Deferred[None]:
        """
        Shut down: close the idle connections, close each checked-out one
        when its exchange ends, refuse new checkouts.

        @return: a L{Deferred} firing when every connection (and connect
            in flight) is gone.
        """
        self._closing = True
        if self._sweepCall is not None:
            if self._sweepCall.active():
                self._sweepCall.cancel()
            self._sweepCall = None
        self.closeIdle()
        d: Deferred[None] = Deferred()
        self._closedWaiters.append(d)
        self._maybeClosed()
        return d

    # Connecting

    def _open(self, backend: Backend) -> Deferred[UpstreamConnection]:
        """
        Open a new connection to C{backend}.
        """
        reactor = self.reactor
        factory = _ConnectionFactory(self, backend)
        self._connecting += 1
        started = reactor.seconds()
        attempt = maybeDeferred(
            lambda: self.endpointForBackend(reactor, backend).connect(factory)
        )
        attempt.addTimeout(self.connectTimeout, reactor, _connectTimedOut)

        def cancel(_: object) -> None:
            factory.cancelled = True
            attempt.cancel()

        result: Deferred[UpstreamConnection] = Deferred(cancel)
        attempt.addBoth(self._connected, factory, result, started)
        return result

    def _connected(
        self,
        outcome: UpstreamConnection | Failure,
        factory: _ConnectionFactory,
        result: Deferred[UpstreamConnection],
        started: float,
    ) -> None:
        """
        A connect attempt ended: hand its connection to the caller, or fail.
        """
        self._connecting -= 1
        if not isinstance(outcome, Failure) and outcome.state in _GONE:
            # Made and lost (or refused) before the endpoint reported it.
            outcome = Failure(ConnectionLostEarly(outcome._lostReason))
        if isinstance(outcome, Failure):
            factory.abandon()
            self.connectFailures += 1
            if factory.cancelled:
                outcome = Failure(CancelledError())
            else:
                text = "connect to backend {backend} failed: {reason}"
                fields = dict(
                    backend=factory.backend.name, reason=outcome.getErrorMessage()
                )
                if outcome.check(*_NETWORK_ERRORS, UpstreamError):
                    self._log.info(text, **fields)
                else:
                    self._log.failure(text, outcome, LogLevel.error, **fields)
            if not result.called:
                result.errback(outcome)
            self._maybeClosed()
            return None
        conn = outcome
        if factory.cancelled or result.called:
            # The caller cancelled, and the endpoint connected anyway.
            factory.abandoned = True
            conn._closeNow(abort=True)
            if not result.called:
                result.errback(CancelledError())
            return None
        conn.connectSeconds = self.reactor.seconds() - started
        # Every response byte goes to the connection without the endpoint's
        # wrapper in between (as the L4 relay's backend legs do).
        _skipEndpointWrapper(conn)
        conn._checkout(False)
        self.connectionsOpened += 1
        result.callback(conn)
        return None

    # Bookkeeping, called by connections

    def _checkin(self, conn: UpstreamConnection) -> None:
        """
        C{conn} finished an exchange and may be reused: keep it idle.
        """
        if self._closing or self.maxIdlePerBackend == 0:
            conn._closeNow(abort=False)
            return
        # conn._makeIdle(now), inline for a connection with nothing to undo.
        conn.state = _IDLE
        now = conn._idleSince = self.reactor.seconds()
        if conn._paused or getattr(conn.transport, "producer", None) is not None:
            conn._makeIdle(now)
        idle = self._idle.get(conn.backend)
        if idle is None:
            idle = self._idle[conn.backend] = collections.deque()
        idle.append(conn)
        if len(idle) > self.maxIdlePerBackend:
            # Keep the most recently used: the oldest is the likeliest to
            # meet the backend's own keep-alive timeout.
            oldest = idle.popleft()
            oldest._closeNow(abort=False)
        if self._sweepCall is None:
            self._sweepCall = self.reactor.callLater(self.idleTimeout, self._sweep)

    def _removeIdle(self, conn: UpstreamConnection) -> None:
        """
        Take C{conn} out of the idle connections.
        """
        idle = self._idle.get(conn.backend)
        if idle is not None and conn in idle:
            idle.remove(conn)

    def _connectionLost(self, conn: UpstreamConnection, state: ConnectionState) -> None:
        """
        C{conn}'s connection ended while it was in C{state}.
        """
        if state is _IDLE:
            self._removeIdle(conn)
        self._connections.discard(conn)
        self._maybeClosed()

    def _sweep(self) -> None:
        """
        Close the connections idle for C{idleTimeout}; come back when the
        next one will have been.

        One timer serves the whole pool, so a checkout or checkin costs no
        timer call: the oldest connection of each backend is at the front.
        """
        self._sweepCall = None
        now = self.reactor.seconds()
        timeout = self.idleTimeout
        nextSince = None
        for backend, idle in list(self._idle.items()):
            while idle and idle[0]._idleSince + timeout <= now + 1e-6:
                conn = idle.popleft()
                self._log.debug(
                    "backend {backend}: closing a connection idle for {timeout}s",
                    backend=backend.name,
                    timeout=timeout,
                )
                conn._closeNow(abort=False)
            if not idle:
                del self._idle[backend]
            elif nextSince is None or idle[0]._idleSince < nextSince:
                nextSince = idle[0]._idleSince
        if nextSince is not None:
            self._sweepCall = self.reactor.callLater(
                nextSince + timeout - now, self._sweep
            )

    def _watchResponse(self, conn: UpstreamConnection) -> None:
        """
        C{conn} waits for a response head until C{conn._lastWrite +
        conn._timeout} (which later writes push back).

        One timer serves every waiting connection, so that a request costs
        no timer call while others are in flight: it is due no later than
        the earliest deadline, and when it fires it fails the connections
        whose deadline has passed and is set again for the next one.  It is
        not cancelled when the last connection stops waiting (the next
        request would only schedule it again): it then fires once for
        nothing.
        """
        self._waiting[conn] = None
        deadline = conn._lastWrite + conn._timeout
        call = self._responseCall
        if call is None or deadline < self._responseAt:
            if call is not None:
                call.cancel()
            self._responseAt = deadline
            self._responseCall = self.reactor.callLater(
                conn._timeout, self._checkResponses
            )

    def _unwatchResponse(self, conn: UpstreamConnection) -> None:
        """
        C{conn} no longer waits: its response head arrived, or it failed.
        """
        self._waiting.pop(conn, None)

    def _checkResponses(self) -> None:
        """
        Fail the waiting connections whose response timeout is up (earliest
        deadline first); come back at the next deadline.
        """
        self._responseCall = None
        now = self.reactor.seconds()
        due = sorted(
            (conn for conn in self._waiting
             if conn._lastWrite + conn._timeout - now <= 1e-6),
            key=lambda conn: conn._lastWrite + conn._timeout,
        )
        for conn in due:
            # An earlier one's failure may have settled this one.
            if conn in self._waiting:
                conn._timedOut()
        if self._waiting:
            earliest = min(
                conn._lastWrite + conn._timeout for conn in self._waiting
            )
            call = self._responseCall
            if call is None or earliest < self._responseAt:
                if call is not None:
                    call.cancel()
                self._responseAt = earliest
                self._responseCall = self.reactor.callLater(
                    max(0.0, earliest - now), self._checkResponses
                )

    def _maybeClosed(self) -> None:
        """
        After L{closeAll}: fire its L{Deferred}s once nothing is left.
        """
        if self._closing and not self._connections and not self._connecting:
            waiters, self._closedWaiters = self._closedWaiters, []
            for d in waiters:
                d.callback(None)
