"""
Tests for L{txlb.config}: the simple and the full form, defaults and how
they are inherited, every validation message, command-line overrides, reading
files, and L{parseBackends}.

The strategies used here are test doubles (L{FAKE_REGISTRY}), so these tests
do not depend on which strategy plugins are installed.
"""

from __future__ import annotations

import copy
import errno
import os
import textwrap
import tomllib
from typing import Any, Sequence

import attrs
from attrs.exceptions import FrozenInstanceError
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.plugin import IPlugin
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txlb import config
from txlb.config import (
    Config,
    ConfigError,
    HealthCheckConfig,
    ListenerConfig,
    Overrides,
    PoolConfig,
    RouteConfig,
    ServerConfig,
    TimeoutsConfig,
    loadConfig,
    parseBackends,
    parseConfig,
)
from txlb.interfaces import IStrategy, IStrategyFactory
from txlb.plugin import StrategyLookupError, normalizeName


@implementer(IStrategy)
class _FirstStrategy:
    """
    Chooses the first candidate.
    """

    def choose(self, candidates: Sequence[Any], context: Any) -> Any:
        """
        @return: the first of C{candidates}.
        """
        return candidates[0]


@implementer(IPlugin, IStrategyFactory)
@attrs.frozen
class FakeStrategyFactory:
    """
    A strategy factory that accepts only the options named in C{accepts}.

    @ivar accepts: option names accepted; C{replicas}, when accepted, must be
        a positive integer.
    """

    name: str
    accepts: tuple[str, ...] = ()
    description: str = "a test double"

    def build(self, options: dict[str, Any]) -> _FirstStrategy:
        """
        @raise ValueError: an option is unknown or C{replicas} is bad.
        """
        for key in options:
            if key not in self.accepts:
                raise ValueError(f"unknown option {key!r}")
        replicas = options.get("replicas", 1)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas must be a positive integer, got {replicas!r}")
        return _FirstStrategy()


@implementer(IPlugin, IStrategyFactory)
@attrs.frozen
class BrokenStrategyFactory:
    """
    A strategy factory whose C{build} fails with something other than
    C{ValueError}.
    """

    name: str = "broken"
    description: str = "always fails"

    def build(self, options: dict[str, Any]) -> _FirstStrategy:
        """
        @raise RuntimeError: always.
        """
        raise RuntimeError("boom")


FAKE_FACTORIES = (
    FakeStrategyFactory("round_robin"),
    FakeStrategyFactory("least_connections"),
    FakeStrategyFactory("consistent_hash", accepts=("key", "replicas")),
    BrokenStrategyFactory(),
)

# What txlb.plugin.strategyRegistry would return were these the installed
# plugins.
FAKE_REGISTRY = {normalizeName(f.name): f for f in FAKE_FACTORIES}


def toml(text: str) -> str:
    """
    C{text} without the indentation it has in this module.
    """
    return textwrap.dedent(text).lstrip("\n")


NO_OVERRIDES = Overrides()


def parse(text: str, overrides: Overrides = NO_OVERRIDES) -> Config:
    """
    Parse TOML C{text} as the file C{lb.toml}, with L{FAKE_REGISTRY}.
    """
    return parseConfig(tomllib.loads(text), "lb.toml", overrides, FAKE_REGISTRY)


def connectTarget(endpoint: str) -> tuple[str, int, float]:
    """
    Where connecting with the client endpoint string C{endpoint} goes.

    @return: the host, port and timeout passed to C{connectTCP}.
    """
    reactor = MemoryReactor()
    clientFromString(reactor, endpoint).connect(Factory.forProtocol(Protocol))
    [(host, port, _, timeout, _)] = reactor.tcpClients
    return host, port, timeout


def listenTarget(endpoint: str) -> tuple[int, int, str]:
    """
    Where listening with the server endpoint string C{endpoint} goes.

    @return: the port, backlog and interface passed to C{listenTCP}.
    """
    reactor = MemoryReactor()
    serverFromString(reactor, endpoint).listen(Factory.forProtocol(Protocol))
    [(port, _, backlog, interface)] = reactor.tcpServers
    return port, backlog, interface


# The simple form exactly as DESIGN.md shows it.
DESIGN_SIMPLE = toml(
    """
    [load_balancer]
    address = "127.0.0.1"
    port = 8080
    algorithm = "round_robin"   # round_robin, weighted_round_robin, ip_hashing, ...; case-insensitive
    layer = "L7"                # L4 or L7; L4 if unspecified

    [[server]]
    address = "127.0.0.1"
    port = 3000
    max_connections = 1000
    weight = 3
    """
)

# One server in the simple form, and the smallest valid full form.
SERVER = toml(
    """
    [[server]]
    address = "10.0.0.1"
    port = 80
    """
)
APP_SERVER = toml(
    """
    [[pools.app.servers]]
    address = "10.0.0.1"
    port = 80
    """
)
POOL = "[pools.app]\n" + APP_SERVER
LISTENER = toml(
    """
    [listeners.web]
    port = 8080
    """
)

FULL = toml(
    """
    [timeouts]
    connect = 3
    idle = 300

    [health_check]
    type = "http"
    interval = 10
    path = "/healthz"

    [listeners.web]
    address = "0.0.0.0"
    port = 8080
    layer = "L7"
    pool = "app"
    max_connections = 10000

    [[listeners.web.routes]]
    host = "api.example.com"
    path_prefix = "/v1"
    pool = "api"

    [[listeners.web.routes]]
    headers = { "X-Canary" = "1" }
    pool = "canary"

    [listeners.db]
    endpoint = "tcp:5432:interface=127.0.0.1"
    pool = "db"

    [listeners.local]
    endpoint = "unix:/run/txlb.sock"
    pool = "app"

    [listeners.v6]
    address = "::1"
    port = 8443
    backlog = 64
    pool = "app"

    [pools.app]
    algorithm = "least_connections"
    [pools.app.timeouts]
    idle = false
    [[pools.app.servers]]
    address = "10.0.0.1"
    port = 80
    weight = 2
    [[pools.app.servers]]
    name = "app-2"
    address = "10.0.0.2"
    port = 80
    max_connections = 500

    [pools.api]
    algorithm = "consistent_hash"
    algorithm_options = { replicas = 160, key = "header:X-User" }
    [pools.api.health_check]
    interval = 2
    timeout = 1
    [[pools.api.servers]]
    address = "2001:db8::10"
    port = 8000

    [pools.canary]
    [[pools.canary.servers]]
    endpoint = "unix:path=/run/canary.sock"

    [pools.db]
    algorithm = "ROUND-ROBIN"
    [pools.db.timeouts]
    connect = 1
    [[pools.db.servers]]
    address = "db1.internal"
    port = 5432
    """
)


class ConfigTestMixin:
    """
    Assertions about configuration errors.
    """

    def assertConfigError(
        self, text: str, message: str, overrides: Overrides = NO_OVERRIDES
    ) -> ConfigError:
        """
        Parsing C{text} fails with exactly C{message}.
        """
        error = self.assertRaises(ConfigError, parse, text, overrides)
        self.assertEqual(str(error), message)
        return error

    def assertErrorTable(self, rows: Sequence[tuple[str, str]]) -> None:
        """
        Parsing each C{text} of C{rows} fails with exactly C{"lb.toml: "}
        followed by its C{message}; every mismatch is reported, not only the
        first.
        """
        problems = []
        for text, problem in rows:
            message = f"lb.toml: {problem}"
            try:
                parse(text)
            except ConfigError as e:
                if str(e) != message:
                    problems.append(f"expected {message!r}\n     got {str(e)!r}")
            else:
                problems.append(f"expected {message!r}\n     got no error")
        if problems:
            self.fail("\n".join(problems))


class FakeRegistryTests(SynchronousTestCase):
    """
    The test doubles used as strategies provide what they claim.
    """

    def test_factoriesProvideInterfaces(self) -> None:
        """
        Every fake factory provides L{IPlugin} and L{IStrategyFactory}.
        """
        for factory in FAKE_FACTORIES:
            self.assertTrue(verifyObject(IPlugin, factory))
            self.assertTrue(verifyObject(IStrategyFactory, factory))

    def test_strategyProvidesInterface(self) -> None:
        """
        What a fake factory builds provides L{IStrategy}.
        """
        self.assertTrue(verifyObject(IStrategy, FAKE_FACTORIES[0].build({})))


class SimpleFormTests(ConfigTestMixin, SynchronousTestCase):
    """
    The simple form: C{[load_balancer]} and C{[[server]]}, one listener and
    one pool, both named C{default}.
    """

    def test_designExample(self) -> None:
        """
        The simple form exactly as DESIGN.md shows it parses to one L7
        listener on 127.0.0.1:8080 and one round-robin pool of one server.
        """
        c = parse(DESIGN_SIMPLE)
        self.assertEqual(
            c,
            Config(
                source="lb.toml",
                listeners=(
                    ListenerConfig(
                        name="default",
                        endpoint="tcp:port=8080:interface=127.0.0.1:backlog=1024",
                        layer="L7",
                        pool="default",
                    ),
                ),
                pools=(
                    PoolConfig(
                        name="default",
                        algorithm="round_robin",
                        servers=(
                            ServerConfig(
                                name="127.0.0.1:3000",
                                address="127.0.0.1",
                                port=3000,
                                endpoint="tcp:host=127.0.0.1:port=3000:timeout=5",
                                weight=3,
                                maxConnections=1000,
                            ),
                        ),
                    ),
                ),
            ),
        )

    def test_defaults(self) -> None:
        """
        With only a server, the listener is L4 on 0.0.0.0:8080 with backlog
        1024 and no connection limit, the pool is round-robin with no health
        check and the default timeouts, the server has weight 1 and no limit.
        """
        c = parse(SERVER)
        [listener] = c.listeners
        [pool] = c.pools
        self.assertEqual(
            listener,
            ListenerConfig(
                name="default",
                endpoint="tcp:port=8080:interface=0.0.0.0:backlog=1024",
                layer="L4",
                pool="default",
                maxConnections=None,
                routes=(),
            ),
        )
        self.assertEqual(listenTarget(listener.endpoint), (8080, 1024, "0.0.0.0"))
        self.assertEqual(
            (pool.name, pool.algorithm, pool.algorithmOptions, pool.healthCheck),
            ("default", "round_robin", (), None),
        )
        self.assertEqual(
            pool.timeouts, TimeoutsConfig(connect=5.0, idle=600.0, response=60.0, header=10.0)
        )
        [server] = pool.servers
        self.assertEqual((server.weight, server.maxConnections), (1, None))

    def test_algorithmNamesAreCaseInsensitive(self) -> None:
        """
        C{RoundRobin}, C{round_robin}, C{ROUND-ROBIN} and C{roundrobin} all
        name the factory, and the pool records the factory's declared name.
        """
        for spelling in ("RoundRobin", "round_robin", "ROUND-ROBIN", "roundrobin"):
            c = parse(f'[load_balancer]\nalgorithm = "{spelling}"\n' + SERVER)
            self.assertEqual(c.pools[0].algorithm, "round_robin", spelling)

    def test_layerIsCaseInsensitive(self) -> None:
        """
        C{layer = "l7"} and C{"l4"} are read as L7 and L4.
        """
        for spelling, layer in (("l7", "L7"), ("l4", "L4"), ("L4", "L4")):
            c = parse(f'[load_balancer]\nlayer = "{spelling}"\n' + SERVER)
            self.assertEqual(c.listeners[0].layer, layer)

    def test_listenerSettings(self) -> None:
        """
        C{max_connections}, C{backlog} and port 0 (any free port) are taken
        from C{[load_balancer]}.
        """
        c = parse(
            toml(
                """
                [load_balancer]
                address = "127.0.0.1"
                port = 0
                backlog = 50
                max_connections = 20
                """
            )
            + SERVER
        )
        [listener] = c.listeners
        self.assertEqual(listener.endpoint, "tcp:port=0:interface=127.0.0.1:backlog=50")
        self.assertEqual(listener.maxConnections, 20)
        self.assertEqual(listenTarget(listener.endpoint), (0, 50, "127.0.0.1"))

    def test_listenerIPv6Address(self) -> None:
        """
        An IPv6 listen address gives a C{tcp6} endpoint with its colons
        escaped, which Twisted parses back to that address.
        """
        c = parse('[load_balancer]\naddress = "::1"\nport = 8443\n' + SERVER)
        endpoint = c.listeners[0].endpoint
        self.assertEqual(endpoint, "tcp6:port=8443:interface=\\:\\:1:backlog=1024")
        self.assertEqual(listenTarget(endpoint), (8443, 1024, "::1"))

    def test_listenerEndpointString(self) -> None:
        """
        C{endpoint} in C{[load_balancer]} is used verbatim.
        """
        c = parse('[load_balancer]\nendpoint = "unix:/run/txlb.sock"\n' + SERVER)
        self.assertEqual(c.listeners[0].endpoint, "unix:/run/txlb.sock")

    def test_algorithmOptions(self) -> None:
        """
        C{algorithm_options} reach the factory and are kept as sorted pairs;
        L{PoolConfig.options} returns them as a new C{dict} each time.
        """
        c = parse(
            toml(
                """
                [load_balancer]
                algorithm = "consistent_hash"
                algorithm_options = { replicas = 7, key = "client_ip" }
                """
            )
            + SERVER
        )
        [pool] = c.pools
        self.assertEqual(pool.algorithmOptions, (("key", "client_ip"), ("replicas", 7)))
        options = pool.options
        self.assertEqual(options, {"key": "client_ip", "replicas": 7})
        options["replicas"] = 1
        self.assertEqual(pool.options["replicas"], 7)

    def test_serverNames(self) -> None:
        """
        A server's name defaults to C{address:port}, C{[address]:port} for
        IPv6, or its endpoint string; an explicit C{name} wins.
        """
        c = parse(
            toml(
                """
                [[server]]
                address = "10.0.0.1"
                port = 80
                [[server]]
                address = "backend.internal"
                port = 8080
                [[server]]
                address = "2001:db8::1"
                port = 80
                [[server]]
                endpoint = "unix:path=/run/app.sock"
                [[server]]
                name = "blue"
                address = "10.0.0.9"
                port = 80
                """
            )
        )
        self.assertEqual(
            [s.name for s in c.pools[0].servers],
            [
                "10.0.0.1:80",
                "backend.internal:8080",
                "[2001:db8::1]:80",
                "unix:path=/run/app.sock",
                "blue",
            ],
        )

    def test_serverEndpoints(self) -> None:
        """
        A server given as address/port gets a C{tcp} client endpoint string
        carrying the connect timeout; an C{endpoint} is kept verbatim.
        """
        c = parse(
            toml(
                """
                [[server]]
                address = "10.0.0.1"
                port = 80
                [[server]]
                endpoint = "tcp:host=10.0.0.2:port=81"
                [[server]]
                endpoint = "unix:path=/run/app.sock"
                """
            )
        )
        self.assertEqual(
            [(s.address, s.port, s.endpoint) for s in c.pools[0].servers],
            [
                ("10.0.0.1", 80, "tcp:host=10.0.0.1:port=80:timeout=5"),
                (None, None, "tcp:host=10.0.0.2:port=81"),
                (None, None, "unix:path=/run/app.sock"),
            ],
        )

    def test_topLevelTablesApply(self) -> None:
        """
        The top-level C{[timeouts]} and C{[health_check]} apply to the
        default pool, key by key over the defaults.
        """
        c = parse(
            toml(
                """
                [timeouts]
                connect = 2
                header = false
                [health_check]
                type = "HTTP"
                interval = 3
                expected_status = 204
                """
            )
            + SERVER
        )
        [pool] = c.pools
        self.assertEqual(
            pool.timeouts, TimeoutsConfig(connect=2.0, idle=600.0, response=60.0, header=None)
        )
        self.assertEqual(
            pool.healthCheck,
            HealthCheckConfig(type="http", interval=3.0, expectedStatus=(204, 204)),
        )
        self.assertEqual(pool.servers[0].endpoint, "tcp:host=10.0.0.1:port=80:timeout=2")

    def test_noLoadBalancerTable(self) -> None:
        """
        C{[load_balancer]} may be left out entirely.
        """
        self.assertEqual(parse(SERVER).listeners[0].name, "default")

    def test_healthCheckDefaults(self) -> None:
        """
        An empty C{[health_check]} means a TCP check every 5 s, timeout 2 s,
        rise 2, fall 3, path /health, no host, statuses 200-399, jitter 0.1.
        """
        c = parse("[health_check]\n" + SERVER)
        self.assertEqual(
            attrs.astuple(c.pools[0].healthCheck),
            ("tcp", 5.0, 2.0, 2, 3, "/health", None, (200, 399), 0.1),
        )

    def test_healthCheckAllKeys(self) -> None:
        """
        Every C{[health_check]} key is read.
        """
        c = parse(
            toml(
                """
                [health_check]
                type = "http"
                interval = 2.5
                timeout = 0.5
                rise = 1
                fall = 100
                path = "/ready"
                host = "app.example.com"
                expected_status = "200-204"
                jitter = 0
                """
            )
            + SERVER
        )
        self.assertEqual(
            c.pools[0].healthCheck,
            HealthCheckConfig(
                type="http",
                interval=2.5,
                timeout=0.5,
                rise=1,
                fall=100,
                path="/ready",
                host="app.example.com",
                expectedStatus=(200, 204),
                jitter=0.0,
            ),
        )


class FullFormTests(ConfigTestMixin, SynchronousTestCase):
    """
    The full form: named listeners and pools.
    """

    def setUp(self) -> None:
        self.config = parse(FULL)

    def test_listeners(self) -> None:
        """
        Every C{[listeners.NAME]} becomes a L{ListenerConfig}, in file order,
        with its endpoint string, layer, pool and limit.
        """
        self.assertEqual(
            [
                (x.name, x.endpoint, x.layer, x.pool, x.maxConnections)
                for x in self.config.listeners
            ],
            [
                ("web", "tcp:port=8080:interface=0.0.0.0:backlog=1024", "L7", "app", 10000),
                ("db", "tcp:5432:interface=127.0.0.1", "L4", "db", None),
                ("local", "unix:/run/txlb.sock", "L4", "app", None),
                ("v6", "tcp6:port=8443:interface=\\:\\:1:backlog=64", "L4", "app", None),
            ],
        )
        self.assertEqual(
            listenTarget(self.config.listeners[3].endpoint), (8443, 64, "::1")
        )

    def test_routes(self) -> None:
        """
        Routes keep their order and conditions; header names are lower-cased.
        """
        self.assertEqual(
            self.config.listeners[0].routes,
            (
                RouteConfig(pool="api", host="api.example.com", pathPrefix="/v1"),
                RouteConfig(pool="canary", headers=(("x-canary", "1"),)),
            ),
        )
        self.assertEqual(self.config.listeners[1].routes, ())

    def test_routeWithoutConditions(self) -> None:
        """
        A route with only C{pool} has no conditions.
        """
        c = parse(
            POOL
            + toml(
                """
                [listeners.web]
                port = 8080
                layer = "L7"
                [[listeners.web.routes]]
                pool = "app"
                """
            )
        )
        self.assertEqual(c.listeners[0].routes, (RouteConfig(pool="app"),))

    def test_pools(self) -> None:
        """
        Every C{[pools.NAME]} becomes a L{PoolConfig}, in file order, with its
        algorithm (declared name, whatever the spelling) and options.
        """
        self.assertEqual(
            [(p.name, p.algorithm, p.algorithmOptions) for p in self.config.pools],
            [
                ("app", "least_connections", ()),
                ("api", "consistent_hash", (("key", "header:X-User"), ("replicas", 160))),
                ("canary", "round_robin", ()),
                ("db", "round_robin", ()),
            ],
        )

    def test_servers(self) -> None:
        """
        Pool servers are read with the same keys as the simple form's.
        """
        self.assertEqual(
            self.config.pool("app").servers,
            (
                ServerConfig(
                    name="10.0.0.1:80",
                    address="10.0.0.1",
                    port=80,
                    endpoint="tcp:host=10.0.0.1:port=80:timeout=3",
                    weight=2,
                ),
                ServerConfig(
                    name="app-2",
                    address="10.0.0.2",
                    port=80,
                    endpoint="tcp:host=10.0.0.2:port=80:timeout=3",
                    maxConnections=500,
                ),
            ),
        )
        [v6] = self.config.pool("api").servers
        self.assertEqual((v6.name, v6.address, v6.port), ("[2001:db8::10]:8000", "2001:db8::10", 8000))
        [canary] = self.config.pool("canary").servers
        self.assertEqual(
            (canary.name, canary.endpoint),
            ("unix:path=/run/canary.sock", "unix:path=/run/canary.sock"),
        )
        [db] = self.config.pool("db").servers
        self.assertEqual(db.endpoint, "tcp:host=db1.internal:port=5432:timeout=1")

    def test_timeoutsInheritKeyByKey(self) -> None:
        """
        The top-level C{[timeouts]} is every pool's default; a pool's table
        overrides only the keys it names, and C{false} disables one.
        """
        self.assertEqual(
            [p.timeouts for p in self.config.pools],
            [
                TimeoutsConfig(connect=3.0, idle=None, response=60.0, header=10.0),
                TimeoutsConfig(connect=3.0, idle=300.0, response=60.0, header=10.0),
                TimeoutsConfig(connect=3.0, idle=300.0, response=60.0, header=10.0),
                TimeoutsConfig(connect=1.0, idle=300.0, response=60.0, header=10.0),
            ],
        )

    def test_healthCheckInheritsKeyByKey(self) -> None:
        """
        The top-level C{[health_check]} is every pool's default; a pool's
        table overrides only the keys it names.
        """
        top = HealthCheckConfig(type="http", interval=10.0, path="/healthz")
        self.assertEqual(
            [p.healthCheck for p in self.config.pools],
            [top, attrs.evolve(top, interval=2.0, timeout=1.0), top, top],
        )

    def test_poolHealthCheckWithoutTopLevel(self) -> None:
        """
        Without a top-level C{[health_check]}, only pools with their own table
        are checked, with the defaults for the keys they leave out.
        """
        c = parse(
            POOL
            + toml(
                """
                [pools.app.health_check]
                rise = 5
                [pools.other]
                [[pools.other.servers]]
                address = "10.0.0.2"
                port = 80
                """
            )
            + LISTENER
            + 'pool = "app"\n'
        )
        self.assertEqual(
            [p.healthCheck for p in c.pools], [HealthCheckConfig(rise=5), None]
        )

    def test_listenerPoolDefaultsToTheOnlyPool(self) -> None:
        """
        With exactly one pool, a listener may leave out C{pool}.
        """
        c = parse(POOL + LISTENER)
        self.assertEqual(c.listeners[0].pool, "app")

    def test_sameServerInTwoPools(self) -> None:
        """
        One server may be in several pools.
        """
        c = parse(
            POOL
            + toml(
                """
                [pools.other]
                [[pools.other.servers]]
                address = "10.0.0.1"
                port = 80
                """
            )
            + LISTENER
            + 'pool = "app"\n'
        )
        self.assertEqual(len(c.pools), 2)

    def test_listenersOnPortZero(self) -> None:
        """
        Several listeners may ask for port 0 (any free port).
        """
        c = parse(POOL + "[listeners.a]\nport = 0\n[listeners.b]\nport = 0\n")
        self.assertEqual(len(c.listeners), 2)

    def test_poolLookup(self) -> None:
        """
        L{Config.pool} finds a pool by name and raises C{KeyError} for an
        unknown one.
        """
        self.assertEqual(self.config.pool("db").name, "db")
        self.assertRaises(KeyError, self.config.pool, "nope")

    def test_listenerEndpointStrings(self) -> None:
        """
        Listener endpoint strings in Twisted's syntax are accepted: TCP with
        an interface, UNIX sockets, PROXY protocol.
        """
        for endpoint in (
            "tcp:8080:interface=127.0.0.1",
            "unix:/run/txlb.sock:mode=660",
            "haproxy:tcp:8080",
            "tcp6:8080:interface=\\\\:\\\\:",
        ):
            c = parse(POOL + f'[listeners.web]\nendpoint = "{endpoint}"\n')
            self.assertEqual(c.listeners[0].endpoint, endpoint.replace("\\\\", "\\"))

    def test_systemdListenerEndpoint(self) -> None:
        """
        A C{systemd:} listener endpoint is accepted although this process was
        not socket-activated, so that C{txlb check} can validate such a file.
        """
        c = parse(POOL + '[listeners.web]\nendpoint = "systemd:domain=INET:index=0"\n')
        self.assertEqual(c.listeners[0].endpoint, "systemd:domain=INET:index=0")

    def test_badSystemdListenerEndpoint(self) -> None:
        """
        A C{systemd:} endpoint naming no descriptor is refused.
        """
        error = self.assertRaises(
            ConfigError, parse, POOL + '[listeners.web]\nendpoint = "systemd:domain=INET"\n'
        )
        self.assertEqual(error.path, "listeners.web.endpoint")


class ServerEndpointTests(ConfigTestMixin, SynchronousTestCase):
    """
    The client endpoint strings built from C{address}/C{port} connect where
    the configuration says, with the configured connect timeout.
    """

    def endpointFor(self, address: str, port: int, connect: float = 5) -> str:
        """
        The endpoint string of one server at C{address}:C{port}.
        """
        c = parse(
            f'[timeouts]\nconnect = {connect}\n[[server]]\naddress = "{address}"\nport = {port}\n'
        )
        return c.pools[0].servers[0].endpoint

    def test_ipv4(self) -> None:
        """
        An IPv4 server is connected to at its address and port.
        """
        self.assertEqual(connectTarget(self.endpointFor("10.0.0.1", 80)), ("10.0.0.1", 80, 5))

    def test_hostName(self) -> None:
        """
        A server given by host name is connected to by that name.
        """
        self.assertEqual(
            connectTarget(self.endpointFor("backend.internal", 8080)),
            ("backend.internal", 8080, 5),
        )

    def test_ipv6(self) -> None:
        """
        An IPv6 server's endpoint string is one that Twisted's
        C{clientFromString} accepts, and connects to that address.
        """
        self.assertEqual(
            connectTarget(self.endpointFor("2001:db8::1", 80)), ("2001:db8::1", 80, 5)
        )

    def test_fractionalConnectTimeout(self) -> None:
        """
        A connect timeout of 2.5 s gives an endpoint string Twisted accepts,
        whose own timeout does not cut the configured one short.
        """
        host, port, timeout = connectTarget(self.endpointFor("10.0.0.1", 80, 2.5))
        self.assertEqual((host, port), ("10.0.0.1", 80))
        self.assertTrue(2.5 <= timeout < 3.5, timeout)

    def test_addressWithPort(self) -> None:
        """
        An address that carries a port (C{10.0.0.1:81}) is refused rather than
        turned into an endpoint string that connects to port 81.
        """
        error = self.assertRaises(
            ConfigError, parse, '[[server]]\naddress = "10.0.0.1:81"\nport = 80\n'
        )
        self.assertEqual(error.path, "server[1].address")


class UnknownKeyTests(ConfigTestMixin, SynchronousTestCase):
    """
    Unknown keys are errors at every level, with a "did you mean" hint when a
    known key is close, and the list of known keys otherwise.
    """

    def test_didYouMean(self) -> None:
        """
        A misspelt key at any level is named with its path and a hint.
        """
        self.assertErrorTable(
            [
                (
                    "[load_balancr]\nport = 80\n" + SERVER,
                    "load_balancr: unknown key; did you mean 'load_balancer'?",
                ),
                (
                    "[timeout]\nconnect = 1\n" + SERVER,
                    "timeout: unknown key; did you mean 'timeouts'?",
                ),
                (
                    POOL + LISTENER + "[helth_check]\n",
                    "helth_check: unknown key; did you mean 'health_check'?",
                ),
                (
                    '[load_balancer]\nalgoritm = "x"\n' + SERVER,
                    "load_balancer.algoritm: unknown key; did you mean 'algorithm'?",
                ),
                (
                    SERVER + "wieght = 2\n",
                    "server[1].wieght: unknown key; did you mean 'weight'?",
                ),
                (
                    SERVER
                    + SERVER.replace("10.0.0.1", "10.0.0.2")
                    + "max_connection = 2\n",
                    "server[2].max_connection: unknown key; did you mean 'max_connections'?",
                ),
                (
                    LISTENER + 'layr = "L4"\n' + POOL,
                    "listeners.web.layr: unknown key; did you mean 'layer'?",
                ),
                (
                    LISTENER + 'pools = "app"\n' + POOL,
                    "listeners.web.pools: unknown key; did you mean 'pool'?",
                ),
                (
                    LISTENER + '[pools.app]\nalgoritm = "x"\n' + APP_SERVER,
                    "pools.app.algoritm: unknown key; did you mean 'algorithm'?",
                ),
                (
                    LISTENER + POOL + "adress = 'x'\n",
                    "pools.app.servers[1].adress: unknown key; did you mean 'address'?",
                ),
                (
                    "[health_check]\nintervall = 3\n" + SERVER,
                    "health_check.intervall: unknown key; did you mean 'interval'?",
                ),
                (
                    LISTENER
                    + POOL
                    + "[pools.app.health_check]\nexpected_stats = 200\n",
                    "pools.app.health_check.expected_stats: unknown key; did you "
                    "mean 'expected_status'?",
                ),
                (
                    "[timeouts]\nidel = 3\n" + SERVER,
                    "timeouts.idel: unknown key; did you mean 'idle'?",
                ),
                (
                    LISTENER + POOL + "[pools.app.timeouts]\nconect = 3\n",
                    "pools.app.timeouts.conect: unknown key; did you mean 'connect'?",
                ),
                (
                    POOL
                    + LISTENER
                    + 'layer = "L7"\n[[listeners.web.routes]]\npool = "app"\n'
                    + 'path_prefx = "/"\n',
                    "listeners.web.routes[1].path_prefx: unknown key; did you mean 'path_prefix'?",
                ),
            ]
        )

    def test_knownKeysListed(self) -> None:
        """
        A key like no known one is answered with the keys known there.
        """
        self.assertErrorTable(
            [
                (
                    "bogus = 1\n" + SERVER,
                    "bogus: unknown key; known keys here: admin, circuit_breaker, "
                    "connection_pool, health_check, lifecycle, listeners, "
                    "load_balancer, outlier_detection, pools, rate_limit, retries, "
                    "server, timeouts",
                ),
                (
                    "[load_balancer]\nzzz = 1\n" + SERVER,
                    "load_balancer.zzz: unknown key; known keys here: access_log, "
                    "address, algorithm, algorithm_options, backend_header, backlog, "
                    "endpoint, forwarded, forwarded_by, hash_key, host_rewrite, "
                    "keepalive_timeout, layer, max_body_size, max_connections, "
                    "max_header_size, max_queue, max_target_length, on_all_down, "
                    "port, queue_timeout, slow_start, stats, sticky_cookie, "
                    "trusted_proxies",
                ),
                (
                    SERVER + "zzz = 1\n",
                    "server[1].zzz: unknown key; known keys here: address, "
                    "endpoint, max_connections, name, port, weight",
                ),
                (
                    LISTENER + "zzz = 1\n" + POOL,
                    "listeners.web.zzz: unknown key; known keys here: access_log, "
                    "address, backend_header, backlog, endpoint, forwarded, "
                    "forwarded_by, keepalive_timeout, layer, max_body_size, "
                    "max_connections, max_header_size, max_target_length, pool, port, "
                    "rate_limit, routes, stats, trusted_proxies",
                ),
                (
                    LISTENER + "[pools.app]\nzzz = 1\n" + APP_SERVER,
                    "pools.app.zzz: unknown key; known keys here: algorithm, "
                    "algorithm_options, circuit_breaker, connection_pool, hash_key, "
                    "health_check, host_rewrite, max_queue, on_all_down, "
                    "outlier_detection, queue_timeout, retries, servers, slow_start, "
                    "sticky_cookie, timeouts",
                ),
                (
                    "[health_check]\nzzz = 1\n" + SERVER,
                    "health_check.zzz: unknown key; known keys here: "
                    "expected_status, fall, host, interval, jitter, path, rise, timeout, "
                    "type",
                ),
                (
                    "[timeouts]\nzzz = 1\n" + SERVER,
                    "timeouts.zzz: unknown key; known keys here: body, connect, header, idle, response",
                ),
                (
                    POOL
                    + LISTENER
                    + 'layer = "L7"\n[[listeners.web.routes]]\npool = "app"\nzzz = 1\n',
                    "listeners.web.routes[1].zzz: unknown key; known keys here: "
                    "headers, host, path_prefix, pool",
                ),
            ]
        )

    def test_tablesNotYetAvailable(self) -> None:
        """
        Tables of later features (C{[etcd]}) are unknown keys, not
        silently ignored.
        """
        self.assertErrorTable(
            [
                (
                    "[etcd]\nport = 9000\n" + SERVER,
                    "etcd: unknown key; known keys here: admin, circuit_breaker, "
                    "connection_pool, health_check, lifecycle, listeners, "
                    "load_balancer, outlier_detection, pools, rate_limit, retries, "
                    "server, timeouts",
                ),
            ]
        )

    def test_misspeltServersTable(self) -> None:
        """
        A misspelt servers table (C{[[servers]]}, C{[[pools.app.server]]}) is
        reported as an unknown key with a hint, not as an empty pool.
        """
        self.assertErrorTable(
            [
                (
                    "[load_balancer]\n" + SERVER.replace("[[server]]", "[[servers]]"),
                    "servers: unknown key; did you mean 'server'?",
                ),
                (
                    LISTENER
                    + POOL.replace("[[pools.app.servers]]", "[[pools.app.server]]"),
                    "pools.app.server: unknown key; did you mean 'servers'?",
                ),
            ]
        )


class BadValueTests(ConfigTestMixin, SynchronousTestCase):
    """
    Every bad value is reported with the file, the key path and the value.
    """

    def test_serverValues(self) -> None:
        """
        Bad ports, weights, limits, names, addresses and endpoints of servers.
        """
        self.assertErrorTable(
            [
                (
                    SERVER
                    + SERVER.replace("10.0.0.1", "10.0.0.2").replace("80", "70000"),
                    "server[2].port: must be 1-65535, got 70000",
                ),
                (SERVER.replace("80", "0"), "server[1].port: must be 1-65535, got 0"),
                (
                    SERVER.replace("80", "65536"),
                    "server[1].port: must be 1-65535, got 65536",
                ),
                (
                    SERVER.replace("80", '"80"'),
                    "server[1].port: must be an integer, got '80'",
                ),
                (
                    SERVER.replace("80", "80.0"),
                    "server[1].port: must be an integer, got 80.0",
                ),
                (
                    '[[server]]\naddress = "10.0.0.1"\n',
                    "server[1].port: is required with address",
                ),
                (
                    "[[server]]\nport = 80\n",
                    "server[1]: needs address (and port) or endpoint",
                ),
                (
                    SERVER.replace('"10.0.0.1"', '""'),
                    "server[1].address: must be a non-empty string, got ''",
                ),
                (
                    SERVER.replace('"10.0.0.1"', "10"),
                    "server[1].address: must be a non-empty string, got 10",
                ),
                (
                    SERVER + 'endpoint = "tcp:host=10.0.0.1:port=80"\n',
                    "server[1].endpoint: give either endpoint or address/port, not both",
                ),
                (
                    '[[server]]\nendpoint = "bogus:x"\n',
                    "server[1].endpoint: not a valid client endpoint string "
                    "(Unknown endpoint type: 'bogus'): 'bogus:x'",
                ),
                (SERVER + "weight = 0\n", "server[1].weight: must be 1-1000, got 0"),
                (
                    SERVER + "weight = 1001\n",
                    "server[1].weight: must be 1-1000, got 1001",
                ),
                (
                    SERVER + "weight = 1.5\n",
                    "server[1].weight: must be an integer, got 1.5",
                ),
                (
                    SERVER + "weight = true\n",
                    "server[1].weight: must be an integer, got True",
                ),
                (
                    SERVER + 'weight = "2"\n',
                    "server[1].weight: must be an integer, got '2'",
                ),
                (
                    SERVER + "max_connections = 0\n",
                    "server[1].max_connections: must be at least 1, got 0",
                ),
                (
                    SERVER + "max_connections = -5\n",
                    "server[1].max_connections: must be at least 1, got -5",
                ),
                (
                    SERVER + 'name = ""\n',
                    "server[1].name: must be a non-empty string, got ''",
                ),
                ("server = 3\n", "server: must be an array of tables, got an integer"),
                ("server = [1]\n", "server[1]: must be a table, got an integer"),
                (
                    LISTENER + POOL + "weight = 0\n",
                    "pools.app.servers[1].weight: must be 1-1000, got 0",
                ),
            ]
        )

    def test_duplicateServers(self) -> None:
        """
        Two servers of one pool may not share a name or an endpoint.
        """
        self.assertErrorTable(
            [
                (
                    SERVER + SERVER,
                    "server[2]: duplicate server: same name '10.0.0.1:80' as server[1]",
                ),
                (
                    SERVER + SERVER + 'name = "other"\n',
                    "server[2]: duplicate server: same endpoint "
                    "'tcp:host=10.0.0.1:port=80:timeout=5' as server[1]",
                ),
                (
                    SERVER
                    + 'name = "web"\n'
                    + SERVER.replace("10.0.0.1", "10.0.0.2")
                    + 'name = "web"\n',
                    "server[2]: duplicate server: same name 'web' as server[1]",
                ),
                (
                    LISTENER
                    + "[pools.app]\n"
                    + '[[pools.app.servers]]\nendpoint = "unix:path=/a"\n'
                    + '[[pools.app.servers]]\nendpoint = "unix:path=/a"\nname = "b"\n',
                    "pools.app.servers[2]: duplicate server: same endpoint "
                    "'unix:path=/a' as pools.app.servers[1]",
                ),
            ]
        )

    def test_listenerValues(self) -> None:
        """
        Bad listen addresses, ports, layers, endpoints, backlogs and limits.
        """
        lb = "[load_balancer]\n"
        self.assertErrorTable(
            [
                (
                    lb + "port = 65536\n" + SERVER,
                    "load_balancer.port: must be 0-65535, got 65536",
                ),
                (
                    lb + "port = -1\n" + SERVER,
                    "load_balancer.port: must be 0-65535, got -1",
                ),
                (
                    lb + 'port = "8080"\n' + SERVER,
                    "load_balancer.port: must be an integer, got '8080'",
                ),
                (
                    lb + 'address = "localhost"\n' + SERVER,
                    "load_balancer.address: must be an IP address to listen on, got 'localhost'",
                ),
                (
                    lb + 'layer = "L5"\n' + SERVER,
                    "load_balancer.layer: must be one of L4, L7, got 'L5'",
                ),
                (
                    lb + 'endpoint = "tcp:80"\nport = 80\n' + SERVER,
                    "load_balancer.endpoint: give either endpoint or address/port, not both",
                ),
                (
                    lb + 'endpoint = "nope:80"\n' + SERVER,
                    "load_balancer.endpoint: not a valid server endpoint string "
                    "(Unknown endpoint type: 'nope'): 'nope:80'",
                ),
                (
                    lb + "backlog = 0\n" + SERVER,
                    "load_balancer.backlog: must be 1-65535, got 0",
                ),
                (
                    lb + "max_connections = 0\n" + SERVER,
                    "load_balancer.max_connections: must be at least 1, got 0",
                ),
                (
                    "load_balancer = 3\n" + SERVER,
                    "load_balancer: must be a table, got an integer",
                ),
                (
                    POOL + "[listeners.web]\n",
                    "listeners.web.port: is required (or give endpoint)",
                ),
                (
                    POOL + LISTENER.replace("8080", "65536"),
                    "listeners.web.port: must be 0-65535, got 65536",
                ),
                (
                    POOL + LISTENER.replace("8080", '"8080"'),
                    "listeners.web.port: must be an integer, got '8080'",
                ),
                (
                    POOL + LISTENER + 'layer = "http"\n',
                    "listeners.web.layer: must be one of L4, L7, got 'http'",
                ),
                (
                    POOL + "[listeners]\nweb = 3\n",
                    "listeners.web: must be a table, got an integer",
                ),
            ]
        )

    def test_structure(self) -> None:
        """
        Mixed forms, missing tables, and references to missing pools.
        """
        self.assertErrorTable(
            [
                (
                    "[load_balancer]\n" + POOL + LISTENER,
                    "mixes the simple form ([load_balancer], [[server]]) with "
                    "the full form ([listeners.*], [pools.*]); use one",
                ),
                (
                    SERVER + LISTENER,
                    "mixes the simple form ([load_balancer], [[server]]) with "
                    "the full form ([listeners.*], [pools.*]); use one",
                ),
                ("", "server: a pool needs at least one server"),
                (
                    "[load_balancer]\nport = 80\n",
                    "server: a pool needs at least one server",
                ),
                (
                    '[pools.app]\nalgorithm = "round_robin"\n' + LISTENER,
                    "pools.app.servers: a pool needs at least one server",
                ),
                (LISTENER, "pools: at least one [pools.NAME] table is required"),
                (POOL, "listeners: at least one [listeners.NAME] table is required"),
                (
                    "[pools]\napp = 3\n" + LISTENER,
                    "pools.app: must be a table, got an integer",
                ),
                (
                    POOL + LISTENER + 'pool = "ap"\n',
                    "listeners.web.pool: no pool named 'ap'; pools: app",
                ),
                (
                    POOL + POOL.replace("app", "api") + LISTENER,
                    "listeners.web.pool: is required; pools: app, api",
                ),
                (
                    POOL
                    + LISTENER
                    + 'layer = "L7"\n'
                    + '[[listeners.web.routes]]\nhost = "a.example"\npool = "app"\n'
                    + '[[listeners.web.routes]]\npool = "nope"\n',
                    "listeners.web.routes[2].pool: no pool named 'nope'; pools: app",
                ),
                (
                    POOL + "[listeners.a]\nport = 8080\n[listeners.b]\nport = 8080\n",
                    "listeners.b.port: listens where listener 'a' does: "
                    "tcp:port=8080:interface=0.0.0.0:backlog=1024",
                ),
            ]
        )

    def test_sameListenEndpointString(self) -> None:
        """
        Two listeners with the same endpoint string are refused.
        """
        error = self.assertRaises(
            ConfigError,
            parse,
            POOL + '[listeners.a]\nendpoint = "tcp:80"\n[listeners.b]\nendpoint = "tcp:80"\n',
        )
        self.assertTrue(
            str(error).endswith("listens where listener 'a' does: tcp:80"), str(error)
        )

    def test_sameAddressAndPortDifferentBacklog(self) -> None:
        """
        Two listeners on one address and port are refused even when their
        backlogs differ.
        """
        error = self.assertRaises(
            ConfigError,
            parse,
            POOL + "[listeners.a]\nport = 8080\n[listeners.b]\nport = 8080\nbacklog = 5\n",
        )
        self.assertIn("listens where listener 'a' does", str(error))

    def test_backlogWithEndpoint(self) -> None:
        """
        C{backlog} beside C{endpoint} is refused rather than silently ignored
        (an endpoint string carries its own backlog).
        """
        for text, path in [
            (
                '[load_balancer]\nendpoint = "tcp:80"\nbacklog = 50\n' + SERVER,
                "load_balancer.backlog",
            ),
            (
                POOL + '[listeners.web]\nendpoint = "tcp:80"\nbacklog = 50\n',
                "listeners.web.backlog",
            ),
        ]:
            error = self.assertRaises(ConfigError, parse, text)
            self.assertEqual(error.path, path)

    def test_routeValues(self) -> None:
        """
        Routes need an L7 listener, a pool, a path prefix starting with a
        slash, and string header values.
        """
        l7 = POOL + LISTENER + 'layer = "L7"\n[[listeners.web.routes]]\n'
        self.assertErrorTable(
            [
                (
                    POOL + LISTENER + '[[listeners.web.routes]]\npool = "app"\n',
                    'listeners.web.routes[1]: routes need layer = "L7"',
                ),
                (l7 + 'host = "a"\n', "listeners.web.routes[1].pool: is required"),
                (
                    l7 + 'pool = "app"\npath_prefix = "v1"\n',
                    "listeners.web.routes[1].path_prefix: must start with '/', got 'v1'",
                ),
                (
                    l7 + 'pool = "app"\nheaders = { X-A = 1 }\n',
                    "listeners.web.routes[1].headers.X-A: must be a string, got 1",
                ),
                (
                    l7 + 'pool = "app"\nhost = ""\n',
                    "listeners.web.routes[1].host: must be a non-empty string, got ''",
                ),
                (
                    POOL + LISTENER + 'layer = "L7"\nroutes = 3\n',
                    "listeners.web.routes: must be an array of tables, got an integer",
                ),
            ]
        )

    def test_algorithms(self) -> None:
        """
        An unknown algorithm lists the installed ones, with a hint when one is
        close; options the factory refuses name the key path and the
        factory's reason.
        """
        self.assertErrorTable(
            [
                (
                    '[load_balancer]\nalgorithm = "nope"\n' + SERVER,
                    "load_balancer.algorithm: unknown algorithm 'nope'; "
                    "installed: broken, consistent_hash, least_connections, round_robin",
                ),
                (
                    LISTENER + '[pools.app]\nalgorithm = "leastconn"\n' + APP_SERVER,
                    "pools.app.algorithm: unknown algorithm 'leastconn' (did you mean "
                    "'least_connections'?); installed: broken, consistent_hash, "
                    "least_connections, round_robin",
                ),
                (
                    '[load_balancer]\nalgorithm = ""\n' + SERVER,
                    "load_balancer.algorithm: must be a non-empty string, got ''",
                ),
                (
                    '[load_balancer]\nalgorithm = "consistent_hash"\n'
                    "algorithm_options = { replica = 3 }\n" + SERVER,
                    "load_balancer.algorithm_options: consistent_hash: unknown option 'replica'",
                ),
                (
                    LISTENER
                    + '[pools.app]\nalgorithm = "consistent_hash"\n'
                    + "algorithm_options = { replicas = 0 }\n"
                    + APP_SERVER,
                    "pools.app.algorithm_options: consistent_hash: replicas must "
                    "be a positive integer, got 0",
                ),
                (
                    '[load_balancer]\nalgorithm_options = { key = "x" }\n' + SERVER,
                    "load_balancer.algorithm_options: round_robin: unknown option 'key'",
                ),
                (
                    '[load_balancer]\nalgorithm = "broken"\n' + SERVER,
                    "load_balancer.algorithm_options: broken failed to build: RuntimeError: boom",
                ),
                (
                    "[load_balancer]\nalgorithm_options = 3\n" + SERVER,
                    "load_balancer.algorithm_options: must be a table, got an integer",
                ),
            ]
        )

    def test_registryConflict(self) -> None:
        """
        When the installed plugins conflict, loading any file says why.
        """

        def conflicting() -> None:
            raise StrategyLookupError("two strategy plugins claim the name 'x': a.X and b.X")

        self.patch(config, "strategyRegistry", conflicting)
        self.assertEqual(
            str(self.assertRaises(ConfigError, parseConfig, {}, "lb.toml")),
            "lb.toml: two strategy plugins claim the name 'x': a.X and b.X",
        )

    def test_healthCheckValues(self) -> None:
        """
        Bad health-check types, durations, thresholds, paths, statuses and
        jitter.
        """
        hc = "[health_check]\n"
        self.assertErrorTable(
            [
                (
                    hc + "timeout = 6\n" + SERVER,
                    "health_check.timeout: must not exceed interval (5), got 6",
                ),
                (
                    hc + "interval = 1\n" + SERVER,
                    "health_check.timeout: must not exceed interval (1), got 2",
                ),
                (
                    hc
                    + "interval = 10\ntimeout = 4\n"
                    + LISTENER
                    + POOL
                    + "[pools.app.health_check]\ninterval = 3\n",
                    "pools.app.health_check.timeout: must not exceed interval (3), got 4",
                ),
                (
                    hc + 'type = "udp"\n' + SERVER,
                    "health_check.type: must be one of tcp, http, got 'udp'",
                ),
                (
                    hc + "interval = 0\n" + SERVER,
                    "health_check.interval: must be a positive number of seconds, got 0",
                ),
                (
                    hc + "interval = -1\n" + SERVER,
                    "health_check.interval: must be a positive number of seconds, got -1",
                ),
                (
                    hc + "interval = nan\n" + SERVER,
                    "health_check.interval: must be a positive number of seconds, got nan",
                ),
                (
                    hc + 'interval = "5"\n' + SERVER,
                    "health_check.interval: must be a number of seconds, got '5'",
                ),
                (
                    hc + "timeout = false\n" + SERVER,
                    "health_check.timeout: must be a number of seconds, got False",
                ),
                (hc + "rise = 0\n" + SERVER, "health_check.rise: must be 1-100, got 0"),
                (
                    hc + "fall = 101\n" + SERVER,
                    "health_check.fall: must be 1-100, got 101",
                ),
                (
                    hc + 'path = "health"\n' + SERVER,
                    "health_check.path: must start with '/', got 'health'",
                ),
                (
                    hc + 'expected_status = "abc"\n' + SERVER,
                    "health_check.expected_status: must be a status or a range "
                    "like \"200-399\", got 'abc'",
                ),
                (
                    hc + 'expected_status = "a-b"\n' + SERVER,
                    "health_check.expected_status: must be like \"200-399\", got 'a-b'",
                ),
                (
                    hc + "expected_status = 600\n" + SERVER,
                    "health_check.expected_status: must be within 100-599, got 600",
                ),
                (
                    hc + 'expected_status = "300-200"\n' + SERVER,
                    "health_check.expected_status: must be within 100-599, got '300-200'",
                ),
                (
                    hc + "expected_status = true\n" + SERVER,
                    "health_check.expected_status: must be a status or a range "
                    'like "200-399", got True',
                ),
                (
                    hc + "jitter = 1\n" + SERVER,
                    "health_check.jitter: must be a fraction from 0 to below 1, got 1",
                ),
                (
                    hc + "jitter = -0.1\n" + SERVER,
                    "health_check.jitter: must be a fraction from 0 to below 1, got -0.1",
                ),
                (
                    hc + "jitter = true\n" + SERVER,
                    "health_check.jitter: must be a fraction from 0 to below 1, got True",
                ),
                (
                    'health_check = "x"\n' + SERVER,
                    "health_check: must be a table, got a string",
                ),
            ]
        )

    def test_timeoutValues(self) -> None:
        """
        Timeouts must be positive numbers; C{false} disables any but
        C{connect}.
        """
        self.assertErrorTable(
            [
                (
                    "[timeouts]\nconnect = false\n" + SERVER,
                    "timeouts.connect: must be a number of seconds, got False",
                ),
                (
                    "[timeouts]\nconnect = 0\n" + SERVER,
                    "timeouts.connect: must be a positive number of seconds, got 0",
                ),
                (
                    "[timeouts]\nidle = 0\n" + SERVER,
                    "timeouts.idle: must be a positive number of seconds, got 0",
                ),
                (
                    "[timeouts]\nidle = true\n" + SERVER,
                    "timeouts.idle: must be a number of seconds, got True",
                ),
                (
                    "[timeouts]\nheader = -1\n" + SERVER,
                    "timeouts.header: must be a positive number of seconds, got -1",
                ),
                (
                    '[timeouts]\nresponse = "60"\n' + SERVER,
                    "timeouts.response: must be a number of seconds, got '60'",
                ),
                (
                    LISTENER + POOL + "[pools.app.timeouts]\nconnect = 0\n",
                    "pools.app.timeouts.connect: must be a positive number of seconds, got 0",
                ),
                (
                    "timeouts = 3\n" + SERVER,
                    "timeouts: must be a table, got an integer",
                ),
            ]
        )

    def test_infiniteTimeout(self) -> None:
        """
        An infinite duration is refused like any other impossible one.
        """
        error = self.assertRaises(
            ConfigError, parse, "[timeouts]\nconnect = inf\n" + SERVER
        )
        self.assertEqual(error.path, "timeouts.connect")

    def test_timeoutsDisabled(self) -> None:
        """
        C{false} disables the idle, response, header and body timeouts.
        """
        c = parse(
            "[timeouts]\nidle = false\nresponse = false\nheader = false\nbody = false\n"
            + SERVER
        )
        self.assertEqual(
            c.pools[0].timeouts,
            TimeoutsConfig(connect=5.0, idle=None, response=None, header=None, body=None),
        )
        c = parse("[timeouts]\nbody = 12.5\n" + SERVER)
        self.assertEqual(12.5, c.pools[0].timeouts.body)

    def test_errorAttributes(self) -> None:
        """
        A L{ConfigError} carries the source, the key path and the problem
        separately.
        """
        error = self.assertConfigError(
            SERVER + SERVER.replace("10.0.0.1", "10.0.0.2").replace("80", "70000"),
            "lb.toml: server[2].port: must be 1-65535, got 70000",
        )
        self.assertEqual(
            (error.source, error.path, error.problem),
            ("lb.toml", "server[2].port", "must be 1-65535, got 70000"),
        )


class OverridesTests(ConfigTestMixin, SynchronousTestCase):
    """
    Command-line flags (L{Overrides}) override the file.
    """

    def test_any(self) -> None:
        """
        L{Overrides.any} is C{True} exactly when a flag was given.
        """
        self.assertFalse(Overrides().any())
        for flags in (
            {"port": 0},
            {"backends": (("h", 1),)},
            {"algorithm": "random"},
            {"layer": "L4"},
            {"healthCheckInterval": 1.0},
        ):
            self.assertTrue(Overrides(**flags).any(), flags)

    def test_simpleForm(self) -> None:
        """
        In the simple form, every flag applies to the default listener and
        pool: the port replaces an endpoint, the backends replace the servers,
        the algorithm drops the file's options.
        """
        text = toml(
            """
            [load_balancer]
            endpoint = "unix:/run/txlb.sock"
            algorithm = "consistent_hash"
            algorithm_options = { key = "client_ip" }
            [health_check]
            timeout = 1
            [[server]]
            address = "10.0.0.1"
            port = 80
            weight = 5
            """
        )
        c = parse(
            text,
            Overrides(
                port=9000,
                backends=(("10.0.0.7", 81), ("backend.internal", 82)),
                algorithm="Least-Connections",
                layer="L7",
                healthCheckInterval=30.0,
            ),
        )
        [listener] = c.listeners
        [pool] = c.pools
        self.assertEqual(
            (listener.endpoint, listener.layer),
            ("tcp:port=9000:interface=0.0.0.0:backlog=1024", "L7"),
        )
        self.assertEqual((pool.algorithm, pool.algorithmOptions), ("least_connections", ()))
        self.assertEqual(
            [(s.name, s.endpoint, s.weight) for s in pool.servers],
            [
                ("10.0.0.7:81", "tcp:host=10.0.0.7:port=81:timeout=5", 1),
                ("backend.internal:82", "tcp:host=backend.internal:port=82:timeout=5", 1),
            ],
        )
        self.assertEqual(pool.healthCheck, HealthCheckConfig(interval=30.0, timeout=1.0))

    def test_portKeepsAddress(self) -> None:
        """
        C{--port} keeps the file's listen address.
        """
        c = parse(DESIGN_SIMPLE, Overrides(port=9000))
        self.assertEqual(
            c.listeners[0].endpoint, "tcp:port=9000:interface=127.0.0.1:backlog=1024"
        )

    def test_healthCheckIntervalAlone(self) -> None:
        """
        C{--health-check-interval} with no C{[health_check]} in the file turns
        checking on with that interval, lowering the default timeout to it
        when the interval is shorter.
        """
        for interval, timeout in ((10.0, 2.0), (1.0, 1.0)):
            c = parse(SERVER, Overrides(healthCheckInterval=interval))
            self.assertEqual(
                c.pools[0].healthCheck,
                HealthCheckConfig(interval=interval, timeout=timeout),
            )

    def test_fullFormOneListener(self) -> None:
        """
        In the full form with one listener, the flags apply to that listener
        and its pool only.
        """
        text = (
            POOL
            + POOL.replace("app", "spare").replace("10.0.0.1", "10.0.0.9")
            + toml(
                """
                [listeners.web]
                endpoint = "tcp:8080"
                pool = "app"
                """
            )
        )
        c = parse(
            text,
            Overrides(
                port=9000,
                backends=(("10.0.0.7", 81),),
                algorithm="least_connections",
                layer="L7",
            ),
        )
        [listener] = c.listeners
        self.assertEqual(
            (listener.endpoint, listener.layer),
            ("tcp:port=9000:interface=0.0.0.0:backlog=1024", "L7"),
        )
        app, spare = c.pools
        self.assertEqual(app.algorithm, "least_connections")
        self.assertEqual([s.name for s in app.servers], ["10.0.0.7:81"])
        self.assertEqual(spare.algorithm, "round_robin")
        self.assertEqual([s.name for s in spare.servers], ["10.0.0.9:80"])

    def test_fullFormListenerWithImplicitPool(self) -> None:
        """
        When the one listener leaves out C{pool} (there being one pool),
        C{--backends} and C{--algorithm} apply to that pool.
        """
        c = parse(
            POOL + LISTENER,
            Overrides(backends=(("10.0.0.7", 81),), algorithm="least_connections"),
        )
        [pool] = c.pools
        self.assertEqual(
            (pool.algorithm, [s.name for s in pool.servers]),
            ("least_connections", ["10.0.0.7:81"]),
        )

    def test_severalListenersRefused(self) -> None:
        """
        With several listeners, the flags that need one listener are refused,
        naming them.
        """
        text = POOL + "[listeners.a]\nport = 1\n[listeners.b]\nport = 2\n"
        self.assertConfigError(
            text,
            "lb.toml: listeners: --port needs exactly one listener in the file to apply to",
            Overrides(port=9000),
        )
        self.assertConfigError(
            text,
            "lb.toml: listeners: --port, --backends, --algorithm, --layer need exactly "
            "one listener in the file to apply to",
            Overrides(port=9000, backends=(("h", 1),), algorithm="random", layer="L7"),
        )

    def test_healthCheckIntervalSeveralListeners(self) -> None:
        """
        C{--health-check-interval} applies to every pool, whatever the number
        of listeners, including pools with their own C{[health_check]}.
        """
        text = (
            POOL
            + "[pools.app.health_check]\ninterval = 3\ntimeout = 1\n"
            + POOL.replace("app", "api").replace("10.0.0.1", "10.0.0.2")
            + "[listeners.a]\nport = 1\npool = 'app'\n"
            + "[listeners.b]\nport = 2\npool = 'api'\n"
        )
        c = parse(text, Overrides(healthCheckInterval=7.0))
        self.assertEqual(
            [p.healthCheck for p in c.pools],
            [HealthCheckConfig(interval=7.0, timeout=1.0), HealthCheckConfig(interval=7.0)],
        )

    def test_fullFormShortHealthCheckInterval(self) -> None:
        """
        In the full form too, a C{--health-check-interval} shorter than the
        default timeout lowers the timeout when the file does not set one.
        """
        c = parse(POOL + LISTENER, Overrides(healthCheckInterval=1.0))
        self.assertEqual(
            c.pools[0].healthCheck, HealthCheckConfig(interval=1.0, timeout=1.0)
        )

    def test_overridesAreValidated(self) -> None:
        """
        Flag values are checked like file values.
        """
        self.assertConfigError(
            SERVER,
            "lb.toml: load_balancer.layer: must be one of L4, L7, got 'L5'",
            Overrides(layer="L5"),
        )
        self.assertConfigError(
            SERVER,
            "lb.toml: load_balancer.algorithm: unknown algorithm 'nope'; installed: "
            "broken, consistent_hash, least_connections, round_robin",
            Overrides(algorithm="nope"),
        )
        self.assertConfigError(
            SERVER,
            "lb.toml: load_balancer.port: must be 0-65535, got 70000",
            Overrides(port=70000),
        )

    def test_noFile(self) -> None:
        """
        Without a file, C{--backends} alone makes a whole configuration.
        """
        c = loadConfig(
            None, Overrides(backends=(("10.0.0.1", 80),), port=9000), FAKE_REGISTRY
        )
        self.assertEqual(c.source, "<command line>")
        self.assertEqual(
            c.listeners[0].endpoint, "tcp:port=9000:interface=0.0.0.0:backlog=1024"
        )
        self.assertEqual([s.name for s in c.pools[0].servers], ["10.0.0.1:80"])

    def test_noFileNoBackends(self) -> None:
        """
        Without a file or C{--backends}, the error says what to give.
        """
        for overrides in (Overrides(), Overrides(port=9000, algorithm="random")):
            error = self.assertRaises(
                ConfigError, loadConfig, None, overrides, FAKE_REGISTRY
            )
            self.assertEqual(
                str(error),
                "<command line>: give --config FILE, --backends HOST:PORT,... or --demo",
            )


class ValuesTests(SynchronousTestCase):
    """
    Parsed configurations are immutable, and parsing leaves its input alone.
    """

    def test_frozen(self) -> None:
        """
        No attribute of any configuration value can be assigned.
        """
        c = parse(FULL)
        values = [
            (c, "pools"),
            (c.listeners[0], "pool"),
            (c.listeners[0].routes[0], "pool"),
            (c.pools[0], "algorithm"),
            (c.pools[0].servers[0], "weight"),
            (c.pools[0].timeouts, "connect"),
            (c.pools[0].healthCheck, "interval"),
            (Overrides(), "port"),
        ]
        for value, name in values:
            self.assertRaises(FrozenInstanceError, setattr, value, name, None)

    def test_collectionsAreTuples(self) -> None:
        """
        The collections inside a configuration are tuples.
        """
        c = parse(FULL)
        for collection in (
            c.listeners,
            c.pools,
            c.listeners[0].routes,
            c.listeners[0].routes[1].headers,
            c.pools[0].servers,
            c.pools[1].algorithmOptions,
            c.pools[0].healthCheck.expectedStatus,
        ):
            self.assertIsInstance(collection, tuple)

    def test_inputNotMutated(self) -> None:
        """
        L{parseConfig} leaves its document as it was, with or without
        overrides, whether or not the document is valid.
        """
        everything = Overrides(
            port=9000,
            backends=(("10.0.0.7", 81),),
            algorithm="least_connections",
            layer="L4",
            healthCheckInterval=30.0,
        )
        for text, overrides in [
            (DESIGN_SIMPLE, attrs.evolve(everything, healthCheckInterval=None)),
            (
                "[load_balancer]\nendpoint = 'tcp:80'\n[health_check]\ntimeout = 1\n"
                + SERVER,
                everything,
            ),
            (POOL + "[pools.app.health_check]\n" + LISTENER, everything),
            (POOL + "[listeners.a]\nport = 1\n[listeners.b]\nport = 2\n", everything),
            (
                "[load_balancer]\nwieght = 3\n" + SERVER,
                attrs.evolve(everything, backends=None, healthCheckInterval=None),
            ),
        ]:
            document = tomllib.loads(text)
            before = copy.deepcopy(document)
            try:
                parseConfig(document, "lb.toml", overrides, FAKE_REGISTRY)
            except ConfigError:
                pass
            self.assertEqual(document, before)

    def test_configDoesNotShareInput(self) -> None:
        """
        Changing the document after parsing does not change the
        configuration.
        """
        document = tomllib.loads(
            '[load_balancer]\nalgorithm = "consistent_hash"\n'
            'algorithm_options = { key = "a" }\n' + SERVER
        )
        c = parseConfig(document, "lb.toml", Overrides(), FAKE_REGISTRY)
        document["load_balancer"]["algorithm_options"]["key"] = "b"
        document["server"][0]["port"] = 1
        self.assertEqual(c.pools[0].options, {"key": "a"})
        self.assertEqual(c.pools[0].servers[0].port, 80)


class LoadConfigTests(SynchronousTestCase):
    """
    L{loadConfig} reads files and reports files it cannot use.
    """

    def write(self, data: bytes) -> str:
        """
        Write C{data} to C{lb.toml} in a new directory.

        @return: the file's path.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "lb.toml")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_valid(self) -> None:
        """
        A valid file loads, with its path as the source.
        """
        path = self.write(DESIGN_SIMPLE.encode("utf-8"))
        c = loadConfig(path, registry=FAKE_REGISTRY)
        self.assertEqual(c, attrs.evolve(parse(DESIGN_SIMPLE), source=path))

    def test_utf8(self) -> None:
        """
        Non-ASCII UTF-8 text is read as such.
        """
        path = self.write((SERVER + 'name = "caf\u00e9"\n').encode("utf-8"))
        c = loadConfig(path, registry=FAKE_REGISTRY)
        self.assertEqual(c.pools[0].servers[0].name, "caf\u00e9")

    def test_errorsNameThePath(self) -> None:
        """
        A validation error names the file by the path it was loaded from.
        """
        path = self.write(SERVER.replace("80", "0").encode("utf-8"))
        error = self.assertRaises(ConfigError, loadConfig, path, registry=FAKE_REGISTRY)
        self.assertEqual(str(error), f"{path}: server[1].port: must be 1-65535, got 0")

    def test_invalidTOML(self) -> None:
        """
        A file that is not TOML is reported with the parser's reason and
        line.
        """
        path = self.write(b"[load_balancer]\nport = \n")
        error = self.assertRaises(ConfigError, loadConfig, path, registry=FAKE_REGISTRY)
        self.assertEqual((error.source, error.path), (path, ""))
        self.assertTrue(str(error).startswith(f"{path}: not valid TOML: "), str(error))
        self.assertIn("line 2", str(error))

    def test_notUTF8(self) -> None:
        """
        A file that is not UTF-8 is reported as such.
        """
        path = self.write(b"[load_balancer]\n# \xff\xfe\n")
        error = self.assertRaises(ConfigError, loadConfig, path, registry=FAKE_REGISTRY)
        self.assertTrue(str(error).startswith(f"{path}: not UTF-8 text: "), str(error))
        self.assertIn("0xff", str(error))

    def test_missing(self) -> None:
        """
        A missing file is reported with the system's reason.
        """
        path = os.path.join(self.mktemp(), "lb.toml")
        error = self.assertRaises(ConfigError, loadConfig, path, registry=FAKE_REGISTRY)
        self.assertEqual(str(error), f"{path}: cannot read: No such file or directory")

    def test_directory(self) -> None:
        """
        A directory given as the file is reported as unreadable.
        """
        path = self.mktemp()
        os.makedirs(path)
        error = self.assertRaises(ConfigError, loadConfig, path, registry=FAKE_REGISTRY)
        self.assertEqual(str(error), f"{path}: cannot read: Is a directory")

    def test_permissionDenied(self) -> None:
        """
        A file this process may not read is reported as such.
        """
        if os.geteuid() == 0:
            raise SkipTest("root can read a file of any mode")
        path = self.write(SERVER.encode("utf-8"))
        os.chmod(path, 0)
        self.addCleanup(os.chmod, path, 0o600)
        error = self.assertRaises(ConfigError, loadConfig, path, registry=FAKE_REGISTRY)
        self.assertEqual(str(error), f"{path}: cannot read: Permission denied")

    def test_readFileError(self) -> None:
        """
        An C{OSError} from the injected reader is reported with its reason.
        """

        def readFile(path: str) -> bytes:
            raise PermissionError(errno.EACCES, "Permission denied", path)

        error = self.assertRaises(
            ConfigError, loadConfig, "lb.toml", Overrides(), FAKE_REGISTRY, readFile
        )
        self.assertEqual(str(error), "lb.toml: cannot read: Permission denied")

    def test_readFile(self) -> None:
        """
        The injected reader is given the path and its bytes are parsed.
        """
        paths = []

        def readFile(path: str) -> bytes:
            paths.append(path)
            return SERVER.encode("utf-8")

        c = loadConfig("/etc/txlb/lb.toml", Overrides(), FAKE_REGISTRY, readFile)
        self.assertEqual(paths, ["/etc/txlb/lb.toml"])
        self.assertEqual(c.source, "/etc/txlb/lb.toml")


class ParseBackendsTests(SynchronousTestCase):
    """
    L{parseBackends} reads C{--backends HOST:PORT,...}.
    """

    def test_good(self) -> None:
        """
        Hosts, IPv4 and bracketed IPv6 addresses with ports, spaces and empty
        entries ignored.
        """
        for text, expected in [
            ("127.0.0.1:3000", (("127.0.0.1", 3000),)),
            (
                "10.0.0.1:80,backend.internal:8080",
                (("10.0.0.1", 80), ("backend.internal", 8080)),
            ),
            ("[::1]:80", (("::1", 80),)),
            ("[2001:db8::1]:443,h:65535", (("2001:db8::1", 443), ("h", 65535))),
            (" a:1 , b:2 ,", (("a", 1), ("b", 2))),
        ]:
            self.assertEqual(parseBackends(text), expected, text)

    def test_bad(self) -> None:
        """
        Missing hosts and ports, bad ports and empty lists are refused with a
        message naming the entry.
        """
        for text, message in [
            ("backend", "--backends: expected HOST:PORT, got 'backend'"),
            (":80", "--backends: expected HOST:PORT, got ':80'"),
            ("h:", "--backends: port must be a number, got 'h:'"),
            ("h:http", "--backends: port must be a number, got 'h:http'"),
            ("h:0", "--backends: port must be 1-65535, got 'h:0'"),
            ("a:1,h:65536", "--backends: port must be 1-65535, got 'h:65536'"),
            ("", "--backends: give at least one HOST:PORT"),
            (" , ", "--backends: give at least one HOST:PORT"),
        ]:
            error = self.assertRaises(ValueError, parseBackends, text)
            self.assertEqual(str(error), message)

    def test_bracketedAddressWithoutPort(self) -> None:
        """
        A bracketed IPv6 address without a port is refused, naming the entry.
        """
        error = self.assertRaises(ValueError, parseBackends, "10.0.0.1:80,[::1]")
        self.assertIn("'[::1]'", str(error))

    def test_what(self) -> None:
        """
        Messages name the option given as C{what}.
        """
        error = self.assertRaises(ValueError, parseBackends, "h", "TXLB_BACKENDS")
        self.assertEqual(str(error), "TXLB_BACKENDS: expected HOST:PORT, got 'h'")
