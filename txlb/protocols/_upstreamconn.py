"""
One persistent HTTP/1.1 connection to a backend (L{UpstreamConnection})
and how it fails (L{UpstreamError}); what it reports to is an
L{txlb.interfaces.IExchange}.

Public through L{txlb.protocols.upstream}, which also holds the pool that
makes, lends and keeps these connections.  A connection's life, as its
L{ConnectionState}: connecting, then ready, waiting, reading (and
finishing, when the response ends before the request), idle, and ready
again; or, after a 101, a tunnel; closing and closed from any of them.

The parsing is L{txlb.protocols._upstreamparse.ResponseReader}'s; this
module turns its events into exchange calls, timers and pool bookkeeping.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txlb.interfaces import IExchange
from txlb.pool import Backend
from txlb.protocols._upstreamparse import _HEAD as _PHASE_HEAD
from txlb.protocols._upstreamparse import Headers, ResponseReader
from txlb.protocols.headers import ResponseFraming

if TYPE_CHECKING:
    from txlb.protocols.upstream import UpstreamPool


class UpstreamError(Exception):
    """
    A request to a backend failed; the subclasses say how.
    """


class ConnectionLostEarly(UpstreamError):
    """
    The connection ended before any byte of the response arrived.

    @ivar reason: the L{Failure} the transport gave, or C{None}.
    """

    def __init__(self, reason: Failure | None = None) -> None:
        self.reason = reason
        super().__init__(
            "connection lost before the response"
            + (f": {reason.getErrorMessage()}" if reason is not None else "")
        )


class ConnectionLostMidResponse(UpstreamError):
    """
    The connection ended after part of the response: the head was cut
    short, or the body ended before its length or its last chunk (or with
    a reset, for a close-delimited body).

    @ivar reason: the L{Failure} the transport gave.
    """

    def __init__(self, reason: Failure) -> None:
        self.reason = reason
        super().__init__(f"connection lost mid-response: {reason.getErrorMessage()}")


class BadResponse(UpstreamError):
    """
    The backend's response is malformed; the connection was aborted.

    @ivar reason: a short description (it never quotes the response).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ResponseTimeout(UpstreamError):
    """
    No complete response head arrived within the response timeout of the
    last request byte written; the connection was aborted.

    @ivar timeout: the timeout, in seconds.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"no response within {timeout} seconds")


class PoolClosed(UpstreamError):
    """
    L{UpstreamPool.connect} after L{UpstreamPool.closeAll}.
    """


class ConnectionState(enum.Enum):
    """
    Where an L{UpstreamConnection} is.

    @cvar connecting: made by the endpoint, not yet handed to a caller.
    @cvar ready: checked out; no request sent yet.
    @cvar waiting: a request was sent; its response head is awaited.
    @cvar reading: the final response's body is being read.
    @cvar finishing: the response was read; the caller has not finished
        the request yet.
    @cvar idle: in the pool.
    @cvar tunnel: a byte tunnel, after a 101.
    @cvar closing: txlb closed it; the transport has not reported the end.
    @cvar closed: the connection is gone.
    """

    # An identity hash, in C (see txlb.protocols.framing.Body).
    __hash__ = object.__hash__

    connecting = "connecting"
    ready = "ready"
    waiting = "waiting"
    reading = "reading"
    finishing = "finishing"
    idle = "idle"
    tunnel = "tunnel"
    closing = "closing"
    closed = "closed"


_S = ConnectionState
# Each state as a module constant too, and read so on every request: CPython
# 3.11 does not specialize reading an attribute of a class, and reading a
# member from its enum class costs some 70 ns, a module constant 5.
_CONNECTING = _S.connecting
_READY = _S.ready
_WAITING = _S.waiting
_READING = _S.reading
_FINISHING = _S.finishing
_IDLE = _S.idle
_TUNNEL = _S.tunnel
_CLOSING = _S.closing
_CLOSED = _S.closed
_CHECKED_OUT = frozenset({_READY, _WAITING, _READING, _FINISHING, _TUNNEL})
_WRITABLE = frozenset({_WAITING, _READING, _FINISHING, _TUNNEL})


def _setNoDelay(transport: Any) -> None:
    """
    Turn on C{TCP_NODELAY} when C{transport} runs over TCP (requests are
    written as they come; Nagle would hold small writes back for an ACK).
    """
    setNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setNoDelay is not None and isinstance(
        transport.getHost(), (IPv4Address, IPv6Address)
    ):
        setNoDelay(True)


def tunnelCallbacks(
    producer: object, receiver: Any, onLost: Any = None
) -> tuple[Any, Any]:
    """
    What a tunnel calls with the backend's bytes and when it ends.

    @param producer: the tunnel's connection (unregistered from a transport
        receiver before it is closed).
    @param receiver: a transport (its C{write}; closed when the tunnel
        ends), or a callable taking the bytes.
    @param onLost: called with the reason when the tunnel ends; required
        with a callable receiver.
    @return: C{(write, onLost)}.
    @raise TypeError: a callable receiver without C{onLost}.
    """
    write = getattr(receiver, "write", None)
    if write is None:
        if onLost is None:
            raise TypeError("tunnelTo(callable) needs onLost")
        return receiver, onLost
    if onLost is None:

        def onLost(reason: Failure) -> None:
            if getattr(receiver, "producer", None) is producer:
                receiver.unregisterProducer()
            receiver.loseConnection()

    return write, onLost


@implementer(IPushProducer)
class UpstreamConnection(Protocol):
    """
    One HTTP/1.1 connection to a backend, carrying one request at a time.

    As an L{IPushProducer} it pauses and resumes I{reading} from the
    backend, so the client side can register it as its client transport's
    streaming producer: a slow client then holds back the backend instead
    of txlb buffering the response.  Unregister it before
    L{IExchange.responseComplete} returns: after that the connection may
    already carry another client's request.

    @ivar backend: the L{Backend} it is connected to.
    @ivar reused: C{False} when it was opened for the current checkout.
    @ivar state: a L{ConnectionState}.
    @ivar requests: requests sent on it.
    @ivar connectSeconds: how long its connect took.
    @ivar moreFollows: C{True} during L{IExchange.responseStarted} or
        L{IExchange.responseBody} when another call for the same response
        (bytes read with these, or its end) follows before the connection
        returns to the reactor: the caller may hold back what it would write
        and write it with what that call brings.
    """

    moreFollows = False

    _log = Logger()

    def __init__(self, pool: UpstreamPool, backend: Backend) -> None:
        self._pool = pool
        self.backend = backend
        self.reused = False
        self.state = _CONNECTING
        self.requests = 0
        self.connectSeconds: float | None = None
        self._reader = ResponseReader(self, pool.maxResponseHeadSize)
        self._exchange: Any = None
        self._started = False
        self._requestDone = False
        self._paused = False
        # Watched by the pool for the response timeout (see L{_timedOut}).
        self._timed = False
        self._timeout = 0.0
        self._lastWrite = 0.0
        self._idleSince = 0.0
        self._lostReason: Failure | None = None
        self._tunnelData: Callable[[bytes], object] | None = None
        self._tunnelLost: Callable[[Failure], object] | None = None
        self._tunnelHeld: list[bytes] = []
        self._tunnelEnded: Failure | None = None

    # Caller API

    def sendRequest(
        self,
        head: bytes,
        method: bytes,
        exchange: IExchange,
        responseTimeout: float | None,
        whole: bool = False,
    ) -> None:
        """
        Write a request head and read its response.

        @param head: the serialized request head, ending with CRLFCRLF.
        @param method: the request method (a response to C{HEAD} has no
            body).
        @param exchange: the L{IExchange} told of the response.
        @param responseTimeout: seconds within which the whole response
            head must arrive, counted from the last request byte written
            (so a long upload is not cut off); C{None} for no limit.
        @param whole: the head is the whole request (it has no body): as
            if L{finishRequest} followed.
        @raise RuntimeError: the connection is not checked out and ready.
            When it was lost while checked out, C{exchange.responseFailed}
            is called with L{ConnectionLostEarly} before this returns.
        """
        state = self.state
        if state is not _READY:
            if state is _CLOSING or state is _CLOSED:
                exchange.responseFailed(
                    Failure(ConnectionLostEarly(self._lostReason)), False
                )
                return
            raise RuntimeError(f"sendRequest on a connection that is {state.value}")
        self.state = _WAITING
        self._exchange = exchange
        self._started = False
        self._requestDone = whole
        self.requests += 1
        # self._reader.expect(method), inline: once per request.
        reader = self._reader
        reader._method = method
        reader._interim = 0
        reader.framing = None
        reader._headSize = 0
        reader._stopped = False
        reader._phase = _PHASE_HEAD
        self.transport.write(head)
        if responseTimeout is not None:
            pool = self._pool
            self._timeout = responseTimeout
            self._lastWrite = now = pool.reactor.seconds()
            self._timed = True
            # pool._watchResponse(self), inline when its timer is due first.
            pool._waiting[self] = None
            if pool._responseCall is None or now + responseTimeout < pool._responseAt:
                pool._watchResponse(self)

    def writeBody(self, data: bytes) -> None:
        """
        Write request body bytes, already framed by the caller (ignored
        once the connection is closing).
        """
        if self.state in _WRITABLE:
            self.transport.write(data)
            if self._timed:
                self._lastWrite = self._pool.reactor.seconds()

    def finishRequest(self) -> None:
        """
        The caller wrote the whole request.  If the response is already
        complete, the connection goes back to the pool now.
        """
        state = self.state
        if self._requestDone or state not in _WRITABLE:
            return
        self._requestDone = True
        if self._timed:
            self._lastWrite = self._pool.reactor.seconds()
        if state is _FINISHING:
            self._pool._checkin(self)

    def abort(self) -> None:
        """
        Give up (the client left): close without reuse, dropping what is
        buffered.  Nothing more is reported to the exchange or the tunnel.
        Does nothing unless the connection is checked out.
        """
        if self.state in _CHECKED_OUT:
            self._exchange = None
            self._tunnelData = self._tunnelLost = None
            self._reader.stop()
            self._closeNow(abort=True)

    def tunnelTo(
        self,
        receiver: Any,
        onLost: Callable[[Failure], object] | None = None,
    ) -> None:
        """
        After L{IExchange.upgraded}: pass every byte the backend sends from
        now on to C{receiver}, and the end of its connection to C{onLost}.

        Bytes read before this call are passed first.  Write to the
        backend with L{writeBody}; close with L{abort} (which calls neither
        C{receiver} nor C{onLost}) or C{self.transport.loseConnection()}.

        @param receiver: the client's transport (bytes go to its C{write};
            by default the end closes it after what it has buffered,
            unregistering this connection first if it is its producer), or
            a callable taking the bytes.
        @param onLost: called with the L{Failure} that ended the backend
            connection; required when C{receiver} is a callable.
        @raise RuntimeError: the connection is not a tunnel.
        @raise TypeError: C{receiver} is a callable and C{onLost} missing.
        """
        if self.state is not _TUNNEL and self._tunnelEnded is None:
            raise RuntimeError(f"tunnelTo on a connection that is {self.state.value}")
        write, onLost = tunnelCallbacks(self, receiver, onLost)
        self._tunnelData, self._tunnelLost = write, onLost
        held, self._tunnelHeld = self._tunnelHeld, []
        for data in held:
            write(data)
            if self._tunnelData is not write:
                return
        ended, self._tunnelEnded = self._tunnelEnded, None
        if ended is not None:
            self._tunnelData = self._tunnelLost = None
            onLost(ended)
        elif held and not self._paused:
            self.transport.resumeProducing()

    def pauseProducing(self) -> None:
        """
        Stop reading from the backend.
        """
        if self.state in _CHECKED_OUT and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Read from the backend again.
        """
        if self.state in _CHECKED_OUT and self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        The consumer (the client transport) is gone: L{abort}.
        """
        self.abort()

    # Protocol

    def connectionMade(self) -> None:
        """
        Set C{TCP_NODELAY}; close at once a connection nobody waits for.
        """
        _setNoDelay(self.transport)
        self._pool._connections.add(self)
        if getattr(self.factory, "abandoned", False):
            self._closeNow(abort=True)

    def dataReceived(self, data: bytes) -> None:
        """
        Parse response bytes, or pass tunnel bytes on.
        """
        state = self.state
        if state is _WAITING or state is _READING:
            self._started = True
            try:
                self._reader.feed(data)
            except Exception:
                self._log.failure(
                    "backend {backend}: handling a response failed; closing",
                    backend=self.backend.name,
                )
                if self.state is _IDLE:
                    # Pooled already, when its exchange failed: not again.
                    self._closeNow(abort=True)
                else:
                    self.abort()
        elif state is _TUNNEL:
            if self._tunnelData is not None:
                self._tunnelData(data)
            else:
                self._hold(data)
        elif state is not _CLOSING and state is not _CLOSED:
            # Idle, or between two exchanges: the backend has nothing to say.
            self._log.warn(
                "backend {backend} sent {count} bytes on a connection with no "
                "request ({state}); closing it",
                backend=self.backend.name,
                count=len(data),
                state=state.value,
            )
            self._closeNow(abort=True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Leave the pool; fail or (for a close-delimited body) complete the
        response in progress.
        """
        state = self.state
        self.state = _CLOSED
        self._lostReason = reason
        self._cancelTimer()
        self._pool._connectionLost(self, state)
        exchange, self._exchange = self._exchange, None
        backend = self.backend.name
        if state is _IDLE:
            self._log.debug(
                "backend {backend} closed an idle connection", backend=backend
            )
        elif state is _WAITING or state is _READING:
            clean = reason.check(error.ConnectionDone) is not None
            if self._reader.connectionClosed(clean):
                exchange.responseComplete()
                return
            self._log.info(
                "backend {backend}: connection lost {when}: {reason}",
                backend=backend,
                when="mid-response" if self._started else "before the response",
                reason=reason.getErrorMessage(),
            )
            failure = (
                ConnectionLostMidResponse(reason)
                if self._started
                else ConnectionLostEarly(reason)
            )
            exchange.responseFailed(Failure(failure), self._started)
        elif state is _TUNNEL:
            lost = self._tunnelLost
            self._tunnelData = self._tunnelLost = None
            if lost is not None:
                lost(reason)
            else:
                # tunnelTo is still to come: it delivers this last.
                self._tunnelEnded = reason

    # ResponseReader events

    def _responseHead(
        self,
        version: tuple[int, int],
        status: int,
        reason: bytes,
        headers: Headers,
        framing: ResponseFraming,
        more: bool,
        inBody: bool,
    ) -> None:
        """
        A final or 101 head: the response timeout is met; tell the exchange.
        """
        if self._timed:  # _cancelTimer, inline
            self._timed = False
            self._pool._unwatchResponse(self)
        if inBody:
            self.state = _READING
        self.moreFollows = more
        self._exchange.responseStarted(version, status, reason, headers, framing)
        self.moreFollows = False

    def _responseWhole(
        self,
        version: tuple[int, int],
        status: int,
        reason: bytes,
        headers: Headers,
        framing: ResponseFraming,
        body: bytes,
    ) -> None:
        """
        A final head and its whole body, read at once with nothing after
        them: the response timeout is met; pool the connection (or keep it
        for the rest of the request, or close it), then tell the exchange.
        """
        pool = self._pool
        if self._timed:  # _cancelTimer, inline
            self._timed = False
            pool._waiting.pop(self, None)
        exchange, self._exchange = self._exchange, None
        if not framing.keepAlive or pool._closing:
            self._closeNow(abort=False)
        elif self._requestDone:
            pool._checkin(self)
        else:
            self.state = _FINISHING
        exchange.responseWhole(version, status, reason, headers, framing, body)

    def _responseInformational(
        self, status: int, reason: bytes, headers: Headers
    ) -> None:
        """
        An interim response: tell the exchange.
        """
        self._exchange.informational(status, reason, headers)

    def _responseBody(self, data: bytes, more: bool) -> None:
        """
        Body bytes: pass them on.
        """
        self.moreFollows = more
        self._exchange.responseBody(data)
        self.moreFollows = False

    def _responseDone(self, extra: bool) -> None:
        """
        The response ended: pool the connection, keep it for the rest of
        the request, or close it; then tell the exchange.
        """
        exchange, self._exchange = self._exchange, None
        framing = self._reader.framing
        if extra:
            self._log.warn(
                "backend {backend} sent bytes after a complete response; "
                "closing the connection",
                backend=self.backend.name,
            )
            self._closeNow(abort=True)
        elif not framing.keepAlive or self._pool._closing:
            self._closeNow(abort=False)
        elif self._requestDone:
            self._pool._checkin(self)
        else:
            self.state = _FINISHING
        exchange.responseComplete()

    def _responseUpgraded(self, extra: bytes) -> None:
        """
        A 101 ended its head: become a tunnel.
        """
        exchange, self._exchange = self._exchange, None
        self.state = _TUNNEL
        exchange.upgraded(self, extra)

    def _responseBad(self, reason: str) -> None:
        """
        A malformed response: abort, and fail the exchange.
        """
        exchange, self._exchange = self._exchange, None
        self._cancelTimer()
        self._log.warn(
            "backend {backend} sent a bad response: {reason}",
            backend=self.backend.name,
            reason=reason,
        )
        self._closeNow(abort=True)
        exchange.responseFailed(Failure(BadResponse(reason)), True)

    # Internals

    def _timedOut(self) -> None:
        """
        The response timeout is up (the pool, which watches every
        connection waiting for a response on one timer, found it so): fail
        the exchange.
        """
        self._cancelTimer()
        exchange, self._exchange = self._exchange, None
        self._reader.stop()
        self._log.info(
            "backend {backend}: no response within {timeout}s; closing",
            backend=self.backend.name,
            timeout=self._timeout,
        )
        self._closeNow(abort=True)
        exchange.responseFailed(Failure(ResponseTimeout(self._timeout)), self._started)

    def _cancelTimer(self) -> None:
        """
        Stop the response timeout, if it runs.
        """
        if self._timed:
            self._timed = False
            self._pool._unwatchResponse(self)

    def _hold(self, data: bytes) -> None:
        """
        Keep tunnel bytes until L{tunnelTo}, reading no more until then.
        """
        self._tunnelHeld.append(data)
        if not self._paused:
            self.transport.pauseProducing()

    def _checkout(self, reused: bool) -> None:
        """
        Hand the connection to a caller.
        """
        self.state = _READY
        self.reused = reused

    def _makeIdle(self, now: float) -> None:
        """
        Put the connection in the pool: reading again, with no producer
        left over from the last client.
        """
        self.state = _IDLE
        self._idleSince = now
        transport = self.transport
        if self._paused:
            self._paused = False
            transport.resumeProducing()
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()

    def _closeNow(self, abort: bool) -> None:
        """
        Close the connection, at once (C{abort}) or after what is buffered.
        """
        if self.state is _IDLE:
            self._pool._removeIdle(self)
        self.state = _CLOSING
        self._cancelTimer()
        transport = self.transport
        # A transport asked to close with a producer registered waits for
        # that producer; whoever registered it hears of the end otherwise.
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        abortConnection = getattr(transport, "abortConnection", None)
        if abort and abortConnection is not None:
            abortConnection()
        else:
            transport.loseConnection()
