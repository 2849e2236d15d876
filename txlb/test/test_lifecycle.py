"""
Tests for txlb's lifecycle in memory: the sequenced, draining stop of
L{txlb.service.TxlbService}, its signal handling, and reloads
(L{txlb.reload}).
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txlb.config import Config, ConfigError, parseConfig
from txlb.pool import AdminState, QueueTimeout
from txlb.service import ListenerService, TxlbService


def fullConfig(
    servers: dict[str, list[int]] | None = None,
    listeners: dict[str, dict[str, Any]] | None = None,
    pools: dict[str, dict[str, Any]] | None = None,
    top: dict[str, Any] | None = None,
) -> Config:
    """
    A full-form configuration: C{servers} maps pool names to backend ports
    on 127.0.0.1; C{listeners} maps names to listener tables.
    """
    servers = servers if servers is not None else {"app": [3000, 3001]}
    listeners = listeners if listeners is not None else {
        "web": {"port": 8080, "layer": "L7", "pool": "app"}
    }
    document: dict[str, Any] = dict(top or {})
    document["listeners"] = listeners
    document["pools"] = {
        name: {
            **(pools or {}).get(name, {}),
            "servers": [{"address": "127.0.0.1", "port": p} for p in ports],
        }
        for name, ports in servers.items()
    }
    return parseConfig(document, "lb.toml")


def noFileLimit() -> tuple[int, int]:
    return (65536, 65536)


class PortTakenReactor(MemoryReactorClock):
    """
    A memory reactor on which the ports in C{taken} cannot be bound.
    """

    def __init__(self, taken: set[int]) -> None:
        super().__init__()
        self.taken = taken

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port in self.taken:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


class FakeFactory:
    """
    Stands for a listener's protocol factory with open connections.
    """

    def __init__(self, active: int) -> None:
        self.activeCount = active
        self.draining = False
        self.aborted = False
        self._waiters: list[Deferred[None]] = []

    def startDraining(self) -> None:
        self.draining = True

    def drained(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.activeCount == 0:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    def finishOne(self) -> None:
        self.activeCount -= 1
        if self.activeCount == 0:
            for d in self._waiters:
                d.callback(None)

    def abortAll(self) -> None:
        self.aborted = True
        while self.activeCount:
            self.finishOne()


class FakeSignals:
    """
    The parts of the C{signal} module txlb uses.
    """

    SIGTERM = signal.SIGTERM
    SIGINT = signal.SIGINT
    SIGHUP = signal.SIGHUP

    def __init__(self) -> None:
        self.handlers: dict[int, Any] = {}

    def signal(self, number: int, handler: Any) -> None:
        self.handlers[number] = handler


def started(config: Config, reactor: Any = None, **kwargs: Any) -> TxlbService:
    """
    A started L{TxlbService} for C{config} on a memory reactor.
    """
    service = TxlbService(
        config, reactor if reactor is not None else MemoryReactorClock(),
        fileLimit=noFileLimit, **kwargs
    )
    service.privilegedStartService()
    service.startService()
    return service


def captureLog(case: SynchronousTestCase) -> list[str]:
    """
    Collect the text of every log event until C{case} ends.
    """
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines


class StopTests(SynchronousTestCase):
    """
    L{TxlbService.stopService} stops accepting, drains, then cuts.
    """

    def test_stopsListeningFirstThenDrains(self) -> None:
        """
        The listeners stop at once; the stop waits for open connections,
        which are told to drain; it finishes when they are gone.
        """
        reactor = MemoryReactorClock()
        service = started(fullConfig(), reactor)
        factory = FakeFactory(active=2)
        service.retired.add(factory)
        (listener,) = list(service.listeners)
        d = service.stopService()
        self.assertIsNone(listener.port)
        self.assertTrue(factory.draining)
        self.assertTrue(service.listeners.running == 0)
        self.assertNoResult(d)
        factory.finishOne()
        self.assertNoResult(d)
        factory.finishOne()
        self.successResultOf(d)
        self.assertFalse(factory.aborted)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_drainDeadlineCuts(self) -> None:
        """
        What is still open at the drain deadline is cut, and the stop
        finishes.
        """
        reactor = MemoryReactorClock()
        service = started(fullConfig(top={"lifecycle": {"drain_timeout": 7}}), reactor)
        factory = FakeFactory(active=1)
        service.retired.add(factory)
        lines = captureLog(self)
        d = service.stopService()
        reactor.advance(6.9)
        self.assertNoResult(d)
        self.assertFalse(factory.aborted)
        reactor.advance(0.2)
        self.assertTrue(factory.aborted)
        self.successResultOf(d)
        self.assertIn("drain deadline passed: cutting 1 connections", lines)

    def test_nothingOpenStopsAtOnce(self) -> None:
        """
        With no connection open the stop completes at once.
        """
        service = started(fullConfig())
        self.successResultOf(service.stopService())

    def test_healthStopsAfterDrain(self) -> None:
        """
        Health checking keeps running while connections drain (a backend
        going down mid-drain is still noticed), and stops after.
        """
        config = fullConfig(pools={"app": {"health_check": {"interval": 1, "timeout": 0.5}}})
        service = started(config)
        factory = FakeFactory(active=1)
        service.retired.add(factory)
        (checker,) = list(service.health)
        d = service.stopService()
        self.assertTrue(checker.running)
        factory.finishOne()
        self.successResultOf(d)
        self.assertFalse(checker.running)

    def test_idleKeepAliveClosedOnDrain(self) -> None:
        """
        An L7 client connection waiting between requests is closed when the
        drain starts; responses from then on carry C{Connection: close}.
        """
        service = started(fullConfig())
        (listener,) = list(service.listeners)
        factory = listener.factory
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        d = service.stopService()
        self.assertTrue(factory.stopping)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.successResultOf(d)


class StartTests(SynchronousTestCase):
    """
    With health checks, listeners accept only after the first round.
    """

    def test_acceptAfterFirstRound(self) -> None:
        """
        Listeners are bound at start but accept nothing until every pool's
        first round of checks is over (here: the checks time out).
        """
        reactor = MemoryReactorClock()
        config = fullConfig(
            pools={"app": {"health_check": {"interval": 1, "timeout": 0.5, "jitter": 0}}}
        )
        service = TxlbService(config, reactor, fileLimit=noFileLimit)
        events: list[str] = []
        for listener in service.listeners:
            listener.pauseAccepting = lambda: events.append("pause")
            listener.resumeAccepting = lambda: events.append("resume")
        service.privilegedStartService()
        service.startService()
        self.assertEqual(events, ["pause"])
        reactor.advance(0.4)
        self.assertEqual(events, ["pause"])
        reactor.advance(0.2)
        self.assertEqual(events, ["pause", "resume"])

    def test_noHealthCheckAcceptsAtOnce(self) -> None:
        """
        Without health checks nothing is held back.
        """
        service = TxlbService(fullConfig(), MemoryReactorClock(), fileLimit=noFileLimit)
        events: list[str] = []
        for listener in service.listeners:
            listener.pauseAccepting = lambda: events.append("pause")
        service.privilegedStartService()
        service.startService()
        self.assertEqual(events, [])


class SignalTests(SynchronousTestCase):
    """
    SIGTERM/SIGINT stop gracefully, a second one cuts; SIGHUP reloads.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.signals = FakeSignals()
        self.calls: list[Any] = []
        self.reactor.callFromThread = lambda f, *a: self.calls.append((f, a))
        self.reactor.running = True
        self.service = started(fullConfig(), self.reactor, signals=self.signals)
        # callWhenRunning on a running memory reactor runs at once.
        self.reactor.callWhenRunning(lambda: None)

    def test_handlersInstalledWhenRunning(self) -> None:
        """
        Handlers for SIGTERM, SIGINT and SIGHUP are installed once the
        reactor runs (the reactor replaces earlier ones as it starts).
        """
        self.assertEqual(
            set(self.signals.handlers),
            {signal.SIGTERM, signal.SIGINT, signal.SIGHUP},
        )

    def test_handlersDeferToReactor(self) -> None:
        """
        A handler does nothing itself: it hands the work to the reactor
        thread-safely, since it runs between two bytecodes of anything.
        """
        self.signals.handlers[signal.SIGTERM](signal.SIGTERM, None)
        self.signals.handlers[signal.SIGHUP](signal.SIGHUP, None)
        self.assertEqual(
            self.calls,
            [
                (self.service.stopRequested, (signal.SIGTERM,)),
                (self.service.reload, ()),
            ],
        )

    def test_firstStopsSecondCuts(self) -> None:
        """
        The first SIGTERM stops the reactor (twistd then stops the service
        gracefully); a second one, while draining, cuts every connection
        instead of raising as a second C{reactor.stop()} would.
        """
        stops = []
        self.reactor.stop = lambda: stops.append(True)
        factory = FakeFactory(active=3)
        self.service.retired.add(factory)
        self.service.stopRequested(signal.SIGTERM)
        self.assertEqual(stops, [True])
        d = self.service.stopService()
        self.assertNoResult(d)
        lines = captureLog(self)
        self.service.stopRequested(signal.SIGINT)
        self.assertEqual(stops, [True])
        self.assertTrue(factory.aborted)
        self.successResultOf(d)
        self.assertIn("SIGINT again: cutting 3 connections now", lines)


class SignalEdgeTests(SynchronousTestCase):
    """
    Signals at odd times.
    """

    def test_twoSignalsBeforeShutdownStarts(self) -> None:
        """
        Two stop signals handled before the reactor begins its shutdown
        stop it once (a second C{reactor.stop()} would raise); the second
        cuts the drain instead.
        """
        reactor = MemoryReactorClock()
        reactor.running = True
        stops: list[bool] = []
        reactor.stop = lambda: stops.append(True)
        service = started(fullConfig(), reactor)
        factory = FakeFactory(active=1)
        service.retired.add(factory)
        service.stopRequested(signal.SIGTERM)
        service.stopRequested(signal.SIGINT)
        self.assertEqual(stops, [True])
        self.assertTrue(factory.aborted)

    def test_reloadHandlerBeforeBinding(self) -> None:
        """
        SIGHUP is handled from before the first listener binds (its default
        action would kill the process), without waiting for the reactor to
        run; SIGTERM and SIGINT wait for it (it replaces earlier handlers).
        """
        signals = FakeSignals()
        reactor = MemoryReactorClock()
        service = TxlbService(fullConfig(), reactor, fileLimit=noFileLimit,
                              signals=signals)
        seen = []
        reactor.listenTCP = lambda *a, **kw: seen.append(set(signals.handlers)) or (
            MemoryReactorClock.listenTCP(reactor, *a, **kw)
        )
        service.privilegedStartService()
        self.assertEqual(seen, [{signal.SIGHUP}])

    def test_ignoredSIGINTStaysIgnored(self) -> None:
        """
        A SIGINT ignored by whoever started txlb (nohup, C{&}) stays
        ignored, as the reactor leaves it.
        """

        class IgnoringSignals(FakeSignals):
            SIG_IGN = signal.SIG_IGN

            def getsignal(self, number: int) -> Any:
                return signal.SIG_IGN if number == signal.SIGINT else signal.SIG_DFL

        signals = IgnoringSignals()
        reactor = MemoryReactorClock()
        reactor.running = True
        started(fullConfig(), reactor, signals=signals)
        self.assertEqual(set(signals.handlers), {signal.SIGTERM, signal.SIGHUP})


class ReloadTests(SynchronousTestCase):
    """
    L{TxlbService.reload} applies a new configuration in place.
    """

    def reloading(self, first: Config, reactor: Any = None) -> tuple[TxlbService, list[Any]]:
        """
        A started service for C{first} whose reloader returns the next
        item put in the returned list (a L{Config} or an exception).
        """
        nextConfigs: list[Any] = []

        def reloader() -> Config:
            item = nextConfigs.pop(0)
            if isinstance(item, Exception):
                raise item
            return item

        service = started(first, reactor, reloader=reloader)
        return service, nextConfigs

    def test_serversAddedRemovedKept(self) -> None:
        """
        A kept server keeps its L{Backend} (counters, health); a removed
        one leaves the pool and drains; an added one joins.
        """
        service, configs = self.reloading(fullConfig({"app": [3000, 3001]}))
        pool = service.pools["app"]
        kept = pool.backend("127.0.0.1:3000")
        gone = pool.backend("127.0.0.1:3001")
        kept.acquire()
        gone.acquire()
        configs.append(fullConfig({"app": [3000, 3002]}))
        lines = captureLog(self)
        self.assertTrue(service.reload())
        self.assertEqual(
            [b.name for b in pool.backends], ["127.0.0.1:3000", "127.0.0.1:3002"]
        )
        self.assertIs(pool.backend("127.0.0.1:3000"), kept)
        self.assertEqual(kept.activeConnections, 1)
        self.assertIs(gone.state, AdminState.draining)
        self.assertIsNone(gone.pool)
        gone.release()
        self.assertEqual(gone.activeConnections, 0)
        (line,) = [x for x in lines if x.startswith("reloaded")]
        self.assertEqual(
            line,
            "reloaded lb.toml: server 127.0.0.1:3001 of pool app removed; "
            "server 127.0.0.1:3002 of pool app added",
        )

    def test_weightChangedInPlace(self) -> None:
        """
        A changed weight applies to the same backend.
        """
        first = fullConfig()
        service, configs = self.reloading(first)
        backend = service.pools["app"].backend("127.0.0.1:3000")
        document = {
            "listeners": {"web": {"port": 8080, "layer": "L7", "pool": "app"}},
            "pools": {"app": {"servers": [
                {"address": "127.0.0.1", "port": 3000, "weight": 5},
                {"address": "127.0.0.1", "port": 3001},
            ]}},
        }
        configs.append(parseConfig(document, "lb.toml"))
        self.assertTrue(service.reload())
        self.assertIs(service.pools["app"].backend("127.0.0.1:3000"), backend)
        self.assertEqual(backend.weight, 5)

    def test_addedServerPendingWithHealthCheck(self) -> None:
        """
        With a health check, a server added by a reload takes no traffic
        until a check passed.
        """
        pools = {"app": {"health_check": {"interval": 1, "timeout": 0.5}}}
        service, configs = self.reloading(fullConfig({"app": [3000]}, pools=pools))
        configs.append(fullConfig({"app": [3000, 3001]}, pools=pools))
        service.reload()
        added = service.pools["app"].backend("127.0.0.1:3001")
        self.assertFalse(added.healthy)
        self.assertNotIn(added, service.pools["app"].candidates())

    def test_strategySwapped(self) -> None:
        """
        A changed algorithm rebuilds the strategy; backends stay.
        """
        service, configs = self.reloading(fullConfig())
        pool = service.pools["app"]
        backends = pool.backends
        configs.append(fullConfig(pools={"app": {"algorithm": "least_connections"}}))
        service.reload()
        self.assertEqual(pool.algorithm, "least_connections")
        self.assertEqual(pool.backends, backends)

    def test_invalidConfigChangesNothing(self) -> None:
        """
        A configuration error is logged with the startup message and
        changes nothing.
        """
        first = fullConfig()
        service, configs = self.reloading(first)
        configs.append(ConfigError("lb.toml", "pools.app.servers[1].port", "must be 1-65535, got 0"))
        lines = captureLog(self)
        self.assertFalse(service.reload())
        self.assertIs(service.config, first)
        self.assertIn(
            "reload failed, configuration unchanged: "
            "lb.toml: pools.app.servers[1].port: must be 1-65535, got 0",
            lines,
        )

    def test_listenerMoved(self) -> None:
        """
        A listener given a new port is bound there before anything else
        changes, and the old port stops.
        """
        reactor = MemoryReactorClock()
        service, configs = self.reloading(fullConfig(), reactor)
        (old,) = list(service.listeners)
        oldPort = old.port
        stopped = []
        oldPort.stopListening = lambda: stopped.append(True)
        configs.append(fullConfig(listeners={"web": {"port": 8081, "layer": "L7", "pool": "app"}}))
        service.reload()
        (new,) = list(service.listeners)
        self.assertEqual(stopped, [True])
        self.assertIsNot(new, old)
        self.assertEqual(reactor.tcpServers[-1][0], 8081)

    def test_listenerBindFailureChangesNothing(self) -> None:
        """
        When a new listener cannot be bound, the reload is refused whole:
        listeners bound for it are closed, pools are unchanged.
        """
        reactor = PortTakenReactor({9999})
        first = fullConfig({"app": [3000]})
        service, configs = self.reloading(first, reactor)
        configs.append(
            fullConfig(
                {"app": [3000, 3001]},
                listeners={
                    "web": {"port": 8080, "layer": "L7", "pool": "app"},
                    "new": {"port": 8082, "pool": "app"},
                    "bad": {"port": 9999, "pool": "app"},
                },
            )
        )
        lines = captureLog(self)
        self.assertFalse(service.reload())
        self.assertIs(service.config, first)
        self.assertEqual([b.name for b in service.pools["app"].backends], ["127.0.0.1:3000"])
        self.assertEqual([s.name for s in service.listeners], ["web"])
        self.assertIn(
            "reload failed, configuration unchanged: listener bad: cannot listen on "
            "tcp:port=9999:interface=0.0.0.0:backlog=1024: address already in use",
            lines,
        )

    def test_newListenerWaitsForNewPool(self) -> None:
        """
        A listener added by a reload that uses a pool added with it, with a
        health check, accepts once that pool's first round is over (as at
        startup); one added on a running pool accepts at once.
        """
        reactor = MemoryReactorClock()
        service, configs = self.reloading(fullConfig(), reactor)
        resumed: list[str] = []
        self.patch(
            ListenerService, "resumeAccepting",
            lambda listener: resumed.append(listener.listener.name),
        )
        configs.append(fullConfig(
            {"app": [3000, 3001], "fresh": [3002]},
            listeners={
                "web": {"port": 8080, "layer": "L7", "pool": "app"},
                "api": {"port": 8090, "layer": "L4", "pool": "fresh"},
                "more": {"port": 8091, "layer": "L4", "pool": "app"},
            },
            pools={"fresh": {"health_check": {"interval": 1, "timeout": 0.5, "jitter": 0}}},
        ))
        self.assertTrue(service.reload())
        self.assertEqual(resumed, ["more"])
        reactor.advance(0.4)
        self.assertEqual(resumed, ["more"])
        # The first round's checks time out: the round is over.
        reactor.advance(0.2)
        self.assertEqual(resumed, ["more", "api"])

    def test_removedPoolFailsItsQueue(self) -> None:
        """
        What waits in the queue of a pool a reload removes gives up at
        once, instead of at its queue timeout.
        """
        service, configs = self.reloading(fullConfig(
            {"app": [3000], "old": [3001]},
            pools={"old": {"max_queue": 5, "queue_timeout": 30}},
        ))
        old = service.pools["old"]
        (backend,) = old.backends
        backend.maxConnections = 1
        backend.acquire()
        waiting = old.wait()
        configs.append(fullConfig({"app": [3000]}))
        self.assertTrue(service.reload())
        self.failureResultOf(waiting, QueueTimeout)
        backend.release()

    def test_listenerAddedAndRemoved(self) -> None:
        """
        Listeners appear and disappear with the configuration; a removed L7
        listener's kept-alive clients are told to close.
        """
        service, configs = self.reloading(fullConfig())
        (web,) = list(service.listeners)
        configs.append(
            fullConfig(listeners={"api": {"port": 8090, "layer": "L4", "pool": "app"}})
        )
        service.reload()
        self.assertEqual([s.name for s in service.listeners], ["api"])
        self.assertTrue(web.factory.stopping)
        self.assertIsNone(web.port)

    def test_poolAddedAndRemoved(self) -> None:
        """
        Pools appear and disappear with the configuration.
        """
        service, configs = self.reloading(fullConfig())
        configs.append(
            fullConfig(
                {"api": [4000]},
                listeners={"web": {"port": 8080, "layer": "L7", "pool": "api"}},
            )
        )
        service.reload()
        self.assertEqual(list(service.pools), ["api"])
        (web,) = list(service.listeners)
        self.assertIs(web.factory.pools["api"].pool, service.pools["api"])

    def test_l7SettingsReconfiguredInPlace(self) -> None:
        """
        An L7 listener that stays where it is keeps its factory (and its
        connections) and takes the new settings.
        """
        service, configs = self.reloading(fullConfig())
        (web,) = list(service.listeners)
        factory = web.factory
        configs.append(
            fullConfig(
                listeners={"web": {
                    "port": 8080, "layer": "L7", "pool": "app", "max_header_size": 4096,
                }}
            )
        )
        service.reload()
        self.assertIs(web.factory, factory)
        self.assertEqual(factory.settings.maxHeaderSize, 4096)

    def test_rateLimitBucketsKept(self) -> None:
        """
        An unchanged rate limit keeps its buckets across a reload.
        """
        listeners = {"web": {
            "port": 8080, "layer": "L7", "pool": "app",
            "rate_limit": {"requests_per_second": 5},
        }}
        service, configs = self.reloading(fullConfig(listeners=listeners))
        (web,) = list(service.listeners)
        table = web.factory.rateLimit
        configs.append(fullConfig({"app": [3000]}, listeners=listeners))
        service.reload()
        self.assertIs(web.factory.rateLimit, table)

    def test_l4ListenerReconfiguredInPlace(self) -> None:
        """
        An L4 listener that stays where it is keeps its factory (and the
        port's factory, which for TLS or PROXY endpoints is a wrapper) and
        takes the new settings.
        """
        listeners = {"tcp": {"port": 8090, "layer": "L4", "pool": "app"}}
        service, configs = self.reloading(fullConfig(listeners=listeners))
        (tcp,) = list(service.listeners)
        factory = tcp.factory
        portFactory = object()
        tcp.port.factory = portFactory
        configs.append(
            fullConfig(
                listeners={"tcp": {"port": 8090, "layer": "L4", "pool": "app",
                                   "max_connections": 7}}
            )
        )
        service.reload()
        self.assertIs(tcp.factory, factory)
        self.assertIs(tcp.port.factory, portFactory)
        self.assertEqual(factory.maxConnections, 7)
        self.assertEqual(service.retired, set())

    def test_movedListenerKeepsFactory(self) -> None:
        """
        A listener moved to another port keeps its factory, so its counters
        and open connections carry on; nothing is retired.
        """
        service, configs = self.reloading(fullConfig())
        (web,) = list(service.listeners)
        factory = web.factory
        configs.append(
            fullConfig(listeners={"web": {"port": 8081, "layer": "L7", "pool": "app"}})
        )
        service.reload()
        (moved,) = list(service.listeners)
        self.assertIs(moved.factory, factory)
        self.assertFalse(factory.stopping)
        self.assertEqual(service.retired, set())

    def test_unexpectedErrorChangesNothing(self) -> None:
        """
        An endpoint that fails with something other than a bind error (an
        inherited descriptor that is not there) refuses the reload whole:
        what was bound for it is closed again, and nothing registered for
        it stays.
        """
        reactor = MemoryReactorClock()
        first = fullConfig()
        service, configs = self.reloading(first, reactor)
        upstreams = dict(service.upstreams)
        configs.append(
            fullConfig(
                {"app": [3000], "other": [4000]},
                listeners={
                    "web": {"port": 8080, "layer": "L7", "pool": "app"},
                    "new": {"port": 8085, "layer": "L7", "pool": "other"},
                    "sd": {"endpoint": "systemd:domain=INET:index=7", "pool": "app"},
                },
            )
        )
        lines = captureLog(self)
        self.assertFalse(service.reload())
        self.assertIs(service.config, first)
        self.assertEqual(service.upstreams, upstreams)
        self.assertNotIn("other", service.budgets)
        newPorts = [p for p in reactor.tcpServers if p[0] == 8085]
        self.assertEqual(len(newPorts), 1)
        self.assertTrue([x for x in lines if x.startswith("reload failed")], lines)

    def test_noReloader(self) -> None:
        """
        Without a file to re-read (the demo), SIGHUP only says so.
        """
        service = started(fullConfig())
        lines = captureLog(self)
        self.assertFalse(service.reload())
        self.assertIn("SIGHUP: no configuration file to reload", lines)


class AdminLifecycleTests(SynchronousTestCase):
    """
    The admin service starts, fails and reloads like a listener.
    """

    def test_portTakenIsStartupError(self) -> None:
        """
        An admin port that cannot be bound stops the start with one line.
        """
        from txlb.service import StartupError

        reactor = PortTakenReactor({9191})
        config = fullConfig(top={"admin": {"port": 9191}})
        service = TxlbService(config, reactor, fileLimit=noFileLimit)
        e = self.assertRaises(StartupError, service.privilegedStartService)
        self.assertEqual(
            str(e),
            "admin: cannot listen on tcp:port=9191:interface=127.0.0.1:backlog=50: "
            "address already in use",
        )

    def test_stopsAfterDrain(self) -> None:
        """
        The admin keeps answering while connections drain (operators watch
        the drain), and stops after.
        """
        service = started(fullConfig(top={"admin": {"port": 9191}}))
        factory = FakeFactory(active=1)
        service.retired.add(factory)
        d = service.stopService()
        self.assertIsNotNone(service.admin.port)
        factory.finishOne()
        self.successResultOf(d)
        self.assertIsNone(service.admin.port)

    def test_reloadAppliesToken(self) -> None:
        """
        A reload applies a new token at once; a new admin port is logged as
        needing a restart and the admin stays where it listens.
        """
        token = "0123456789abcdef-new"
        configs = [
            fullConfig(top={"admin": {"port": 9191, "token": token}}),
            fullConfig(top={"admin": {"port": 9292, "token": token}}),
        ]
        service = started(
            fullConfig(top={"admin": {"port": 9191}}), reloader=lambda: configs.pop(0)
        )
        lines = captureLog(self)
        service.reload()
        self.assertEqual(service.admin.guard.config.token, token)
        service.reload()
        self.assertEqual(service.admin.config.port, 9191)
        self.assertTrue(
            [x for x in lines if "admin: a new address or port needs a restart" in x],
            lines,
        )

    def test_widerAddressKeepsToken(self) -> None:
        """
        A reload that moves the admin to loopback and drops its token
        changes nothing until a restart: the admin still listens on the
        wider address, so it must keep its token.
        """
        token = "0123456789abcdef-old"
        first = fullConfig(top={"admin": {"address": "0.0.0.0", "port": 9191,
                                          "token": token}})
        second = fullConfig(top={"admin": {"address": "127.0.0.1", "port": 9191}})
        service = started(first, reloader=lambda: second)
        service.reload()
        self.assertEqual(service.admin.guard.config.token, token)
        self.assertEqual(service.admin.guard.config.address, "0.0.0.0")
