"""
The layer 4 relay: each client connection is spliced to one backend connection.

A L{TCPRelayFactory} serves one listener.  For every client connection it
builds a protocol that, in order:

  1. takes a slot from the listener's L{ConnectionLimit}, or closes the
     connection at once (it is I{shed});
  2. stops reading from the client, asks the pool to pick a backend and
     connects to it through an endpoint, under a connect timeout kept by the
     injected reactor;
  3. on a failed or timed-out connect, records the failure on that backend
     and tries another one (each backend at most once per client connection,
     and always before any byte is forwarded); when none is left, closes the
     client connection;
  4. once connected, makes each transport the other's streaming producer, so
     that a slow reader on either side pauses the writer on the other instead
     of letting txlb buffer, and starts reading from the client;
  5. relays bytes and half-closes (a read EOF on one side shuts the write side
     of the other) until both directions are done, one side goes away, or
     nothing has moved for the idle timeout (see L{_ClientProtocol._idleCheck}
     for how closely it is kept).

Every backend connection attempt is counted on its backend with
L{Backend.acquire} when it starts and L{Backend.release} exactly once when it
fails or its connection ends, whatever order the events arrive in.

The listener's factory is here, the client leg in
L{txlb.protocols._tcprelay}, and the backend leg (the connect attempt and
the protocol of the backend connection) in L{txlb.protocols._backendleg};
neither imports this module.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ServerFactory

from txlb.limits import ConnectionLimit
from txlb.pool import Backend, Pool
from txlb.protocols._backendleg import (
    EARLY_DATA_LIMIT,
)
from txlb.protocols._tcprelay import _ClientProtocol, backendEndpoint

__all__ = ["EARLY_DATA_LIMIT", "TCPRelayFactory", "backendEndpoint"]


class TCPRelayFactory(ServerFactory):
    """
    The factory of one L4 listener: relays each client connection to a
    backend of one pool.

    @ivar pool: the L{Pool} backends are picked from.
    @ivar reactor: the reactor used for every timer and connect.
    @ivar connectTimeout: seconds to wait for a backend connection.
    @ivar idleTimeout: seconds without a byte either way after which a
        connection is closed (within twice that: see
        L{_ClientProtocol._idleCheck}), or C{None} for no limit.
    @ivar listenerName: the listener's name, for logs and counters.
    @ivar endpointForBackend: C{(reactor, backend) -> IStreamClientEndpoint}.
    @ivar noBackend: client connections closed because no backend was
        usable or every usable one failed to connect.
    @ivar connectFailures: C{{backend name: count}} of failed or timed out
        connect attempts.
    @ivar idleTimeouts: connections closed by the idle timeout.
    @ivar rateLimit: the per-client rate limit of new connections, or
        C{None}.
    @ivar rateLimited: connections closed at once for being over it.
    @ivar queueRefused: connections closed because the pool's queue was
        full or their wait in it timed out.
    """

    noisy = False

    def __init__(
        self,
        pool: Pool,
        reactor: Any,
        *,
        connectTimeout: float = 5.0,
        idleTimeout: float | None = None,
        maxConnections: int | None = None,
        listenerName: str = "default",
        endpointForBackend: Callable[
            [Any, Backend], IStreamClientEndpoint
        ] = backendEndpoint,
        rateLimit: Any = None,
    ) -> None:
        """
        @param pool: the L{Pool} to relay to.
        @param reactor: provider of L{IReactorTime} and whatever the
            endpoints need (L{IReactorTCP} for the default one).
        @param connectTimeout: seconds to wait for a backend connection.
        @param idleTimeout: seconds without traffic before a connection is
            closed; C{None} never closes an idle connection.
        @param maxConnections: client connections held at once by this
            listener; more are shed.  C{None} is unlimited.
        @param listenerName: the listener's name in logs.
        @param endpointForBackend: makes the endpoint for a backend; the
            default parses C{backend.endpoint} with C{clientFromString}.
        @param rateLimit: a L{txlb.ratelimit.TokenBucketTable} of new
            connections per client address, or C{None}.
        @raise ValueError: a timeout is not positive, or C{maxConnections}
            is negative.
        """
        if not connectTimeout > 0:
            raise ValueError(f"connectTimeout must be positive: {connectTimeout!r}")
        if idleTimeout is not None and not idleTimeout > 0:
            raise ValueError(f"idleTimeout must be positive: {idleTimeout!r}")
        self.pool = pool
        self.reactor = reactor
        self.connectTimeout = connectTimeout
        self.idleTimeout = idleTimeout
        self.listenerName = listenerName
        self.endpointForBackend = endpointForBackend
        self.noBackend = 0
        self.rateLimit = rateLimit
        self.rateLimited = 0
        self.queueRefused = 0
        self.connectFailures: dict[str, int] = {}
        self.idleTimeouts = 0
        # The bytes of finished connections; those of open ones are on them.
        self._finishedBytesIn = 0
        self._finishedBytesOut = 0
        self._limit = ConnectionLimit(maxConnections)
        self._relays: set[_ClientProtocol] = set()

    @property
    def maxConnections(self) -> int | None:
        """
        The listener-wide connection limit (C{None}: unlimited); settable at
        run time.
        """
        return self._limit.maximum

    @maxConnections.setter
    def maxConnections(self, value: int | None) -> None:
        self._limit.maximum = value

    @property
    def bytesIn(self) -> int:
        """
        Bytes relayed from clients to backends.

        Each connection counts its own bytes (one counter on the data path,
        not two); this adds them up, in time proportional to the connections
        open.
        """
        return self._finishedBytesIn + sum(relay.bytesIn for relay in self._relays)

    @property
    def bytesOut(self) -> int:
        """
        Bytes relayed from backends to clients; see L{bytesIn}.
        """
        return self._finishedBytesOut + sum(relay.bytesOut for relay in self._relays)

    @property
    def activeCount(self) -> int:
        """
        Client connections admitted and not yet finished (a connection is
        finished when its client and backend legs are both gone).
        """
        return self._limit.active

    @property
    def accepted(self) -> int:
        """
        Client connections ever admitted (shed ones are not counted).
        """
        return self._limit.admitted

    @property
    def shed(self) -> int:
        """
        Client connections closed at once because the listener was full.
        """
        return self._limit.shed

    def reconfigure(self, other: TCPRelayFactory) -> None:
        """
        Take the settings of C{other}, a factory built from a reloaded
        configuration: connections accepted from now on use them.  Open
        connections, counters and the connection limit's count stay.
        """
        self.pool = other.pool
        self.connectTimeout = other.connectTimeout
        self.idleTimeout = other.idleTimeout
        self.listenerName = other.listenerName
        self.endpointForBackend = other.endpointForBackend
        self.rateLimit = other.rateLimit
        self._limit.maximum = other._limit.maximum

    def buildProtocol(self, addr: IAddress) -> _ClientProtocol:
        """
        Build the protocol for one client connection.
        """
        return _ClientProtocol(self)

    def drained(self) -> Deferred[None]:
        """
        Wait until every admitted connection has finished.

        For graceful shutdown: stop listening first, then wait on this
        (perhaps with a deadline, then L{abortAll}).

        @return: a L{Deferred} firing with C{None} when C{activeCount} is 0,
            at once if it already is.  Cancelling it only stops the wait.
        """
        return self._limit.drained()

    def abortAll(self) -> None:
        """
        Close every connection of this listener now, dropping buffered
        bytes, and give up the connect attempts in flight.
        """
        for relay in list(self._relays):
            relay._abort()

    def _relayFinished(self, relay: _ClientProtocol) -> None:
        """
        Both legs of C{relay} are gone: free its slot.
        """
        self._relays.discard(relay)
        self._finishedBytesIn += relay.bytesIn
        self._finishedBytesOut += relay.bytesOut
        self._limit.release()
