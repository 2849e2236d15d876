"""
Tests for the L4 relay's protection, in memory: the per-client rate limit
of new connections and the pool queue.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase

from txlb.ratelimit import TokenBucketTable
from txlb.test.helpers import connectClient
from txlb.test.test_tcp_relay import RelayTestMixin


class RateLimitTests(RelayTestMixin, SynchronousTestCase):
    """
    New connections over a client's rate are closed at once.
    """

    def test_overLimitClosed(self) -> None:
        """
        Past its burst a client's new connection is aborted before any
        backend is tried, counted, and holds no listener slot.
        """
        factory = self.makeFactory(rateLimit=TokenBucketTable(1.0, 2, self.reactor))
        for _ in range(2):
            self.relay(factory)
        client, transport = connectClient(factory)
        self.assertTrue(transport.disconnected)
        self.assertEqual(factory.rateLimited, 1)
        self.assertEqual(len(self.network.attempts), 2)
        self.assertEqual(factory.activeCount, 2)

    def test_perClient(self) -> None:
        """
        Another client has its own bucket.
        """
        factory = self.makeFactory(rateLimit=TokenBucketTable(1.0, 1, self.reactor))
        self.relay(factory)
        other = IPv4Address("TCP", "192.0.2.99", 5555)
        client, transport = connectClient(factory, peer=other)
        self.assertFalse(transport.disconnected)
        self.assertEqual(factory.rateLimited, 0)

    def test_refill(self) -> None:
        """
        After C{1/rate} seconds the client may connect again.
        """
        factory = self.makeFactory(rateLimit=TokenBucketTable(2.0, 1, self.reactor))
        self.relay(factory)
        self.reactor.advance(0.5)
        client, transport = connectClient(factory)
        self.assertFalse(transport.disconnected)


class QueueTests(RelayTestMixin, SynchronousTestCase):
    """
    A connection waits for a backend below its C{max_connections}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.pool.removeBackend("b")
        self.pool.removeBackend("c")
        self.a.maxConnections = 1
        self.pool.maxQueue = 1
        self.pool.queueTimeout = 3.0

    def test_waitsThenConnects(self) -> None:
        """
        The second connection waits (its client paused) until the first
        ends, then connects to the freed backend.
        """
        factory = self.makeFactory()
        client1, transport1, backend1, backendTransport1 = self.relay(factory)
        client2, transport2 = connectClient(factory)
        self.assertEqual(self.pool.queued, 1)
        self.assertEqual(len(self.network.attempts), 1)
        transport1.deliverLoss()
        backendTransport1.deliverLoss()
        self.assertEqual(self.pool.queued, 0)
        self.assertEqual(len(self.network.attempts), 2)
        self.network.attempts[-1].succeed()
        self.assertEqual(self.a.activeConnections, 1)

    def test_fullAndTimeout(self) -> None:
        """
        Past C{max_queue} a connection is closed at once; a queued one is
        closed at the queue timeout; both are counted by the pool.
        """
        factory = self.makeFactory()
        self.relay(factory)
        client2, transport2 = connectClient(factory)
        client3, transport3 = connectClient(factory)
        self.assertTrue(transport3.disconnecting)
        self.assertFalse(transport2.disconnecting)
        self.reactor.advance(3.0)
        self.assertTrue(transport2.disconnecting)
        self.assertEqual(
            (self.pool.dropped["queue_full"], self.pool.dropped["queue_timeout"]), (1, 1)
        )

    def test_clientLeavesQueue(self) -> None:
        """
        A client that goes while queued leaves the queue and its slot.
        """
        factory = self.makeFactory()
        self.relay(factory)
        client2, transport2 = connectClient(factory)
        transport2.deliverLoss()
        self.assertEqual(self.pool.queued, 0)
        self.assertEqual(factory.activeCount, 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_noQueueOnFailover(self) -> None:
        """
        A connection whose backend failed is not queued: with nothing else
        usable it is closed.
        """
        self.a.maxConnections = None
        factory = self.makeFactory()
        client, transport = connectClient(factory)
        self.network.attempts[-1].fail()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.pool.queued, 0)
        self.assertEqual(factory.noBackend, 1)
