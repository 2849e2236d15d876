"""
The backend leg of the layer 4 relay: one connection attempt to one backend,
and the protocol that holds that backend connection.

L{txlb.protocols.tcp} drives these for each client connection.  This module
never imports it: a backend leg hands its events (bytes, EOF, loss) to the
relay object given to L{_BackendProtocol.attach}, which provides L{_Relay}.

Also here: the transport helpers both legs use, and how a connect attempt
fails (its timeout, and which failures are the network's doing).
"""

from __future__ import annotations

import enum
import typing
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    ISSLTransport,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txlb.pool import Backend

# The most bytes held for one connection while its other side is not there
# yet.  A transport that honours pauseProducing delivers none; a wrapper (the
# PROXY protocol parser, TLS) may deliver what it had already read.
EARLY_DATA_LIMIT = 64 * 1024

# Connect failures that are the network's doing: logged as one line, no
# traceback.  Anything else is a bug or a bad endpoint and gets a traceback.
_NETWORK_ERRORS = (
    error.ConnectError,
    error.ConnectingCancelledError,
    error.DNSLookupError,
    error.ConnectionClosed,
    CancelledError,
    OSError,
)

# The log namespace of L{_BackendProtocol}: the relay's, so that one prefix,
# C{txlb.protocols.tcp}, still selects every event of the L4 relay.
_LOG_NAMESPACE = "txlb.protocols.tcp._BackendProtocol"


def _setNoDelay(transport: ITransport) -> None:
    """
    Turn on C{TCP_NODELAY} when C{transport} runs over TCP.

    A relay forwards what it reads at once; Nagle's algorithm would hold
    small writes back for an ACK.  UNIX sockets have no such option (and
    Twisted logs an error when asked to set it), hence the address check.
    """
    setNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setNoDelay is not None and isinstance(
        transport.getHost(), (IPv4Address, IPv6Address)
    ):
        setNoDelay(True)


def _halfClose(transport: Any) -> None:
    """
    Shut the write side of C{transport}; close it whole when it cannot.

    Twisted's TLS transport cannot shut one direction (and would pass
    C{loseWriteConnection} through to the TCP transport below it, cutting
    the TLS stream short), so a TLS leg is closed whole after its data.
    """
    loseWrite = getattr(transport, "loseWriteConnection", None)
    if loseWrite is None or ISSLTransport.providedBy(transport):
        transport.loseConnection()
    else:
        loseWrite()


def _abort(transport: Any) -> None:
    """
    Close C{transport} now, dropping whatever it has buffered.
    """
    abort = getattr(transport, "abortConnection", None)
    if abort is None:
        transport.loseConnection()
    else:
        abort()


def _timedOut(result: object, timeout: float) -> object:
    """
    Turn the outcome of a connect attempt cancelled by its timeout into an
    L{error.TimeoutError}, whatever failure the endpoint's canceller gave.
    """
    if isinstance(result, Failure):
        raise error.TimeoutError(string=f"no connection within {timeout} seconds")
    return result


class _Relay(typing.Protocol):
    """
    What a backend leg hands its events to once the relay takes it on: the
    client leg of L{txlb.protocols.tcp}.
    """

    def _fromBackend(self, data: bytes) -> None:
        """
        Relay backend bytes to the client.
        """

    def _backendEOF(self) -> None:
        """
        The backend will send no more.
        """

    def _backendLost(self, attempt: _Attempt, reason: Failure) -> None:
        """
        The backend leg of C{attempt} is gone.
        """


class _AttemptState(enum.Enum):
    """
    Where one backend connection attempt is.

    @cvar connecting: the endpoint has not reported yet.
    @cvar connected: its connection was taken on by the relay.
    @cvar ended: it failed, or its connection was lost; it was released.
    """

    connecting = "connecting"
    connected = "connected"
    ended = "ended"


class _Attempt:
    """
    One connection attempt to one backend for one client connection.  It
    owns the backend's C{acquire}/C{release} pair: acquired when made,
    released when it ends.

    @ivar backend: the L{Backend} being connected to.
    @ivar started: C{reactor.seconds()} when the attempt started.
    @ivar state: an L{_AttemptState}.
    @ivar deferred: the endpoint's L{Deferred}, under the connect timeout.
    @ivar protocol: the L{_BackendProtocol} taken on by the relay, or C{None}.
    @ivar built: every L{_BackendProtocol} the endpoint built for it.
    """

    def __init__(self, backend: Backend, started: float) -> None:
        self.backend = backend
        self.started = started
        self.state = _AttemptState.connecting
        self.deferred: Deferred[Any] | None = None
        self.protocol: _BackendProtocol | None = None
        self.built: list[_BackendProtocol] = []
        backend.acquire()

    def adopt(self, protocol: _BackendProtocol) -> None:
        """
        The endpoint reported C{protocol} connected, and the relay takes it.
        """
        self.state = _AttemptState.connected
        self.protocol = protocol

    def end(self) -> None:
        """
        The attempt failed or its connection ended: release the backend, and
        abort any other connection the endpoint made for it.

        @raise RuntimeError: it had already ended.
        """
        if self.state is _AttemptState.ended:
            raise RuntimeError(f"attempt to {self.backend.name} ended twice")
        self.state = _AttemptState.ended
        self.backend.release()
        for stray in self.built:
            if stray is not self.protocol and stray.connected and stray.lost is None:
                _abort(stray.transport)


class _BackendFactory(Factory):
    """
    Builds the backend-side protocol of one attempt for its endpoint.
    """

    noisy = False

    def __init__(self, attempt: _Attempt) -> None:
        self._attempt = attempt

    def buildProtocol(self, addr: IAddress) -> _BackendProtocol:
        """
        Build a L{_BackendProtocol} for the attempt.
        """
        protocol = _BackendProtocol(self._attempt)
        protocol.factory = self
        self._attempt.built.append(protocol)
        return protocol


@implementer(IHalfCloseableProtocol)
class _BackendProtocol(Protocol):
    """
    The backend leg of a relayed connection.

    Until the relay takes it on (when the endpoint's L{Deferred} fires) it
    holds what arrives, so that nothing reaches the client from a connection
    the relay may still give up; after that it hands every event to the
    relay.

    @ivar lost: the reason its connection was lost before the relay took it
        on, else C{None}.
    @ivar readDone: the backend sent EOF before the relay took it on.
    """

    @property
    def _log(self) -> Logger:
        """
        The logger of this leg.

        C{Logger()} as a class attribute would name it after this module;
        its events keep the namespace they had when this class lived in
        L{txlb.protocols.tcp}, where the relay's log prefix selects them.
        Like that descriptor, this makes a new L{Logger} on each use.
        """
        return Logger(namespace=_LOG_NAMESPACE, source=self)

    def __init__(self, attempt: _Attempt) -> None:
        self._attempt = attempt
        self._relay: _Relay | None = None
        self._pending: list[bytes] = []
        self._pendingLength = 0
        self.readDone = False
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        """
        Abort a connection made after its attempt was given up (by an
        endpoint that could not cancel): nobody wants it.
        """
        if self._attempt.state is _AttemptState.ended:
            _abort(self.transport)

    def attach(self, relay: _Relay) -> None:
        """
        Hand this leg to C{relay}, with what arrived before.
        """
        self._relay = relay
        pending, self._pending = self._pending, []
        self._pendingLength = 0
        for data in pending:
            relay._fromBackend(data)
        if self.readDone:
            relay._backendEOF()

    def dataReceived(self, data: bytes) -> None:
        """
        Pass backend bytes to the relay, or hold them until it is there.
        """
        relay = self._relay
        if relay is not None:
            relay._fromBackend(data)
            return
        self._pending.append(data)
        self._pendingLength += len(data)
        if self._pendingLength > EARLY_DATA_LIMIT:
            self._log.warn(
                "backend {backend} sent {count} bytes before its connection "
                "was reported; closing it",
                backend=self._attempt.backend.name,
                count=self._pendingLength,
            )
            _abort(self.transport)

    def readConnectionLost(self) -> None:
        """
        The backend will send no more: tell the relay, or remember it.
        """
        relay = self._relay
        if relay is not None:
            relay._backendEOF()
        else:
            self.readDone = True

    def writeConnectionLost(self) -> None:
        """
        Our write side to the backend is shut; nothing more to do.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Tell the relay this leg is gone, or remember it.
        """
        relay = self._relay
        if relay is not None:
            self._relay = None
            relay._backendLost(self._attempt, reason)
        else:
            self.lost = reason
