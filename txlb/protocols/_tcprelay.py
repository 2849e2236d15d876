"""
The client leg of the layer 4 relay: the protocol of each client connection
(see L{txlb.protocols.tcp} for what it does, in order), and how a backend's
endpoint is made.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from txlb.pool import Backend
from txlb.protocols._backendleg import (
    _NETWORK_ERRORS,
    EARLY_DATA_LIMIT,
    _abort,
    _Attempt,
    _AttemptState,
    _BackendFactory,
    _BackendProtocol,
    _halfClose,
    _relayLogger,
    _setNoDelay,
    _timedOut,
)

if TYPE_CHECKING:
    from txlb.protocols.tcp import TCPRelayFactory


def backendEndpoint(reactor: Any, backend: Backend) -> IStreamClientEndpoint:
    """
    Make the endpoint that connects to C{backend}: the default
    C{endpointForBackend} of L{TCPRelayFactory}.

    @param reactor: the reactor the endpoint uses.
    @param backend: the L{Backend}; its C{endpoint} is a client endpoint
        string such as C{"tcp:host=127.0.0.1:port=3000:timeout=5"}.
    @return: an L{IStreamClientEndpoint}.
    @raise ValueError: the endpoint string is not valid.
    """
    return clientFromString(reactor, backend.endpoint)


def _describe(address: IAddress | None) -> str:
    """
    Format an address for a log line: C{host:port} when it has both.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return str(address)
    return f"{host}:{port}"


class _State(enum.Enum):
    """
    Where one relayed client connection is.

    @cvar new: built, not yet connected.
    @cvar shed: refused over the listener limit; never held a slot.
    @cvar connecting: the client is paused; a backend attempt is in flight.
    @cvar relaying: both legs are up and bytes flow.
    @cvar closing: a leg is gone or being closed; waiting for the rest.
    @cvar closed: both legs are gone and the slot is released.
    """

    new = "new"
    shed = "shed"
    connecting = "connecting"
    relaying = "relaying"
    closing = "closing"
    closed = "closed"


@implementer(IHalfCloseableProtocol)
class _ClientProtocol(Protocol):
    """
    The client leg of a relayed connection, and the state of the whole.

    While relaying, each leg writes the bytes it reads straight to the
    other's transport and counts them here; nothing on that path reads the
    clock (see L{_idleCheck}).

    @ivar factory: the L{TCPRelayFactory}.
    @ivar bytesIn: bytes relayed from this client to its backend.
    @ivar bytesOut: bytes relayed from the backend to this client (counted
        by the backend leg, L{_BackendProtocol}).
    """

    _log = _relayLogger("_ClientProtocol")

    def __init__(self, factory: TCPRelayFactory) -> None:
        self.factory = factory
        self._state = _State.new
        self._tried: list[Backend] = []
        self._attempt: _Attempt | None = None
        self._backendTransport: Any = None
        # The backend transport's write while relaying, else None.
        self._toBackend: Callable[[bytes], object] | None = None
        self._early: list[bytes] = []
        self._earlyLength = 0
        self._clientGone = False
        self._clientReadDone = False
        self._backendReadDone = False
        # Which producer registrations are in place, so that each is undone
        # exactly once.
        self._clientFeedsBackend = False
        self._backendFeedsClient = False
        self._idleCall: Any = None
        # The pool's queue wait, while waiting for a backend to free up.
        self._waiting: Deferred[Backend] | None = None
        self._movedAtCheck = 0
        self.bytesIn = 0
        self.bytesOut = 0

    # Client events

    def connectionMade(self) -> None:
        """
        Admit or shed the connection; when admitted, stop reading from the
        client and start connecting to a backend.
        """
        factory = self.factory
        rateLimit = factory.rateLimit
        if rateLimit is not None and rateLimit.take(
            getattr(self.transport.getPeer(), "host", "")
        ):
            self._state = _State.shed
            factory.rateLimited += 1
            self._log.debug(
                "listener {listener}: {client} over its rate limit", **self._fields()
            )
            _abort(self.transport)
            return
        if not factory._limit.acquire():
            self._state = _State.shed
            self._log.debug(
                "listener {listener}: shed {client}: {limit} connections open",
                **self._fields(limit=factory.maxConnections),
            )
            _abort(self.transport)
            return
        factory._relays.add(self)
        self._state = _State.connecting
        # Read nothing from the client until there is somewhere to send it.
        self.transport.pauseProducing()
        _setNoDelay(self.transport)
        self._connectNext()

    def dataReceived(self, data: bytes) -> None:
        """
        Relay client bytes to the backend (or hold them while connecting).
        """
        toBackend = self._toBackend
        if toBackend is not None:
            toBackend(data)
            self.bytesIn += len(data)
        elif self._state is _State.connecting:
            self._hold(data)
        # Otherwise the relay is closing: the bytes have nowhere to go.

    def readConnectionLost(self) -> None:
        """
        The client will send no more: shut the backend's write side.
        """
        if self._clientReadDone:
            return
        self._clientReadDone = True
        if self._state is _State.relaying:
            self._propagateClientEOF()

    def writeConnectionLost(self) -> None:
        """
        Our write side to the client is shut; nothing more to do.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The client is gone: give up the connect attempt, or close the
        backend leg after what it has buffered.
        """
        if self._state is _State.shed:
            return
        self._clientGone = True
        self._closing()
        self._logClosed(reason)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()
        attempt = self._attempt
        if attempt is not None:
            if attempt.state is _AttemptState.connecting:
                attempt.deferred.cancel()
            else:
                self._unwire()
                self._backendTransport.loseConnection()
        self._maybeFinished()

    # Connecting

    def _connectNext(self) -> None:
        """
        Pick a backend not tried yet and connect to it, or give up.
        """
        factory = self.factory
        try:
            backend = factory.pool.pick(
                clientAddress=self.transport.getPeer(), exclude=self._tried
            )
        except Exception:
            self._log.failure(
                "listener {listener}: pool {pool} failed to pick a backend",
                level=LogLevel.error,
                listener=factory.listenerName,
                pool=factory.pool.name,
            )
            backend = None
        if backend is None:
            pool = factory.pool
            if not self._tried and pool.queueable():
                waiting = self._waiting = pool.wait(
                    clientAddress=self.transport.getPeer()
                )
                waiting.addCallbacks(self._dequeued, self._queueFailed)
                return
            self._noBackend()
            return
        self._connectTo(backend)

    def _dequeued(self, backend: Backend) -> None:
        """
        A backend freed up while this connection waited in the queue.
        """
        self._waiting = None
        self._connectTo(backend)

    def _queueFailed(self, reason: Failure) -> None:
        """
        The queue was full or the wait timed out: close the client.
        """
        self._waiting = None
        if reason.check(CancelledError):
            return
        self.factory.queueRefused += 1
        self._log.warn(
            "listener {listener}: {client} refused: {why}",
            **self._fields(why=str(reason.value)),
        )
        self._closing()
        self.transport.loseConnection()

    def _connectTo(self, backend: Backend) -> None:
        """
        Connect to C{backend} for this client.
        """
        factory = self.factory
        self._tried.append(backend)
        attempt = _Attempt(backend, factory.reactor.seconds())
        self._attempt = attempt
        d = maybeDeferred(
            lambda: factory.endpointForBackend(factory.reactor, backend).connect(
                _BackendFactory(attempt)
            )
        )
        attempt.deferred = d
        d.addTimeout(factory.connectTimeout, factory.reactor, _timedOut)
        # These may run at once, when the endpoint has already answered.
        d.addCallbacks(
            self._connected,
            self._connectFailed,
            callbackArgs=(attempt,),
            errbackArgs=(attempt,),
        )

    def _connected(self, protocol: _BackendProtocol, attempt: _Attempt) -> None:
        """
        The endpoint connected C{protocol}: wire it to the client.
        """
        if protocol.lost is not None:
            # Made and lost again before the endpoint reported it.
            self._connectFailed(protocol.lost, attempt)
            return
        attempt.adopt(protocol)
        if self._state is not _State.connecting:
            # Only an endpoint whose canceller connects anyway gets here,
            # after the client has gone: close what it made.
            protocol.attach(self, None)
            protocol.transport.loseConnection()
            return
        factory = self.factory
        backend = attempt.backend
        elapsed = factory.reactor.seconds() - attempt.started
        try:
            factory.pool.observeLatency(backend, elapsed)
        except Exception:
            # A strategy plugin's bug must not leave the client hanging.
            self._log.failure(
                "listener {listener}: pool {pool} failed to record a latency",
                level=LogLevel.error,
                **self._fields(pool=factory.pool.name),
            )
        self._log.debug(
            "listener {listener}: {client} connected to backend {backend} "
            "in {elapsed:.3f}s",
            **self._fields(backend=backend.name, elapsed=elapsed),
        )
        self._state = _State.relaying
        client = self.transport
        backendTransport = protocol.transport
        self._backendTransport = backendTransport
        self._toBackend = backendTransport.write
        _setNoDelay(backendTransport)
        # Wire the two transports together as each other's streaming
        # producer: a side that cannot write fast enough pauses reading on
        # the other, so neither direction is buffered without bound here.
        backendTransport.registerProducer(client, True)
        self._clientFeedsBackend = True
        client.registerProducer(backendTransport, True)
        self._backendFeedsClient = True
        if self._early:
            early = b"".join(self._early)
            self._early = []
            self._earlyLength = 0
            self.dataReceived(early)
        self._startIdleTimer()
        protocol.attach(self, client.write if self._state is _State.relaying else None)
        if self._state is not _State.relaying:
            return
        if self._clientReadDone:
            # The client sent EOF while it was meant to be paused.
            self._propagateClientEOF()
        else:
            client.resumeProducing()

    def _connectFailed(self, reason: Failure, attempt: _Attempt) -> None:
        """
        The attempt failed, timed out or was given up: release it, and try
        another backend unless the client is going.
        """
        attempt.end()
        self._attempt = None
        if self._state is not _State.connecting:
            self._maybeFinished()
            return
        factory = self.factory
        backend = attempt.backend
        message = reason.getErrorMessage()
        backend.recordFailure(message)
        factory.connectFailures[backend.name] = (
            factory.connectFailures.get(backend.name, 0) + 1
        )
        text = (
            "listener {listener}: connect to backend {backend} for {client} "
            "failed: {reason}"
        )
        fields = self._fields(backend=backend.name, reason=message)
        if reason.check(*_NETWORK_ERRORS):
            self._log.warn(text, **fields)
        else:
            self._log.failure(text, reason, LogLevel.error, **fields)
        self._connectNext()

    def _noBackend(self) -> None:
        """
        No backend is left to try: close the client connection.
        """
        factory = self.factory
        factory.noBackend += 1
        self._log.warn(
            "listener {listener}: no usable backend for {client} (tried: {tried})",
            **self._fields(tried=", ".join(b.name for b in self._tried) or "none"),
        )
        self._closing()
        self.transport.loseConnection()

    def _hold(self, data: bytes) -> None:
        """
        Keep bytes a client sent before its backend is connected.
        """
        self._early.append(data)
        self._earlyLength += len(data)
        if self._earlyLength > EARLY_DATA_LIMIT:
            self._log.warn(
                "listener {listener}: {client} sent {count} bytes before a "
                "backend was connected; closing it",
                **self._fields(count=self._earlyLength),
            )
            self._abort()

    # Relaying

    def _closing(self) -> None:
        """
        Enter the closing state: from now on the bytes either leg reads are
        dropped.
        """
        self._state = _State.closing
        self._toBackend = None
        attempt = self._attempt
        if attempt is not None and attempt.protocol is not None:
            attempt.protocol.stopForwarding()

    def _propagateClientEOF(self) -> None:
        """
        The client sent EOF while relaying: pass it on to the backend.
        """
        if self._clientFeedsBackend:
            self._clientFeedsBackend = False
            self._backendTransport.unregisterProducer()
        if self._backendReadDone:
            self._closeBoth()
        else:
            _halfClose(self._backendTransport)

    def _backendEOF(self) -> None:
        """
        The backend will send no more: shut the client's write side.
        """
        if self._backendReadDone:
            return
        self._backendReadDone = True
        if self._state is not _State.relaying:
            return
        if self._backendFeedsClient:
            self._backendFeedsClient = False
            self.transport.unregisterProducer()
        if self._clientReadDone:
            self._closeBoth()
        else:
            _halfClose(self.transport)

    def _backendLost(self, attempt: _Attempt, reason: Failure) -> None:
        """
        The backend leg is gone: release it and close the client leg after
        what it has buffered.
        """
        if not reason.check(error.ConnectionDone):
            self._log.info(
                "listener {listener}: backend {backend} connection of {client} "
                "lost: {reason}",
                **self._fields(
                    backend=attempt.backend.name, reason=reason.getErrorMessage()
                ),
            )
        self._closing()
        self._unwire()
        self._backendTransport = None
        attempt.end()
        self._attempt = None
        if not self._clientGone:
            self.transport.loseConnection()
        self._maybeFinished()

    def _unwire(self) -> None:
        """
        Undo the producer registrations still in place.

        A transport asked to close while a paused producer is registered
        waits for that producer forever; so every close unregisters first.
        """
        if self._clientFeedsBackend:
            self._clientFeedsBackend = False
            self._backendTransport.unregisterProducer()
        if self._backendFeedsClient:
            self._backendFeedsClient = False
            self.transport.unregisterProducer()

    def _closeBoth(self) -> None:
        """
        Both directions are done: close both legs after their buffers.
        """
        self._closing()
        self._unwire()
        self.transport.loseConnection()
        self._backendTransport.loseConnection()

    def _abort(self) -> None:
        """
        Close everything now, dropping what is buffered.
        """
        if self._state in (_State.closed, _State.shed):
            return
        self._closing()
        attempt = self._attempt
        if attempt is not None:
            if attempt.state is _AttemptState.connecting:
                attempt.deferred.cancel()
            else:
                self._unwire()
                _abort(self._backendTransport)
        if not self._clientGone:
            _abort(self.transport)

    # Idle timeout

    def _startIdleTimer(self) -> None:
        """
        Start watching for a connection on which nothing moves.
        """
        idleTimeout = self.factory.idleTimeout
        if idleTimeout is None:
            return
        self._movedAtCheck = self.bytesIn + self.bytesOut
        self._idleCall = self.factory.reactor.callLater(idleTimeout, self._idleCheck)

    def _idleCheck(self) -> None:
        """
        Abort the connection if no byte moved either way since the last
        look, one idle timeout ago; else look again one idle timeout later.

        The data path reads no clock and touches no timer: this compares the
        byte counts instead.  So a connection is closed after between one
        and two idle timeouts without traffic: one if it went quiet just
        before a look, nearly two if just after.  (A connection on which
        nothing ever moved is closed after exactly one.)  An abort, not a
        graceful close: bytes that could not move for that long would keep
        a graceful close waiting just as long again.
        """
        factory = self.factory
        idleTimeout = factory.idleTimeout
        moved = self.bytesIn + self.bytesOut
        if moved != self._movedAtCheck:
            self._movedAtCheck = moved
            self._idleCall = factory.reactor.callLater(idleTimeout, self._idleCheck)
            return
        self._idleCall = None
        factory.idleTimeouts += 1
        backend = self._attempt.backend.name if self._attempt is not None else None
        self._log.info(
            "listener {listener}: {client} (backend {backend}) idle for "
            "{timeout}s; closing",
            **self._fields(backend=backend, timeout=idleTimeout),
        )
        self._abort()

    # The end

    def _maybeFinished(self) -> None:
        """
        When both legs are gone, release the listener slot.
        """
        if (
            self._clientGone
            and self._attempt is None
            and self._state is not _State.closed
        ):
            self._state = _State.closed
            if self._idleCall is not None:
                if self._idleCall.active():
                    self._idleCall.cancel()
                self._idleCall = None
            self.factory._relayFinished(self)

    def _fields(self, **more: object) -> dict[str, object]:
        """
        The fields every log line of this connection has, and C{more}.
        """
        return dict(
            listener=self.factory.listenerName,
            client=_describe(self.transport.getPeer()),
            **more,
        )

    def _logClosed(self, reason: Failure) -> None:
        """
        One line when the client connection ends.
        """
        fields = self._fields(
            bytesIn=self.bytesIn,
            bytesOut=self.bytesOut,
            reason=reason.getErrorMessage(),
        )
        text = (
            "listener {listener}: {client} closed ({bytesIn} bytes in, "
            "{bytesOut} bytes out): {reason}"
        )
        if reason.check(error.ConnectionDone):
            self._log.debug(text, **fields)
        else:
            self._log.info(text, **fields)
