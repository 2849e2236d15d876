"""
Tests for L{txlb.protocols.tcp}, the L4 relay, and L{txlb.limits}.

Almost everything runs in memory on a L{MemoryReactorClock}: client and
backend legs are L{FakeTCPTransport}s whose events the tests deliver in
chosen orders, or real protocols pumped over iosim.  L{LoopbackRelayTests}
relays real connections on 127.0.0.1, on txlb's reactor and on Twisted's
epoll reactor, for what only real TCP transports do.
"""

from __future__ import annotations

import itertools

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.error import (
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IProtocolFactory,
    IReactorTCP,
    ISSLTransport,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.test.reactormixins import ReactorBuilder, needsRunningReactor
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides, implementer
from zope.interface.verify import verifyObject

from txlb.interfaces import ILatencyObserver, IStrategy
from txlb.limits import ConnectionLimit
from txlb.pool import AdminState, Backend, Pool
from txlb.protocols._backendleg import _BackendProtocol
from txlb.protocols.tcp import EARLY_DATA_LIMIT, TCPRelayFactory, backendEndpoint
from txlb.test.helpers import (
    CLIENT_ADDRESS,
    FakeNetwork,
    FakeTCPTransport,
    connectClient,
    connectOverIOSim,
    flushAll,
)


@implementer(IStrategy)
class RoundRobin:
    """
    The simplest strategy: the next candidate in turn.  Records each
    context it is given.
    """

    def __init__(self) -> None:
        self.picks = 0
        self.contexts: list[object] = []

    def choose(self, candidates, context):
        """
        The candidate at the pick count, modulo the candidates.
        """
        self.contexts.append(context)
        chosen = candidates[self.picks % len(candidates)]
        self.picks += 1
        return chosen


@implementer(IStrategy)
class BrokenStrategy:
    """
    A strategy plugin with a bug.
    """

    def choose(self, candidates, context):
        """
        Fail.
        """
        raise ZeroDivisionError("broken strategy")


@implementer(IStrategy, ILatencyObserver)
class BrokenLatencyObserver(RoundRobin):
    """
    A strategy whose latency observer has a bug.
    """

    def latencyObserved(self, backend, seconds):
        """
        Fail.
        """
        raise ZeroDivisionError("broken observer")


@implementer(IStreamClientEndpoint)
class RefusingEndpoint:
    """
    An endpoint whose connects fail before C{connect} returns.
    """

    def connect(self, protocolFactory):
        """
        Refuse at once.
        """
        return fail(ConnectionRefusedError())


class NoHalfCloseTransport(FakeTCPTransport):
    """
    A transport that cannot shut one direction (as if C{loseWriteConnection}
    were missing: the relay looks the method up and finds none).
    """

    loseWriteConnection = None


class Collector(Protocol):
    """
    A client or server protocol that keeps what it receives.

    @ivar received: the bytes received.
    @ivar reason: why the connection ended, once it has.
    """

    def __init__(self) -> None:
        self.received = b""
        self.reason = None

    def dataReceived(self, data):
        """
        Keep C{data}.
        """
        self.received += data

    def connectionLost(self, reason):
        """
        Keep C{reason}.
        """
        self.reason = reason


class Echo(Collector):
    """
    A backend that sends back what it receives.
    """

    def dataReceived(self, data):
        """
        Keep and echo C{data}.
        """
        Collector.dataReceived(self, data)
        self.transport.write(data)


def makeBackend(name: str, port: int, **kwargs) -> Backend:
    """
    A TCP backend on 127.0.0.1.
    """
    return Backend(
        name=name,
        address="127.0.0.1",
        port=port,
        endpoint=f"tcp:host=127.0.0.1:port={port}:timeout=5",
        **kwargs,
    )


class RelayTestMixin:
    """
    A pool of three backends (a, b, c) behind L{RoundRobin}, on a
    L{MemoryReactorClock}, reached through a L{FakeNetwork}.
    """

    def setUp(self) -> None:
        """
        Build the reactor, pool and network.
        """
        self.reactor = MemoryReactorClock()
        self.strategy = RoundRobin()
        self.a = makeBackend("a", 3000)
        self.b = makeBackend("b", 3001)
        self.c = makeBackend("c", 3002)
        self.pool = Pool(
            name="web",
            algorithm="test_round_robin",
            strategy=self.strategy,
            clock=self.reactor,
            backends=[self.a, self.b, self.c],
        )
        self.network = FakeNetwork()

    def makeFactory(self, **kwargs) -> TCPRelayFactory:
        """
        A relay factory on the test pool and network.
        """
        kwargs.setdefault("endpointForBackend", self.network.endpointForBackend)
        return TCPRelayFactory(self.pool, self.reactor, listenerName="web", **kwargs)

    def relay(self, factory: TCPRelayFactory):
        """
        Accept a client and connect its first backend attempt.

        @return: client protocol, client transport, backend protocol,
            backend transport.
        """
        client, clientTransport = connectClient(factory)
        backend, backendTransport = self.network.attempts[-1].succeed()
        return client, clientTransport, backend, backendTransport

    def assertAllReleased(self, factory: TCPRelayFactory) -> None:
        """
        No connection is counted anywhere and no timer is left.
        """
        self.assertEqual(
            [(b.name, b.activeConnections) for b in self.pool.backends],
            [(b.name, 0) for b in self.pool.backends],
        )
        self.assertEqual(factory.activeCount, 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.successResultOf(factory.drained())


class FactoryTests(RelayTestMixin, SynchronousTestCase):
    """
    L{TCPRelayFactory} construction, interfaces and the default endpoint.
    """

    def test_interfaces(self) -> None:
        """
        The factory is a protocol factory and both legs are half-closeable
        protocols.
        """
        factory = self.makeFactory()
        verifyObject(IProtocolFactory, factory)
        client, _, backend, _ = self.relay(factory)
        verifyObject(IHalfCloseableProtocol, client)
        verifyObject(IHalfCloseableProtocol, backend)
        verifyObject(
            IStreamClientEndpoint, self.network.endpointForBackend(None, self.a)
        )

    def test_defaults(self) -> None:
        """
        The connect timeout defaults to 5 seconds; there is no idle timeout,
        no connection limit, and every counter starts at 0.
        """
        factory = TCPRelayFactory(self.pool, self.reactor)
        self.assertEqual(factory.connectTimeout, 5.0)
        self.assertIsNone(factory.idleTimeout)
        self.assertIsNone(factory.maxConnections)
        self.assertEqual(factory.listenerName, "default")
        self.assertIs(factory.endpointForBackend, backendEndpoint)
        self.assertEqual(
            (
                factory.accepted,
                factory.activeCount,
                factory.shed,
                factory.noBackend,
                factory.connectFailures,
                factory.bytesIn,
                factory.bytesOut,
                factory.idleTimeouts,
            ),
            (0, 0, 0, 0, {}, 0, 0, 0),
        )

    def test_invalidSettings(self) -> None:
        """
        Timeouts must be positive and the connection limit not negative.
        """
        for kwargs in [
            dict(connectTimeout=0),
            dict(connectTimeout=-1),
            dict(idleTimeout=0),
            dict(maxConnections=-1),
        ]:
            self.assertRaises(ValueError, self.makeFactory, **kwargs)
        factory = self.makeFactory()
        with self.assertRaises(ValueError):
            factory.maxConnections = -1

    def test_backendEndpointParsesEndpointString(self) -> None:
        """
        L{backendEndpoint} connects where the backend's endpoint string says.
        """
        endpoint = backendEndpoint(self.reactor, self.b)
        endpoint.connect(Factory.forProtocol(Collector))
        host, port, _, timeout, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 3001, 5))

    def test_defaultEndpointRelays(self) -> None:
        """
        Without C{endpointForBackend}, the relay connects with TCP to the
        backend's endpoint string and relays once that connection is made.
        """
        factory = TCPRelayFactory(self.pool, self.reactor, listenerName="web")
        _, clientTransport = connectClient(factory)
        host, port, wrapping, _, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 3000))
        self.assertEqual(clientTransport.producerState, "paused")
        backendTransport = FakeTCPTransport()
        backendTransport.connectProtocol(wrapping.buildProtocol(None))
        self.assertEqual(clientTransport.producerState, "producing")
        self.assertIs(clientTransport.producer, backendTransport)
        backendTransport.protocol.dataReceived(b"hello")
        self.assertEqual(clientTransport.value(), b"hello")

    def test_defaultEndpointCancelledWhenClientLeaves(self) -> None:
        """
        With the TCP endpoint, a client leaving during the connect stops the
        connector.
        """
        factory = TCPRelayFactory(self.pool, self.reactor, listenerName="web")
        _, clientTransport = connectClient(factory)
        connector = self.reactor.connectors[0]
        self.assertFalse(connector.stoppedConnecting)
        clientTransport.deliverLoss()
        self.assertTrue(connector.stoppedConnecting)
        self.assertAllReleased(factory)

    def test_defaultEndpointTimeoutFailsOver(self) -> None:
        """
        With the TCP endpoint, the connect timeout stops the connector,
        records a timeout on the backend and connects to another one.
        """
        factory = TCPRelayFactory(
            self.pool, self.reactor, listenerName="web", connectTimeout=2
        )
        connectClient(factory)
        self.reactor.advance(2)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertNotEqual(self.reactor.tcpClients[1][1], 3000)
        self.assertEqual(self.a.failures, 1)
        self.assertIn("no connection within 2 seconds", self.a.lastFailureReason)


class ConnectTests(RelayTestMixin, SynchronousTestCase):
    """
    Choosing a backend and connecting to it.
    """

    def test_clientPausedUntilConnected(self) -> None:
        """
        Nothing is read from the client until its backend connection is up;
        then it is.
        """
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        self.assertEqual(clientTransport.producerState, "paused")
        self.assertEqual(len(self.network.attempts), 1)
        self.network.attempts[0].succeed()
        self.assertEqual(clientTransport.producerState, "producing")

    def test_pickGetsClientAddress(self) -> None:
        """
        The pool is asked with the client's address.
        """
        connectClient(self.makeFactory())
        self.assertEqual(self.strategy.contexts[0].clientAddress, CLIENT_ADDRESS)
        self.assertEqual(self.strategy.contexts[0].clientHost, "203.0.113.7")

    def test_acquireAtConnectStart(self) -> None:
        """
        The backend counts the connection as soon as the connect starts.
        """
        connectClient(self.makeFactory())
        self.assertEqual(self.a.activeConnections, 1)
        self.assertEqual(self.a.totalConnections, 1)

    def test_producersBothWays(self) -> None:
        """
        Once connected, each transport is the other's streaming producer.
        """
        _, clientTransport, _, backendTransport = self.relay(self.makeFactory())
        self.assertIs(clientTransport.producer, backendTransport)
        self.assertTrue(clientTransport.streaming)
        self.assertIs(backendTransport.producer, clientTransport)
        self.assertTrue(backendTransport.streaming)

    def test_slowBackendPausesClient(self) -> None:
        """
        A backend transport that pauses its producer pauses reading from the
        client, and resumes it.
        """
        _, clientTransport, _, backendTransport = self.relay(self.makeFactory())
        backendTransport.producer.pauseProducing()
        self.assertEqual(clientTransport.producerState, "paused")
        self.assertEqual(backendTransport.producerState, "producing")
        backendTransport.producer.resumeProducing()
        self.assertEqual(clientTransport.producerState, "producing")

    def test_slowClientPausesBackend(self) -> None:
        """
        A client transport that pauses its producer pauses reading from the
        backend, and resumes it.
        """
        _, clientTransport, _, backendTransport = self.relay(self.makeFactory())
        clientTransport.producer.pauseProducing()
        self.assertEqual(backendTransport.producerState, "paused")
        self.assertEqual(clientTransport.producerState, "producing")
        clientTransport.producer.resumeProducing()
        self.assertEqual(backendTransport.producerState, "producing")

    def test_noDelayBothLegs(self) -> None:
        """
        C{TCP_NODELAY} is turned on for the client and the backend.
        """
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        self.assertIs(clientTransport.noDelay, True)
        _, backendTransport = self.network.attempts[0].succeed()
        self.assertIs(backendTransport.noDelay, True)

    def test_noDelayOnlyOverTCP(self) -> None:
        """
        A connection over a UNIX socket is not asked for C{TCP_NODELAY}.
        """
        _, clientTransport = connectClient(
            self.makeFactory(), host=UNIXAddress(b"/run/txlb.sock")
        )
        self.assertIsNone(clientTransport.noDelay)

    def test_bytesBothWays(self) -> None:
        """
        Bytes are relayed both ways and counted per connection and per
        listener.
        """
        factory = self.makeFactory()
        client, clientTransport, backend, backendTransport = self.relay(factory)
        client.dataReceived(b"GET /")
        backend.dataReceived(b"200 OK!")
        self.assertEqual(backendTransport.value(), b"GET /")
        self.assertEqual(clientTransport.value(), b"200 OK!")
        self.assertEqual((client.bytesIn, client.bytesOut), (5, 7))
        self.relay(factory)[2].dataReceived(b"x")
        self.assertEqual((factory.bytesIn, factory.bytesOut), (5, 8))

    def test_listenerCountsKeepFinishedConnections(self) -> None:
        """
        The listener's byte counts still include a connection's bytes after
        it has finished.
        """
        factory = self.makeFactory()
        client, clientTransport, backend, backendTransport = self.relay(factory)
        client.dataReceived(b"GET /")
        backend.dataReceived(b"200 OK!")
        clientTransport.deliverLoss()
        backendTransport.deliverLoss()
        self.assertEqual(factory.activeCount, 0)
        self.relay(factory)[0].dataReceived(b"x")
        self.assertEqual((factory.bytesIn, factory.bytesOut), (6, 7))

    def test_bytesWhileClosingDropped(self) -> None:
        """
        Once the relay is closing, bytes either leg still reads are neither
        written to the other nor counted.
        """
        factory = self.makeFactory()
        client, clientTransport, backend, backendTransport = self.relay(factory)
        clientTransport.deliverLoss()
        self.assertTrue(backendTransport.disconnecting)
        backend.dataReceived(b"late answer")
        client.dataReceived(b"late request")
        self.assertEqual(clientTransport.value(), b"")
        self.assertEqual(backendTransport.value(), b"")
        self.assertEqual((client.bytesIn, client.bytesOut), (0, 0))
        self.assertEqual((factory.bytesIn, factory.bytesOut), (0, 0))

    def test_earlyClientBytesForwarded(self) -> None:
        """
        Bytes a client delivers while its backend is connecting (a transport
        that does not honour the pause) are held, then sent first.
        """
        factory = self.makeFactory()
        client, _ = connectClient(factory)
        client.dataReceived(b"early ")
        self.assertEqual(factory.bytesIn, 0)
        _, backendTransport = self.network.attempts[0].succeed()
        client.dataReceived(b"late")
        self.assertEqual(backendTransport.value(), b"early late")
        self.assertEqual(factory.bytesIn, 10)

    def test_earlyClientBytesBounded(self) -> None:
        """
        A client sending more than L{EARLY_DATA_LIMIT} bytes before its
        backend is connected is aborted and its connect given up.
        """
        factory = self.makeFactory()
        client, clientTransport = connectClient(factory)
        client.dataReceived(b"x" * EARLY_DATA_LIMIT)
        self.assertFalse(clientTransport.disconnecting)
        client.dataReceived(b"x")
        self.assertTrue(clientTransport.disconnected)
        self.assertTrue(self.network.attempts[0].cancelled)
        self.assertEqual(self.a.failures, 0)
        clientTransport.deliverLoss()
        self.assertAllReleased(factory)

    def test_earlyBackendBytesForwarded(self) -> None:
        """
        Bytes from a backend connection made but not yet reported by its
        endpoint reach the client once it is.
        """
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        pending = self.network.attempts[0]
        backend, _ = pending.makeProtocol()
        backend.dataReceived(b"220 ready")
        self.assertEqual(clientTransport.value(), b"")
        pending.report(backend)
        self.assertEqual(clientTransport.value(), b"220 ready")
        self.assertEqual(factory.bytesOut, 9)

    def test_earlyBackendBytesBounded(self) -> None:
        """
        A backend sending more than L{EARLY_DATA_LIMIT} bytes before its
        connection is reported is aborted; the relay then tries another.
        """
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        pending = self.network.attempts[0]
        backend, backendTransport = pending.makeProtocol()
        backend.dataReceived(b"x" * (EARLY_DATA_LIMIT + 1))
        self.assertTrue(backendTransport.disconnected)
        backendTransport.deliverLoss()
        pending.report(backend)
        self.assertEqual(clientTransport.value(), b"")
        self.assertEqual(self.network.triedNames(), ["a", "c"])
        self.assertEqual(self.a.activeConnections, 0)

    def test_lostBeforeReportedFailsOver(self) -> None:
        """
        A backend connection lost before its endpoint reports it counts as a
        failed connect: released, recorded, and another backend tried.
        """
        factory = self.makeFactory()
        connectClient(factory)
        pending = self.network.attempts[0]
        backend, backendTransport = pending.makeProtocol()
        backendTransport.deliverLoss(ConnectionLost())
        self.assertEqual(self.a.activeConnections, 1)
        pending.report(backend)
        self.assertEqual(self.a.activeConnections, 0)
        self.assertEqual(self.a.failures, 1)
        self.assertEqual(self.network.triedNames(), ["a", "c"])

    def test_latencyObserved(self) -> None:
        """
        A successful connect reports its duration, read from the injected
        reactor, and clears the backend's run of failures.
        """
        self.a.consecutiveFailures = 2
        connectClient(self.makeFactory())
        self.reactor.advance(0.25)
        self.network.attempts[0].succeed()
        self.assertEqual(self.a.latency, 0.25)
        self.assertEqual(self.a.consecutiveFailures, 0)

    def test_brokenLatencyObserver(self) -> None:
        """
        A strategy failing to take a latency observation does not stop the
        relay; the error is logged.
        """
        self.pool.setStrategy("broken", BrokenLatencyObserver())
        factory = self.makeFactory()
        client, clientTransport, _, backendTransport = self.relay(factory)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(clientTransport.producerState, "producing")
        client.dataReceived(b"still works")
        self.assertEqual(backendTransport.value(), b"still works")

    def test_failoverAfterRefused(self) -> None:
        """
        A refused connect is recorded on that backend, released, and
        another backend is tried while the client stays paused.
        """
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        self.network.attempts[0].fail()
        self.assertEqual(self.network.triedNames(), ["a", "c"])
        self.assertEqual(self.a.failures, 1)
        self.assertIn("refused", self.a.lastFailureReason)
        self.assertEqual(factory.connectFailures, {"a": 1})
        self.assertEqual((self.a.activeConnections, self.c.activeConnections), (0, 1))
        self.assertEqual(clientTransport.producerState, "paused")
        self.assertFalse(clientTransport.disconnecting)
        self.network.attempts[1].succeed()
        self.assertEqual(clientTransport.producerState, "producing")

    def test_failoverAfterTimeout(self) -> None:
        """
        A connect that has not finished within C{connectTimeout} on the
        injected reactor is cancelled, recorded as a timeout, and another
        backend is tried.
        """
        factory = self.makeFactory(connectTimeout=3)
        connectClient(factory)
        self.reactor.advance(2.999)
        self.assertEqual(len(self.network.attempts), 1)
        self.reactor.advance(0.001)
        self.assertTrue(self.network.attempts[0].cancelled)
        self.assertEqual(self.network.triedNames(), ["a", "c"])
        self.assertIn("no connection within 3 seconds", self.a.lastFailureReason)
        self.assertEqual(factory.connectFailures, {"a": 1})
        self.assertEqual(self.a.activeConnections, 0)

    def test_eachBackendTriedOnce(self) -> None:
        """
        When every backend fails, each is tried exactly once, then the
        client is closed and counted as having no backend.
        """
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        self.network.attempts[0].fail()
        self.reactor.advance(5)
        self.network.attempts[2].fail()
        self.assertEqual(sorted(self.network.triedNames()), ["a", "b", "c"])
        self.assertEqual(len(self.network.attempts), 3)
        self.assertEqual(factory.connectFailures, {"a": 1, "b": 1, "c": 1})
        self.assertEqual(factory.noBackend, 1)
        self.assertTrue(clientTransport.disconnecting)
        self.assertEqual(clientTransport.value(), b"")
        clientTransport.deliverLoss()
        self.assertAllReleased(factory)

    def test_noBackendUsable(self) -> None:
        """
        With no usable backend, the client is closed at once, without a
        connect, and counted.
        """
        for backend in self.pool.backends:
            backend.healthy = False
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        self.assertEqual(self.network.attempts, [])
        self.assertTrue(clientTransport.disconnecting)
        self.assertEqual(factory.noBackend, 1)
        self.assertEqual(self.pool.noBackend, 1)
        clientTransport.deliverLoss()
        self.assertAllReleased(factory)

    def test_unusableBackendsSkipped(self) -> None:
        """
        Only usable backends are tried: not draining, disabled or unhealthy
        ones.
        """
        self.a.state = AdminState.draining
        self.b.healthy = False
        factory = self.makeFactory()
        connectClient(factory)
        self.network.attempts[0].fail()
        self.assertEqual(self.network.triedNames(), ["c"])
        self.assertEqual(factory.noBackend, 1)

    def test_fullBackendNotChosen(self) -> None:
        """
        A backend at its C{maxConnections} is not chosen; it is again once a
        connection to it ends.
        """
        self.a.maxConnections = 1
        factory = self.makeFactory()
        _, firstTransport, _, firstBackendTransport = self.relay(factory)
        self.assertEqual(self.network.triedNames(), ["a"])
        connectClient(factory)
        connectClient(factory)
        self.assertEqual(self.network.triedNames(), ["a", "c", "b"])
        firstTransport.deliverLoss()
        firstBackendTransport.deliverLoss()
        self.assertEqual(self.a.activeConnections, 0)
        connectClient(factory)
        self.assertIn("a", self.network.triedNames()[3:])

    def test_synchronousFailures(self) -> None:
        """
        Endpoints that fail before C{connect} returns are handled like any
        other failure.
        """
        factory = self.makeFactory(
            endpointForBackend=lambda reactor, backend: RefusingEndpoint()
        )
        _, clientTransport = connectClient(factory)
        self.assertEqual(factory.connectFailures, {"a": 1, "b": 1, "c": 1})
        self.assertEqual(factory.noBackend, 1)
        self.assertTrue(clientTransport.disconnecting)
        clientTransport.deliverLoss()
        self.assertAllReleased(factory)

    def test_badEndpointFailsOver(self) -> None:
        """
        A backend whose endpoint cannot be made counts as a failed connect,
        logged with its traceback, and another backend is tried.
        """

        def endpointForBackend(reactor, backend):
            if backend.name == "a":
                raise ValueError("bad endpoint string")
            return self.network.endpointForBackend(reactor, backend)

        factory = self.makeFactory(endpointForBackend=endpointForBackend)
        connectClient(factory)
        self.assertEqual(self.network.triedNames(), ["c"])
        self.assertEqual(self.a.failures, 1)
        self.assertEqual(self.a.activeConnections, 0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_brokenStrategy(self) -> None:
        """
        A strategy that raises is logged with its traceback, and the pool
        falls back to its first usable candidate, so the client is served.
        """
        self.pool.setStrategy("broken", BrokenStrategy())
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        self.assertFalse(clientTransport.disconnecting)
        self.assertEqual(self.network.triedNames(), ["a"])
        self.assertEqual(factory.noBackend, 0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.network.attempts[0].fail()
        self.network.attempts[1].fail()
        self.network.attempts[2].fail()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        self.assertTrue(clientTransport.disconnecting)
        clientTransport.deliverLoss()
        self.assertAllReleased(factory)


class LoggingTests(RelayTestMixin, SynchronousTestCase):
    """
    What the relay logs.
    """

    def setUp(self) -> None:
        """
        Also capture every log event.
        """
        RelayTestMixin.setUp(self)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def relayEvents(self):
        """
        The events logged by the relay at info level or above.
        """
        return [
            e
            for e in self.events
            if e.get("log_namespace", "").startswith("txlb.protocols.tcp")
            and e["log_level"] >= LogLevel.info
        ]

    def test_refusedIsOneWarning(self) -> None:
        """
        A refused connect is one warning, with named fields and no
        traceback.
        """
        connectClient(self.makeFactory())
        self.network.attempts[0].fail()
        [event] = self.relayEvents()
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertNotIn("log_failure", event)
        self.assertEqual(
            (event["listener"], event["backend"], event["client"]),
            ("web", "a", "203.0.113.7:40000"),
        )

    def test_timeoutIsOneWarning(self) -> None:
        """
        A connect timeout is one warning with no traceback.
        """
        connectClient(self.makeFactory(connectTimeout=1))
        self.reactor.advance(1)
        [event] = self.relayEvents()
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertNotIn("log_failure", event)
        self.assertIn("no connection within", event["reason"])

    def test_resetIsOneInfoLine(self) -> None:
        """
        A connection reset on either leg is logged as one line at info
        level, without a traceback.
        """
        _, clientTransport, _, backendTransport = self.relay(self.makeFactory())
        backendTransport.deliverLoss(ConnectionLost())
        clientTransport.deliverLoss(ConnectionLost())
        events = self.relayEvents()
        self.assertEqual(
            [e["log_level"] for e in events], [LogLevel.info, LogLevel.info]
        )
        self.assertEqual([e for e in events if "log_failure" in e], [])

    def test_noBackendIsOneWarning(self) -> None:
        """
        Having no backend is one warning naming what was tried.
        """
        for backend in (self.b, self.c):
            backend.healthy = False
        connectClient(self.makeFactory())
        self.network.attempts[0].fail()
        events = self.relayEvents()
        self.assertEqual(len(events), 2)
        self.assertEqual(events[1]["log_level"], LogLevel.warn)
        self.assertEqual(events[1]["tried"], "a")


class AccountingTests(RelayTestMixin, SynchronousTestCase):
    """
    Backend and listener counts are exact whatever order events come in.
    """

    def test_clientLeavesDuringConnect(self) -> None:
        """
        A client leaving during the connect cancels it: released, no failure
        recorded, no other backend tried, no timer left.
        """
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        clientTransport.deliverLoss()
        self.assertTrue(self.network.attempts[0].cancelled)
        self.assertEqual(len(self.network.attempts), 1)
        self.assertEqual(self.a.failures, 0)
        self.assertEqual(factory.connectFailures, {})
        self.assertAllReleased(factory)

    def test_timeoutAfterClientLeft(self) -> None:
        """
        The connect timeout does nothing once the client has left.
        """
        factory = self.makeFactory(connectTimeout=5)
        _, clientTransport = connectClient(factory)
        clientTransport.deliverLoss()
        self.reactor.advance(10)
        self.assertEqual(len(self.network.attempts), 1)
        self.assertEqual(self.a.failures, 0)
        self.assertAllReleased(factory)

    def test_connectFailsThenClientLeaves(self) -> None:
        """
        A failed connect, then the client leaving during the next one:
        both released, only the first recorded as failed.
        """
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        self.network.attempts[0].fail()
        clientTransport.deliverLoss()
        self.assertTrue(self.network.attempts[1].cancelled)
        self.assertEqual((self.a.failures, self.c.failures), (1, 0))
        self.assertEqual(factory.noBackend, 0)
        self.assertAllReleased(factory)

    def test_uncancellableConnectArrivesLate(self) -> None:
        """
        When an endpoint cannot cancel and connects after the client left,
        the connection is aborted and not counted again.
        """
        self.network.onCancel = "uncancellable"
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        clientTransport.deliverLoss()
        self.assertEqual(self.a.activeConnections, 0)
        self.assertEqual(factory.activeCount, 0)
        _, backendTransport = self.network.attempts[0].succeed()
        self.assertTrue(backendTransport.disconnected)
        backendTransport.deliverLoss()
        self.assertEqual(self.a.failures, 0)
        self.assertAllReleased(factory)

    def test_clientLeavesBeforeConnectReported(self) -> None:
        """
        A client leaving after the backend connection was made but before
        the endpoint reported it: that connection is aborted, and counted
        once.
        """
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        _, backendTransport = self.network.attempts[0].makeProtocol()
        clientTransport.deliverLoss()
        self.assertTrue(self.network.attempts[0].cancelled)
        self.assertTrue(backendTransport.disconnected)
        self.assertEqual(self.a.failures, 0)
        backendTransport.deliverLoss()
        self.assertAllReleased(factory)

    def test_timedOutConnectArrivesLate(self) -> None:
        """
        A connection made after its attempt timed out (by an endpoint that
        cannot cancel) is aborted; the relay goes on with the next backend.
        """
        self.network.onCancel = "uncancellable"
        factory = self.makeFactory(connectTimeout=1)
        _, clientTransport = connectClient(factory)
        self.reactor.advance(1)
        self.assertEqual(self.network.triedNames(), ["a", "c"])
        _, lateTransport = self.network.attempts[0].succeed()
        self.assertTrue(lateTransport.disconnected)
        lateTransport.deliverLoss()
        self.assertEqual(self.a.activeConnections, 0)
        self.network.attempts[1].succeed()
        self.assertEqual(clientTransport.producerState, "producing")

    def test_cancellerThatConnects(self) -> None:
        """
        When cancelling makes the endpoint report a connection anyway, that
        connection is closed and released once it ends.
        """
        self.network.onCancel = "connect"
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        clientTransport.deliverLoss()
        pending = self.network.attempts[0]
        self.assertTrue(pending.cancelled)
        self.assertEqual(self.a.activeConnections, 1)
        self.assertEqual(factory.activeCount, 1)
        backendTransport = pending.transport
        self.assertTrue(backendTransport.disconnecting)
        self.assertFalse(backendTransport.disconnected)
        backendTransport.deliverLoss()
        self.assertAllReleased(factory)

    def test_backendClosesFirst(self) -> None:
        """
        A backend closing first: released at once; the client is closed
        gracefully after its buffered bytes, with its producer unregistered.
        """
        factory = self.makeFactory()
        client, clientTransport, backend, backendTransport = self.relay(factory)
        backend.dataReceived(b"last words")
        backendTransport.deliverLoss()
        self.assertEqual(self.a.activeConnections, 0)
        self.assertTrue(clientTransport.disconnecting)
        self.assertFalse(clientTransport.disconnected)
        self.assertIsNone(clientTransport.producer)
        self.assertEqual(clientTransport.value(), b"last words")
        self.assertEqual(factory.activeCount, 1)
        client.dataReceived(b"too late")
        clientTransport.deliverLoss()
        self.assertAllReleased(factory)

    def test_clientClosesFirst(self) -> None:
        """
        A client closing first: the backend is closed gracefully with its
        producer unregistered; the listener slot is held until the backend
        leg is gone too.
        """
        factory = self.makeFactory()
        client, clientTransport, backend, backendTransport = self.relay(factory)
        client.dataReceived(b"bye")
        clientTransport.deliverLoss()
        self.assertTrue(backendTransport.disconnecting)
        self.assertFalse(backendTransport.disconnected)
        self.assertIsNone(backendTransport.producer)
        self.assertEqual(backendTransport.value(), b"bye")
        self.assertEqual(self.a.activeConnections, 1)
        self.assertEqual(factory.activeCount, 1)
        drained = factory.drained()
        self.assertNoResult(drained)
        backend.dataReceived(b"nobody listens")
        backendTransport.deliverLoss()
        self.successResultOf(drained)
        self.assertAllReleased(factory)

    def test_everyOrderOfEvents(self) -> None:
        """
        Whatever the order of EOFs, losses and the idle timeout on a relayed
        connection, every count ends at 0, never goes below it, and nothing
        is left behind.
        """
        optional = ["clientEOF", "backendEOF", "idle"]
        orders = 0
        for n in range(len(optional) + 1):
            for chosen in itertools.combinations(optional, n):
                events = ["clientLost", "backendLost", *chosen]
                for order in itertools.permutations(events):
                    if _eofAfterLoss(order):
                        continue
                    self.runOrder(order)
                    orders += 1
        self.assertEqual(orders, 74)

    def runOrder(self, order) -> None:
        """
        Relay one connection, deliver the events in C{order}, and check the
        counts.
        """
        self.setUp()
        factory = self.makeFactory(idleTimeout=30)
        client, clientTransport, backend, backendTransport = self.relay(factory)
        for event in order:
            if event == "clientEOF":
                clientTransport.deliverEOF()
            elif event == "backendEOF":
                backendTransport.deliverEOF()
            elif event == "clientLost":
                clientTransport.deliverLoss()
            elif event == "backendLost":
                backendTransport.deliverLoss()
            else:
                self.reactor.advance(30)
            self.assertIn(self.a.activeConnections, (0, 1), order)
            self.assertIn(factory.activeCount, (0, 1), order)
        self.assertEqual(self.a.activeConnections, 0, order)
        self.assertEqual(factory.activeCount, 0, order)
        self.assertEqual(self.reactor.getDelayedCalls(), [], order)
        self.assertEqual(factory.idleTimeouts, 1 if _idleBeforeEnd(order) else 0)


def _eofAfterLoss(order) -> bool:
    """
    Whether C{order} has an EOF after the loss of the same side, which no
    transport delivers.
    """
    for side in ("client", "backend"):
        eof = side + "EOF"
        if eof in order and order.index(eof) > order.index(side + "Lost"):
            return True
    return False


def _idleBeforeEnd(order) -> bool:
    """
    Whether the idle timeout in C{order} fires while a leg is still there.
    """
    if "idle" not in order:
        return False
    at = order.index("idle")
    return at < order.index("clientLost") or at < order.index("backendLost")


class HalfCloseTests(RelayTestMixin, SynchronousTestCase):
    """
    A read EOF on one side shuts the write side of the other.
    """

    def test_clientEOF(self) -> None:
        """
        A client EOF shuts the backend's write side; the backend can still
        answer; its EOF then closes both gracefully.
        """
        factory = self.makeFactory()
        client, clientTransport, backend, backendTransport = self.relay(factory)
        client.dataReceived(b"request")
        clientTransport.deliverEOF()
        self.assertEqual(backendTransport.writeCloses, 1)
        self.assertIsNone(backendTransport.producer)
        self.assertFalse(backendTransport.disconnecting)
        self.assertFalse(clientTransport.disconnecting)
        backend.dataReceived(b"response")
        self.assertEqual(clientTransport.value(), b"response")
        backendTransport.deliverEOF()
        self.assertTrue(clientTransport.disconnecting)
        self.assertTrue(backendTransport.disconnecting)
        self.assertFalse(clientTransport.disconnected)
        self.assertFalse(backendTransport.disconnected)
        self.assertEqual(clientTransport.writeCloses, 0)
        self.assertIsNone(clientTransport.producer)

    def test_backendEOF(self) -> None:
        """
        A backend EOF shuts the client's write side; the client can still
        send; its EOF then closes both.
        """
        factory = self.makeFactory()
        client, clientTransport, backend, backendTransport = self.relay(factory)
        backendTransport.deliverEOF()
        self.assertEqual(clientTransport.writeCloses, 1)
        self.assertIsNone(clientTransport.producer)
        self.assertFalse(clientTransport.disconnecting)
        client.dataReceived(b"more")
        self.assertEqual(backendTransport.value(), b"more")
        clientTransport.deliverEOF()
        self.assertTrue(clientTransport.disconnecting)
        self.assertTrue(backendTransport.disconnecting)
        self.assertEqual(backendTransport.writeCloses, 0)

    def test_repeatedEOFIgnored(self) -> None:
        """
        A transport reporting EOF again (as a half-closed TCP transport does
        when resumed) changes nothing.
        """
        _, clientTransport, _, backendTransport = self.relay(self.makeFactory())
        clientTransport.deliverEOF()
        clientTransport.deliverEOF()
        backendTransport.deliverEOF()
        backendTransport.deliverEOF()
        self.assertEqual(
            (clientTransport.writeCloses, backendTransport.writeCloses), (0, 1)
        )
        self.assertTrue(clientTransport.disconnecting)
        self.assertTrue(backendTransport.disconnecting)

    def test_clientEOFWhileConnecting(self) -> None:
        """
        A client EOF delivered before the backend is connected (by a
        transport that read despite the pause) is passed on once it is, and
        the client is not resumed.
        """
        factory = self.makeFactory()
        client, clientTransport = connectClient(factory)
        client.dataReceived(b"all of it")
        clientTransport.deliverEOF()
        _, backendTransport = self.network.attempts[0].succeed()
        self.assertEqual(backendTransport.value(), b"all of it")
        self.assertEqual(backendTransport.writeCloses, 1)
        self.assertEqual(clientTransport.producerState, "paused")

    def test_backendEOFBeforeReported(self) -> None:
        """
        A backend EOF before its connection is reported is passed on, after
        the bytes that came before it.
        """
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        pending = self.network.attempts[0]
        backend, backendTransport = pending.makeProtocol()
        backend.dataReceived(b"banner")
        backendTransport.deliverEOF()
        pending.report(backend)
        self.assertEqual(clientTransport.value(), b"banner")
        self.assertEqual(clientTransport.writeCloses, 1)

    def test_bothEOFBeforeConnected(self) -> None:
        """
        EOF from both sides before the connection is reported closes both
        legs.
        """
        factory = self.makeFactory()
        client, clientTransport = connectClient(factory)
        clientTransport.deliverEOF()
        pending = self.network.attempts[0]
        backend, backendTransport = pending.makeProtocol()
        backendTransport.deliverEOF()
        pending.report(backend)
        self.assertTrue(clientTransport.disconnecting)
        self.assertTrue(backendTransport.disconnecting)
        clientTransport.deliverLoss()
        backendTransport.deliverLoss()
        self.assertAllReleased(factory)

    def test_tlsLegClosedWhole(self) -> None:
        """
        A TLS transport cannot shut one direction: an EOF from the other
        side closes it whole, after its buffer.
        """
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        backendTransport = FakeTCPTransport()
        directlyProvides(backendTransport, ISSLTransport)
        self.network.attempts[0].succeed(backendTransport)
        clientTransport.deliverEOF()
        self.assertEqual(backendTransport.writeCloses, 0)
        self.assertTrue(backendTransport.disconnecting)
        self.assertFalse(backendTransport.disconnected)

    def test_noHalfCloseClosedWhole(self) -> None:
        """
        A transport without C{loseWriteConnection} is closed whole when the
        other side sends EOF.
        """
        factory = self.makeFactory()
        _, clientTransport = connectClient(factory)
        backendTransport = NoHalfCloseTransport()
        self.network.attempts[0].succeed(backendTransport)
        clientTransport.deliverEOF()
        self.assertTrue(backendTransport.disconnecting)
        self.assertFalse(backendTransport.disconnected)
        self.assertFalse(clientTransport.disconnecting)


class IdleTimeoutTests(RelayTestMixin, SynchronousTestCase):
    """
    A connection on which nothing moves for C{idleTimeout} is closed.
    """

    def test_idleClosesBoth(self) -> None:
        """
        After C{idleTimeout} seconds without a byte, both legs are aborted
        and the timeout counted.
        """
        factory = self.makeFactory(idleTimeout=10)
        _, clientTransport, _, backendTransport = self.relay(factory)
        self.reactor.advance(9.9)
        self.assertFalse(clientTransport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(clientTransport.disconnected)
        self.assertTrue(backendTransport.disconnected)
        self.assertEqual(factory.idleTimeouts, 1)
        clientTransport.deliverLoss()
        backendTransport.deliverLoss()
        self.assertAllReleased(factory)

    def advanceTo(self, when: float) -> None:
        """
        Advance the clock to C{when} in half-second steps, so that each
        timer runs on time (L{MemoryReactorClock.advance} runs a late timer
        at the time advanced to, and the idle timer re-arms from then).
        """
        while self.reactor.seconds() < when:
            self.reactor.advance(0.5)

    def test_trafficEitherWayKeepsAlive(self) -> None:
        """
        Bytes in either direction keep the connection open: it is closed at
        the first look (one every C{idleTimeout}) that finds nothing moved
        since the one before.
        """
        factory = self.makeFactory(idleTimeout=10)
        client, clientTransport, backend, _ = self.relay(factory)
        self.advanceTo(6)
        client.dataReceived(b"x")
        self.advanceTo(12)
        backend.dataReceived(b"y")
        self.advanceTo(29.5)
        self.assertFalse(clientTransport.disconnecting)
        self.advanceTo(30)
        self.assertTrue(clientTransport.disconnected)
        self.assertEqual(factory.idleTimeouts, 1)

    def test_closedWithinOneToTwoIdleTimeouts(self) -> None:
        """
        A connection is closed no sooner than C{idleTimeout} after its last
        byte, and no later than twice that.
        """
        for lastByteAt, closedAt in [(0.5, 20), (9.5, 20), (10.5, 30), (19.5, 30)]:
            self.setUp()
            factory = self.makeFactory(idleTimeout=10)
            client, clientTransport, backend, _ = self.relay(factory)
            self.advanceTo(0.5)
            client.dataReceived(b"x")
            self.advanceTo(lastByteAt)
            backend.dataReceived(b"y")
            self.advanceTo(closedAt - 0.5)
            self.assertFalse(clientTransport.disconnecting, lastByteAt)
            self.advanceTo(closedAt)
            self.assertTrue(clientTransport.disconnected, lastByteAt)
            self.assertGreaterEqual(closedAt - lastByteAt, 10)
            self.assertLessEqual(closedAt - lastByteAt, 20)

    def test_notDuringConnect(self) -> None:
        """
        The idle time starts when the backend is connected; the connect has
        its own timeout.
        """
        factory = self.makeFactory(idleTimeout=1, connectTimeout=5)
        _, clientTransport = connectClient(factory)
        self.reactor.advance(4)
        self.assertFalse(clientTransport.disconnecting)
        self.network.attempts[0].succeed()
        self.reactor.advance(0.5)
        self.assertFalse(clientTransport.disconnecting)
        self.reactor.advance(0.5)
        self.assertTrue(clientTransport.disconnected)

    def test_stuckBackendLegAfterClientLeft(self) -> None:
        """
        When the client has gone and the backend leg cannot finish closing,
        the idle timeout aborts it.
        """
        factory = self.makeFactory(idleTimeout=10)
        _, clientTransport, _, backendTransport = self.relay(factory)
        clientTransport.deliverLoss()
        self.assertFalse(backendTransport.disconnected)
        self.reactor.advance(10)
        self.assertTrue(backendTransport.disconnected)
        backendTransport.deliverLoss()
        self.assertAllReleased(factory)

    def test_noIdleTimeout(self) -> None:
        """
        Without C{idleTimeout}, a quiet connection stays open and no timer
        is set.
        """
        factory = self.makeFactory()
        _, clientTransport, _, _ = self.relay(factory)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(86400)
        self.assertFalse(clientTransport.disconnecting)


class ListenerLimitTests(RelayTestMixin, SynchronousTestCase):
    """
    Over C{maxConnections}, new connections are shed.
    """

    def test_shedOverLimit(self) -> None:
        """
        A connection over the limit is aborted at once without a backend
        being picked, and counted as shed.
        """
        factory = self.makeFactory(maxConnections=2)
        connectClient(factory)
        connectClient(factory)
        self.assertEqual(self.strategy.picks, 2)
        third, thirdTransport = connectClient(factory)
        self.assertTrue(thirdTransport.disconnected)
        self.assertEqual(self.strategy.picks, 2)
        self.assertEqual(len(self.network.attempts), 2)
        self.assertEqual((factory.accepted, factory.shed), (2, 1))
        third.dataReceived(b"ignored")
        thirdTransport.deliverLoss()
        self.assertEqual(factory.activeCount, 2)

    def test_slotFreedWhenConnectionEnds(self) -> None:
        """
        Once an admitted connection has finished, a new one is admitted.
        """
        factory = self.makeFactory(maxConnections=1)
        _, firstTransport = connectClient(factory)
        _, shedTransport = connectClient(factory)
        self.assertTrue(shedTransport.disconnected)
        firstTransport.deliverLoss()
        _, nextTransport = connectClient(factory)
        self.assertFalse(nextTransport.disconnecting)
        self.assertEqual((factory.accepted, factory.shed), (2, 1))

    def test_limitChangedAtRunTime(self) -> None:
        """
        Lowering C{maxConnections} sheds new connections; C{None} lifts it.
        """
        factory = self.makeFactory()
        connectClient(factory)
        factory.maxConnections = 1
        self.assertTrue(connectClient(factory)[1].disconnected)
        factory.maxConnections = None
        self.assertFalse(connectClient(factory)[1].disconnecting)


class DrainTests(RelayTestMixin, SynchronousTestCase):
    """
    L{TCPRelayFactory.drained} and L{TCPRelayFactory.abortAll}, for graceful
    shutdown.
    """

    def test_drainedWhenIdle(self) -> None:
        """
        With no connection, C{drained} has fired already.
        """
        self.assertIsNone(self.successResultOf(self.makeFactory().drained()))

    def test_drainedWaitsForAll(self) -> None:
        """
        C{drained} fires when the last admitted connection has finished, not
        before.
        """
        factory = self.makeFactory()
        _, connecting = connectClient(factory)
        _, clientTransport, _, backendTransport = self.relay(factory)
        self.assertEqual(factory.activeCount, 2)
        drained = factory.drained()
        connecting.deliverLoss()
        clientTransport.deliverLoss()
        self.assertNoResult(drained)
        backendTransport.deliverLoss()
        self.successResultOf(drained)

    def test_abortAll(self) -> None:
        """
        C{abortAll} aborts relayed connections on both legs and gives up
        connects in flight.
        """
        factory = self.makeFactory()
        _, connecting = connectClient(factory)
        _, clientTransport, _, backendTransport = self.relay(factory)
        factory.abortAll()
        self.assertTrue(self.network.attempts[0].cancelled)
        self.assertEqual(self.a.failures, 0)
        self.assertTrue(connecting.disconnected)
        self.assertTrue(clientTransport.disconnected)
        self.assertTrue(backendTransport.disconnected)
        for transport in (connecting, clientTransport, backendTransport):
            transport.deliverLoss()
        self.assertAllReleased(factory)


class IOSimTests(RelayTestMixin, SynchronousTestCase):
    """
    Real protocols on both ends, bytes pumped over iosim.
    """

    def connect(self, factory):
        """
        Connect a L{Collector} client through the relay to an L{Echo}
        backend.

        @return: the client, the backend server and both pumps.
        """
        client = Collector()
        clientPump = connectOverIOSim(factory.buildProtocol(None), client, self.reactor)
        server = Echo()
        _, backendPump = self.network.attempts[-1].succeedOverIOSim(
            server, self.reactor
        )
        return client, server, clientPump, backendPump

    def test_echoThroughRelay(self) -> None:
        """
        Bytes go to the backend and back, and are counted.
        """
        factory = self.makeFactory()
        client, server, clientPump, backendPump = self.connect(factory)
        client.transport.write(b"ping")
        flushAll(clientPump, backendPump)
        self.assertEqual(server.received, b"ping")
        self.assertEqual(client.received, b"ping")
        self.assertEqual((factory.bytesIn, factory.bytesOut), (4, 4))

    def test_bytesBeforeBackendConnects(self) -> None:
        """
        Bytes the client sends before the backend is connected arrive once
        it is.
        """
        factory = self.makeFactory()
        client = Collector()
        clientPump = connectOverIOSim(factory.buildProtocol(None), client, self.reactor)
        client.transport.write(b"hello")
        flushAll(clientPump)
        server = Echo()
        _, backendPump = self.network.attempts[0].succeedOverIOSim(server, self.reactor)
        flushAll(clientPump, backendPump)
        self.assertEqual(client.received, b"hello")

    def test_clientCloseReachesBackend(self) -> None:
        """
        A client closing closes the backend connection; everything is
        released.
        """
        factory = self.makeFactory()
        client, server, clientPump, backendPump = self.connect(factory)
        client.transport.write(b"bye")
        client.transport.loseConnection()
        flushAll(clientPump, backendPump)
        self.assertEqual(server.received, b"bye")
        self.assertIsNotNone(server.reason)
        self.assertAllReleased(factory)

    def test_backendCloseReachesClient(self) -> None:
        """
        A backend closing closes the client connection after its last
        bytes.
        """
        factory = self.makeFactory()
        client, server, clientPump, backendPump = self.connect(factory)
        server.transport.write(b"goodbye")
        server.transport.loseConnection()
        flushAll(clientPump, backendPump)
        self.assertEqual(client.received, b"goodbye")
        self.assertIsNotNone(client.reason)
        self.assertAllReleased(factory)


@implementer(IHalfCloseableProtocol)
class _EchoUntilEOF(Echo):
    """
    A backend that echoes, and answers the client's EOF with C{b"bye"} and
    a close.
    """

    def readConnectionLost(self) -> None:
        """
        Say goodbye and close.
        """
        self.transport.write(b"bye")
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Nothing to do.
        """


@implementer(IHalfCloseableProtocol)
class _PingThenEOF(Collector):
    """
    A client that sends C{b"ping"}, half-closes once it is echoed, and
    reads until the end.

    @ivar echoed: fires when the echo is back, before the half-close.
    @ivar done: fires when the connection is lost.
    """

    def __init__(self) -> None:
        Collector.__init__(self)
        self.echoed: Deferred[None] = Deferred()
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        """
        Send the ping.
        """
        self.transport.write(b"ping")

    def dataReceived(self, data: bytes) -> None:
        """
        Half-close once the ping is back.
        """
        Collector.dataReceived(self, data)
        if self.received == b"ping":
            self.echoed.callback(None)
            self.transport.loseWriteConnection()

    def readConnectionLost(self) -> None:
        """
        The relay closed its side: close ours.
        """
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Nothing to do.
        """

    def connectionLost(self, reason) -> None:
        """
        Done.
        """
        Collector.connectionLost(self, reason)
        self.done.callback(None)


class LoopbackRelayTestsBuilder(ReactorBuilder):
    """
    The relay over real TCP connections on 127.0.0.1.
    """

    _reactors = [
        "txlb.reactor.HotPathReactor",
        "twisted.internet.epollreactor.EPollReactor",
    ]
    requiredInterfaces = (IReactorTCP,)

    def test_backendLegReadsWithoutEndpointWrapper(self) -> None:
        """
        Once relaying, the backend's TCP transport hands its bytes to the
        relay's backend leg directly, not through the endpoint's wrapper;
        bytes, the client's EOF and the backend's close still go through,
        and are counted.
        """
        reactor = self.buildReactor()
        results = {}

        async def scenario() -> None:
            backendPort = reactor.listenTCP(
                0, Factory.forProtocol(_EchoUntilEOF), interface="127.0.0.1"
            )
            pool = Pool(
                name="loop",
                algorithm="test_round_robin",
                strategy=RoundRobin(),
                clock=reactor,
                backends=[makeBackend("echo", backendPort.getHost().port)],
            )
            factory = TCPRelayFactory(pool, reactor, listenerName="loop")
            relayPort = reactor.listenTCP(0, factory, interface="127.0.0.1")
            client = _PingThenEOF()
            await connectProtocol(
                HostnameEndpoint(reactor, b"127.0.0.1", relayPort.getHost().port),
                client,
            )
            await client.echoed
            [relay] = factory._relays
            results["leg"] = type(relay._backendTransport.protocol)
            await client.done
            await factory.drained()
            results["received"] = client.received
            results["bytes"] = (factory.bytesIn, factory.bytesOut)
            await relayPort.stopListening()
            await backendPort.stopListening()

        def start() -> None:
            d = Deferred.fromCoroutine(scenario())
            d.addErrback(results.setdefault, "failure")
            d.addBoth(lambda _: reactor.stop())

        needsRunningReactor(reactor, start)
        self.runReactor(reactor, timeout=30)
        if "failure" in results:
            results["failure"].raiseException()
        self.assertIs(results["leg"], _BackendProtocol)
        self.assertEqual(results["received"], b"pingbye")
        self.assertEqual(results["bytes"], (4, 7))


globals().update(LoopbackRelayTestsBuilder.makeTestCaseClasses())


class ConnectionLimitTests(SynchronousTestCase):
    """
    L{ConnectionLimit}.
    """

    def test_admitsUpToMaximum(self) -> None:
        """
        Up to C{maximum} connections are admitted, the rest counted as shed.
        """
        limit = ConnectionLimit(2)
        self.assertEqual([limit.acquire() for _ in range(3)], [True, True, False])
        self.assertEqual((limit.active, limit.admitted, limit.shed), (2, 2, 1))

    def test_unlimited(self) -> None:
        """
        Without a maximum every connection is admitted.
        """
        limit = ConnectionLimit()
        self.assertTrue(all(limit.acquire() for _ in range(1000)))

    def test_releaseBelowZero(self) -> None:
        """
        Releasing more than was admitted is an error.
        """
        limit = ConnectionLimit()
        limit.acquire()
        limit.release()
        self.assertRaises(RuntimeError, limit.release)
        self.assertEqual(limit.active, 0)

    def test_drainedFiresEveryWaiterOnce(self) -> None:
        """
        Every waiter fires when the count reaches 0, and only then.
        """
        limit = ConnectionLimit()
        limit.acquire()
        limit.acquire()
        first, second = limit.drained(), limit.drained()
        limit.release()
        self.assertNoResult(first)
        limit.release()
        self.successResultOf(first)
        self.successResultOf(second)
        limit.acquire()
        limit.release()

    def test_drainedCancelled(self) -> None:
        """
        A cancelled wait is forgotten.
        """
        limit = ConnectionLimit()
        limit.acquire()
        waiter = limit.drained()
        waiter.cancel()
        self.failureResultOf(waiter, CancelledError)
        limit.release()
        self.assertEqual(limit.active, 0)
