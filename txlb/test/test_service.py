"""
Tests for L{txlb.service}, L{txlb.tap} and L{txlb.demo}: the service tree,
listening and its failures, the command-line options.
"""

from __future__ import annotations

import io
import resource
import sys

from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from txlb.config import parseConfig
from txlb.demo import DemoBackendResource, DemoBackends
from txlb.protocols.http import HTTPProxyFactory
from txlb.protocols.tcp import TCPRelayFactory
from txlb.service import (
    ListenerService,
    StartupError,
    TxlbService,
    describeAddress,
    raiseFileLimit,
)
from txlb.tap import CommandLineService, Options, buildService, makeService


def simpleConfig(**lb: object):
    """
    A one-pool configuration over two servers, with C{lb} in [load_balancer].
    """
    document = {
        "load_balancer": {"address": "127.0.0.1", "port": 8080, **lb},
        "server": [
            {"address": "127.0.0.1", "port": 3000},
            {"address": "127.0.0.1", "port": 3001, "weight": 2},
        ],
    }
    return parseConfig(document, "lb.toml")


class RefusingReactor(MemoryReactorClock):
    """
    A memory reactor on which every port is taken.
    """

    def listenTCP(self, port, factory, backlog=50, interface=""):
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


def noFileLimit():
    return (65536, 65536)


class TxlbServiceTests(SynchronousTestCase):
    """
    L{TxlbService} builds pools and listeners from a configuration.
    """

    def test_buildsPoolsAndListeners(self):
        """
        Each pool gets its strategy and backends; each L4 listener a
        L{TCPRelayFactory} over its pool.
        """
        reactor = MemoryReactorClock()
        service = TxlbService(simpleConfig(algorithm="WeightedRoundRobin"), reactor)
        pool = service.pools["default"]
        self.assertEqual(pool.algorithm, "weighted_round_robin")
        self.assertEqual(
            [(b.name, b.weight) for b in pool.backends],
            [("127.0.0.1:3000", 1), ("127.0.0.1:3001", 2)],
        )
        (listener,) = list(service.listeners)
        self.assertIsInstance(listener.factory, TCPRelayFactory)
        self.assertIs(listener.factory.pool, pool)

    def test_listensWhenStarted(self):
        """
        Starting the tree binds each listener on its endpoint.
        """
        reactor = MemoryReactorClock()
        service = TxlbService(simpleConfig(), reactor, fileLimit=noFileLimit)
        service.privilegedStartService()
        service.startService()
        self.assertEqual(len(reactor.tcpServers), 1)
        port, factory, backlog, interface = reactor.tcpServers[0]
        self.assertEqual((port, backlog, interface), (8080, 1024, "127.0.0.1"))
        self.successResultOf(service.stopService())

    def test_listenFailureIsStartupError(self):
        """
        A port that cannot be bound raises L{StartupError} with one line
        naming the listener, the endpoint and the reason.
        """
        service = TxlbService(simpleConfig(), RefusingReactor(), fileLimit=noFileLimit)
        e = self.assertRaises(StartupError, service.privilegedStartService)
        self.assertEqual(
            str(e),
            "listener default: cannot listen on "
            "tcp:port=8080:interface=127.0.0.1:backlog=1024: address already in use",
        )

    def test_layer7BuildsHTTPProxy(self):
        """
        An L7 listener gets an L{HTTPProxyFactory} over its pools, whose
        upstream connection pools are shared per pool.
        """
        service = TxlbService(simpleConfig(layer="L7"), MemoryReactorClock())
        (listener,) = list(service.listeners)
        self.assertIsInstance(listener.factory, HTTPProxyFactory)
        l7pool = listener.factory.pools["default"]
        self.assertIs(l7pool.pool, service.pools["default"])
        self.assertIs(l7pool.upstreams, service.upstreams["default"])

    def test_listenerStopsListening(self):
        """
        Stopping a L{ListenerService} stops its port.
        """
        reactor = MemoryReactorClock()
        config = simpleConfig()
        listener = ListenerService(config.listeners[0], object(), reactor)
        listener.startService()
        stopped = []
        listener.port.stopListening = lambda: stopped.append(True)
        self.successResultOf(listener.stopService())
        self.assertEqual(stopped, [True])
        self.assertIsNone(listener.port)


class DescribeAddressTests(SynchronousTestCase):
    """
    L{describeAddress} writes addresses the way operators read them.
    """

    def test_ipv4AndIPv6(self):
        """
        IPv4 as host:port, IPv6 bracketed.
        """
        from twisted.internet.address import IPv4Address, IPv6Address

        self.assertEqual(describeAddress(IPv4Address("TCP", "127.0.0.1", 80)), "127.0.0.1:80")
        self.assertEqual(describeAddress(IPv6Address("TCP", "::1", 80)), "[::1]:80")


class FileLimitTests(SynchronousTestCase):
    """
    L{raiseFileLimit} raises the soft limit to the hard one.
    """

    def test_raisesSoftToHard(self):
        """
        A soft limit below the hard one is raised to it.
        """
        calls = []
        limits = raiseFileLimit(
            lambda which: (1024, 524288), lambda which, value: calls.append(value)
        )
        self.assertEqual(calls, [(524288, 524288)])
        self.assertEqual(limits, (524288, 524288))

    def test_infiniteHard(self):
        """
        With no hard limit, the soft limit is raised to a finite large value.
        """
        calls = []
        raiseFileLimit(
            lambda which: (1024, resource.RLIM_INFINITY),
            lambda which, value: calls.append(value),
        )
        self.assertEqual(calls, [(1048576, resource.RLIM_INFINITY)])

    def test_refusedKeepsSoft(self):
        """
        When the system refuses, the current limit is reported.
        """

        def refuse(which, value):
            raise ValueError("not allowed")

        self.assertEqual(raiseFileLimit(lambda which: (1024, 4096), refuse), (1024, 4096))


class OptionsTests(SynchronousTestCase):
    """
    L{Options} of C{twistd txlb}.
    """

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_backendsWithoutFile(self):
        """
        --port and --backends alone make a whole configuration.
        """
        options = self.parse("--port", "9000", "--backends", "127.0.0.1:1,[::1]:2",
                             "--algorithm", "least_connections")
        config = options.configuration
        self.assertEqual(config.listeners[0].endpoint,
                         "tcp:port=9000:interface=0.0.0.0:backlog=1024")
        self.assertEqual(config.pools[0].algorithm, "least_connections")
        self.assertEqual([s.name for s in config.pools[0].servers],
                         ["127.0.0.1:1", "[::1]:2"])

    def test_overridesFile(self):
        """
        Flags override the file's values.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[load_balancer]\nport = 1234\nalgorithm = "random"\n'
                    '[[server]]\naddress = "10.0.0.1"\nport = 80\n')
        options = self.parse("--config", path, "--port", "4321", "--layer", "l4",
                             "--health-check-interval", "0.5")
        config = options.configuration
        self.assertIn("port=4321", config.listeners[0].endpoint)
        self.assertEqual(config.pools[0].algorithm, "random")
        self.assertEqual(config.pools[0].healthCheck.interval, 0.5)

    def test_errorsExitWithOneLine(self):
        """
        Malformed flags and invalid configurations exit with a one-line
        message (twistd would exit 0 on a UsageError).
        """
        for argv, message in [
            (["--port", "x"], "txlb: error: --port: must be a number, got 'x'"),
            (["--backends", "nohost"], "txlb: error: --backends: expected HOST:PORT, got 'nohost'"),
            (["--layer", "L3", "--backends", "h:1"], "txlb: error: --layer: must be L4 or L7, got 'L3'"),
            (["--health-check-interval", "-1", "--backends", "h:1"],
             "txlb: error: --health-check-interval: must be a positive number of seconds, got '-1'"),
            ([], "txlb: error: <command line>: give --config FILE, --backends HOST:PORT,... or --demo"),
            (["--backends", "h:1", "--algorithm", "nope"],
             "txlb: error: <command line>: load_balancer.algorithm: unknown algorithm 'nope'"),
            (["--demo", "--backends", "h:1"],
             "txlb: error: --demo runs its own backends; drop --config/--backends"),
        ]:
            e = self.assertRaises(SystemExit, self.parse, *argv)
            self.assertTrue(str(e.code).startswith(message), (argv, e.code))

    def test_configPathIsAbsolute(self):
        """
        The configuration path is kept absolute, for reloads after a chdir.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[[server]]\naddress = "10.0.0.1"\nport = 80\n')
        options = self.parse("--config", path)
        self.assertTrue(options["config"].startswith("/"))

    def test_makeServiceTree(self):
        """
        makeService builds the named tree on the given reactor.
        """
        options = self.parse("--backends", "127.0.0.1:1", "--port", "0")
        top = makeService(options, MemoryReactorClock())
        txlb = top.getServiceNamed("txlb")
        self.assertIsNotNone(txlb.getServiceNamed("listeners"))

    def test_demoTree(self):
        """
        --demo starts its backends before the balancer, and balances across
        them on 127.0.0.1.
        """
        options = self.parse("--demo", "--port", "0")
        reactor = MemoryReactorClock()
        top = makeService(options, reactor)
        demo, txlb = list(top)
        self.assertIsInstance(demo, DemoBackends)
        self.addCleanup(demo.stopService)
        pool = txlb.pools["default"]
        self.assertEqual(
            [(b.address, b.port) for b in pool.backends],
            [tuple(a) for a in demo.addresses],
        )
        self.assertIn("interface=127.0.0.1", txlb.config.listeners[0].endpoint)


class CommandLineServiceTests(SynchronousTestCase):
    """
    L{CommandLineService} turns startup errors into a one-line exit.
    """

    def test_portTakenExits(self):
        """
        A listen failure becomes C{SystemExit} with the message.
        """
        top = buildService(simpleConfig(), RefusingReactor())
        top.getServiceNamed("txlb")._fileLimit = noFileLimit
        self.patch(sys, "__stderr__", io.StringIO())
        e = self.assertRaises(SystemExit, top.privilegedStartService)
        self.assertEqual(e.code, 1)
        self.assertIn("txlb: error: listener default: cannot listen on",
                      sys.__stderr__.getvalue())

    def test_startServiceExits(self):
        """
        Without a privileged start (as under C{twist}), C{startService}
        exits the same way.
        """
        top = CommandLineService()
        TxlbService(simpleConfig(), RefusingReactor(), fileLimit=noFileLimit
                    ).setServiceParent(top)
        self.patch(sys, "__stderr__", io.StringIO())
        e = self.assertRaises(SystemExit, top.startService)
        self.assertEqual(e.code, 1)
        self.assertIn("txlb: error: listener default: cannot listen on",
                      sys.__stderr__.getvalue())


class DemoTests(SynchronousTestCase):
    """
    The demo backends say who they are.
    """

    def test_answersWithName(self):
        """
        Every path but /health answers with the backend's name.
        """
        request = DummyRequest([b""])
        request.path = b"/"
        body = DemoBackendResource("demo-backend-2").render_GET(request)
        self.assertIn(b"Hello from demo-backend-2", body)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"x-demo-backend"),
                         [b"demo-backend-2"])

    def test_health(self):
        """
        /health answers ok.
        """
        request = DummyRequest([b"health"])
        request.path = b"/health"
        self.assertEqual(DemoBackendResource("d").render_GET(request), b"ok\n")

    def test_adoptsBoundSockets(self):
        """
        The sockets are bound at construction and adopted at start.
        """
        reactor = MemoryReactorClock()
        demo = DemoBackends(reactor)
        self.assertEqual(len(demo.addresses), 3)
        self.assertTrue(all(host == "127.0.0.1" and port for host, port in demo.addresses))
        demo.startService()
        self.addCleanup(demo.stopService)
        self.assertEqual(len(reactor.adoptedPorts), 3)
        self.assertEqual(demo._sockets, [])
