"""
End-to-end tests of health checking, limits and lifecycle: a real C{twistd
txlb} process, real backends on 127.0.0.1 killed and restarted under load,
SIGTERM with requests in flight, SIGHUP under load.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from txlb.test import procs
from txlb.test.l7backends import NamedSite
from txlb.test.loadclients import Load
from txlb.test.test_integration_l7 import Collector


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def sleep(seconds: float) -> Deferred[None]:
    """
    Wait C{seconds} of real time (integration tests only).
    """
    return deferLater(_reactor(), seconds, lambda: None)


class LifecycleIntegrationTests(TestCase):
    """
    A real txlb under real load while backends fail and operators signal.
    """

    timeout = 240

    def setUp(self) -> None:
        self.tmp = FilePath(self.mktemp())
        self.tmp.makedirs()
        self.ports: dict[int, Any] = {}

    @inlineCallbacks
    def startSite(self, name: bytes, port: int = 0):
        """
        Start a L{NamedSite} on 127.0.0.1 (on C{port}, or a free one);
        fire with C{(site, port)}.
        """
        site = NamedSite(name)
        listening = yield TCP4ServerEndpoint(_reactor(), port, interface="127.0.0.1").listen(site)
        number = listening.getHost().port
        self.ports[number] = listening
        self.addCleanup(self.stopSite, number)
        return site, number

    def stopSite(self, number: int) -> Any:
        listening = self.ports.pop(number, None)
        if listening is None:
            return None
        return listening.stopListening()

    def writeConfig(self, text: str) -> str:
        path = self.tmp.child("lb.toml")
        path.setContent(text.encode("utf-8"))
        return path.path

    @inlineCallbacks
    def startTxlb(self, config: str, listeners: int = 1):
        """
        Run txlb on C{config} until the test ends; fire with the process
        and the ports of its first C{listeners} listeners by name.
        """
        proc = procs.spawnTxlb(_reactor(), "--config", config, cwd=self.tmp.path)
        self.addCleanup(proc.stop)
        yield proc.waitFor(procs.LISTENING)
        while len(procs.LISTENING.findall(proc.output)) < listeners:
            yield sleep(0.05)
        ports = {
            name.decode(): int(port)
            for name, _, _, port in procs.LISTENING.findall(proc.output)
        }
        return proc, ports

    def tail(self, proc: procs.WatchedProcess) -> str:
        """
        The end of C{proc}'s output, for failure messages.
        """
        return "txlb output (end):\n" + proc.output.decode(errors="replace")[-3000:]

    def countLines(self, proc: procs.WatchedProcess, pattern: bytes) -> int:
        return len(re.findall(pattern, proc.output))

    @inlineCallbacks
    def waitForCount(self, proc: procs.WatchedProcess, pattern: bytes, count: int):
        """
        Wait until C{pattern} appears C{count} times in the output.
        """
        for _ in range(int(procs.WAIT_SECONDS / 0.05)):
            if self.countLines(proc, pattern) >= count:
                return
            yield sleep(0.05)
        self.fail(
            f"{pattern!r} not seen {count} times; output:\n"
            + proc.output.decode(errors="replace")[-4000:]
        )

    # ------------------------------------------------------------- health

    @inlineCallbacks
    def test_backendKilledAndRestartedUnderLoad(self):
        """
        With health checks every 0.5 s (fall 2, rise 2), a backend killed
        under load of 20 keep-alive clients is out of rotation within 3 s
        and back after it restarts, and no request fails meanwhile (a
        refused connection is retried on another backend).
        """
        (siteA, portA) = yield self.startSite(b"a")
        (siteB, portB) = yield self.startSite(b"b")
        config = self.writeConfig(
            '[load_balancer]\naddress = "127.0.0.1"\nport = 0\nlayer = "L7"\n'
            "[health_check]\ntype = \"http\"\npath = \"/health\"\n"
            "interval = 0.5\ntimeout = 0.4\nfall = 2\nrise = 2\n"
            f'[[server]]\naddress = "127.0.0.1"\nport = {portA}\n'
            f'[[server]]\naddress = "127.0.0.1"\nport = {portB}\n'
        )
        proc, ports = yield self.startTxlb(config)
        load = Load(_reactor(), ports["default"], clients=20)
        load.start()
        yield sleep(1.0)
        self.assertTrue(siteB.requests)
        # Kill b: it stops listening and its connections are cut.
        yield self.stopSite(portB)
        siteB.dropConnections()
        killed = _reactor().seconds()
        yield self.waitForCount(proc, rb"backend 127\.0\.0\.1:%d of pool default is DOWN" % portB, 1)
        self.assertLess(_reactor().seconds() - killed, 3.0, self.tail(proc))
        servedB = len(siteB.requests)
        yield sleep(0.5)
        self.assertEqual(len(siteB.requests), servedB)
        # Restart it on the same port.
        (siteB2, _) = yield self.startSite(b"b", portB)
        # Its second UP line: the first was at startup.
        yield self.waitForCount(proc, rb"backend 127\.0\.0\.1:%d of pool default is UP" % portB, 2)
        yield sleep(1.0)
        yield load.stop()
        self.assertTrue(
            [r for r in siteB2.requests if r[1] == b"/"],
            "b got no traffic back\n" + self.tail(proc),
        )
        self.assertEqual(dict(load.errors), {}, self.tail(proc))
        self.assertGreater(load.answered, 100)

    # ---------------------------------------------------------- rate limit

    @inlineCallbacks
    def test_rateLimit429(self):
        """
        Past its burst, a client is answered 429 with Retry-After and the
        connection is closed.
        """
        (_, port) = yield self.startSite(b"a")
        config = self.writeConfig(
            '[load_balancer]\naddress = "127.0.0.1"\nport = 0\nlayer = "L7"\n'
            "[rate_limit]\nrequests_per_second = 1\nburst = 3\n"
            f'[[server]]\naddress = "127.0.0.1"\nport = {port}\n'
        )
        proc, ports = yield self.startTxlb(config)
        client = Collector()
        yield connectProtocol(
            TCP4ClientEndpoint(_reactor(), "127.0.0.1", ports["default"]), client
        )
        client.transport.write(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 5
        )
        received = yield client.done
        self.assertEqual(received.count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual(received.count(b"HTTP/1.1 429 Too Many Requests"), 1)
        self.assertIn(b"Retry-After: 1\r\n", received)

    # ------------------------------------------------------------ SIGTERM

    @inlineCallbacks
    def test_sigtermDrainsInFlight(self):
        """
        On SIGTERM txlb stops accepting at once, lets the requests in
        flight finish (with C{Connection: close}), and exits 0 once they
        have.
        """
        (site, port) = yield self.startSite(b"a")
        config = self.writeConfig(
            '[load_balancer]\naddress = "127.0.0.1"\nport = 0\nlayer = "L7"\n'
            f'[[server]]\naddress = "127.0.0.1"\nport = {port}\n'
        )
        proc, ports = yield self.startTxlb(config)
        clients = []
        for _ in range(3):
            client = Collector()
            yield connectProtocol(
                TCP4ClientEndpoint(_reactor(), "127.0.0.1", ports["default"]), client
            )
            client.transport.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(client)
        while len(site.held) < 3:
            yield site.arrived
        proc.transport.signalProcess("TERM")
        yield proc.waitFor(rb"draining 3 connections")
        refused = yield self.assertFailure(
            connectProtocol(
                TCP4ClientEndpoint(_reactor(), "127.0.0.1", ports["default"]), Collector()
            ),
            ConnectionRefusedError,
        )
        self.assertIsNotNone(refused)
        self.assertIsNone(proc.exitCode)
        site.releaseHeld()
        for client in clients:
            received = yield client.done
            self.assertTrue(received.startswith(b"HTTP/1.1 200 OK\r\n"), received)
            self.assertIn(b"Connection: close\r\n", received)
            # twisted.web sends the name chunked.
            self.assertTrue(received.endswith(b"2\r\na\n\r\n0\r\n\r\n"), received)
        code = yield proc.ended
        self.assertEqual(code, 0)
        self.assertIn(b"drained: every connection finished", proc.output)
        self.assertNotIn(b"Traceback", proc.output)

    @inlineCallbacks
    def test_secondSignalCutsDrain(self):
        """
        A second SIGTERM during the drain cuts what is left and txlb exits
        at once, without a traceback.
        """
        (site, port) = yield self.startSite(b"a")
        config = self.writeConfig(
            '[load_balancer]\naddress = "127.0.0.1"\nport = 0\nlayer = "L7"\n'
            "[lifecycle]\ndrain_timeout = 60\n"
            f'[[server]]\naddress = "127.0.0.1"\nport = {port}\n'
        )
        proc, ports = yield self.startTxlb(config)
        client = Collector()
        yield connectProtocol(
            TCP4ClientEndpoint(_reactor(), "127.0.0.1", ports["default"]), client
        )
        client.transport.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        yield site.arrived
        proc.transport.signalProcess("TERM")
        yield proc.waitFor(rb"draining 1 connections")
        started = _reactor().seconds()
        proc.transport.signalProcess("TERM")
        code = yield proc.ended
        self.assertLess(_reactor().seconds() - started, 5.0)
        self.assertEqual(code, 0)
        self.assertIn(b"SIGTERM again: cutting 1 connections now", proc.output)
        self.assertNotIn(b"Traceback", proc.output)
        yield client.done

    @inlineCallbacks
    def test_drainDeadline(self):
        """
        Requests still in flight at the drain deadline are cut and txlb
        exits.
        """
        (site, port) = yield self.startSite(b"a")
        config = self.writeConfig(
            '[load_balancer]\naddress = "127.0.0.1"\nport = 0\nlayer = "L7"\n'
            "[lifecycle]\ndrain_timeout = 1\n"
            f'[[server]]\naddress = "127.0.0.1"\nport = {port}\n'
        )
        proc, ports = yield self.startTxlb(config)
        client = Collector()
        yield connectProtocol(
            TCP4ClientEndpoint(_reactor(), "127.0.0.1", ports["default"]), client
        )
        client.transport.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        yield site.arrived
        proc.transport.signalProcess("TERM")
        code = yield proc.ended
        self.assertEqual(code, 0)
        self.assertIn(b"drain deadline passed: cutting 1 connections", proc.output)
        yield client.done

    # ------------------------------------------------------------- SIGHUP

    def reloadConfig(self, backends: list[int], auxPort: int, webPort: int) -> str:
        servers = "".join(
            f'[[pools.app.servers]]\naddress = "127.0.0.1"\nport = {p}\n' for p in backends
        )
        return self.writeConfig(
            "[listeners.web]\n"
            f'address = "127.0.0.1"\nport = {webPort}\nlayer = "L7"\npool = "app"\n'
            "[listeners.aux]\n"
            f'address = "127.0.0.1"\nport = {auxPort}\nlayer = "L4"\npool = "app"\n'
            "[pools.app]\n"
            "[pools.app.health_check]\ninterval = 0.5\ntimeout = 0.4\n"
            + servers
        )

    @inlineCallbacks
    def test_reloadsUnderLoadFailNothing(self):
        """
        With 100 keep-alive clients on one listener, 10 SIGHUP reloads that
        add and remove servers and move another listener cause no failed
        request, no reset and no refused connection.
        """
        sites = []
        for name in (b"a", b"b", b"c", b"d"):
            sites.append((yield self.startSite(name)))
        backendPorts = [port for _, port in sites]
        webPort = procs.freePort()
        auxPorts = [procs.freePort() for _ in range(11)]
        config = self.reloadConfig(backendPorts[:2], auxPorts[0], webPort)
        proc, ports = yield self.startTxlb(config, listeners=2)
        self.assertEqual(ports, {"web": webPort, "aux": auxPorts[0]})
        load = Load(_reactor(), webPort, clients=100)
        load.start()
        yield sleep(1.0)
        for i in range(1, 11):
            # Rotate through subsets of two or three of the four backends.
            chosen = [backendPorts[(i + k) % 4] for k in range(2 + i % 2)]
            self.reloadConfig(chosen, auxPorts[i], webPort)
            proc.transport.signalProcess("HUP")
            yield self.waitForCount(proc, rb"reloaded ", i)
            yield sleep(0.4)
        self.assertNotIn(b"reload failed", proc.output)
        # The moved L4 listener answers on its last port.
        client = Collector()
        yield connectProtocol(
            TCP4ClientEndpoint(_reactor(), "127.0.0.1", auxPorts[10]), client
        )
        client.transport.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        received = yield client.done
        self.assertTrue(received.startswith(b"HTTP/1.0 200 OK"), received)
        yield load.stop()
        self.assertEqual(dict(load.errors), {}, self.tail(proc))
        self.assertGreater(load.answered, 1000)
        self.assertEqual(set(load.statuses), {200})
        code = yield proc.stop()
        self.assertEqual(code, 0)
        self.assertNotIn(b"Traceback", proc.output)

    @inlineCallbacks
    def test_newListenerAcceptsAfterNewPoolsFirstRound(self):
        """
        A listener added by a SIGHUP reload, on a pool added with it, does
        not answer before that pool's first health round is over: a client
        that connects at once waits, and is then served by the pool's
        server (without the wait it would get 503 from a pool whose only
        server is still pending).
        """
        (_, portA) = yield self.startSite(b"a")
        (siteB, portB) = yield self.startSite(b"b")
        webPort, apiPort = procs.freePort(), procs.freePort()
        listener = (
            '[listeners.web]\naddress = "127.0.0.1"\nport = {web}\nlayer = "L7"\npool = "app"\n'
            "[pools.app]\n"
            '[[pools.app.servers]]\naddress = "127.0.0.1"\nport = {a}\n'
        ).format(web=webPort, a=portA)
        config = self.writeConfig(listener)
        proc, ports = yield self.startTxlb(config)
        # The new pool's first check is held by its server until released.
        self.writeConfig(
            listener
            + '[listeners.api]\naddress = "127.0.0.1"\n'
            f'port = {apiPort}\nlayer = "L7"\npool = "fresh"\n'
            "[pools.fresh]\n"
            '[pools.fresh.health_check]\ntype = "http"\npath = "/hold"\n'
            "interval = 5\ntimeout = 4\njitter = 0\n"
            f'[[pools.fresh.servers]]\naddress = "127.0.0.1"\nport = {portB}\n'
        )
        proc.transport.signalProcess("HUP")
        yield proc.waitFor(rb"reloaded ")
        check = yield siteB.arrived
        client = Collector()
        yield connectProtocol(TCP4ClientEndpoint(_reactor(), "127.0.0.1", apiPort), client)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        yield sleep(0.5)
        self.assertEqual(client.received, b"", self.tail(proc))
        self.assertFalse(check.finished)
        siteB.releaseHeld()
        received = yield client.done
        self.assertTrue(received.startswith(b"HTTP/1.1 200 OK"), received)
        self.assertTrue(received.endswith(b"b\n"), received)

    @inlineCallbacks
    def test_invalidReloadKeepsRunning(self):
        """
        A SIGHUP with a broken file logs the error as at startup and keeps
        serving with the old configuration.
        """
        (_, port) = yield self.startSite(b"a")
        webPort = procs.freePort()
        config = self.writeConfig(
            '[load_balancer]\naddress = "127.0.0.1"\n'
            f'port = {webPort}\nlayer = "L7"\n'
            f'[[server]]\naddress = "127.0.0.1"\nport = {port}\n'
        )
        proc, ports = yield self.startTxlb(config)
        self.writeConfig(
            '[load_balancer]\naddress = "127.0.0.1"\n'
            f'port = {webPort}\nlayer = "L7"\n'
            '[[server]]\naddress = "127.0.0.1"\nport = 70000\n'
        )
        proc.transport.signalProcess("HUP")
        yield proc.waitFor(
            rb"reload failed, configuration unchanged: \S*lb.toml: server\[1\].port: "
            rb"must be 1-65535, got 70000"
        )
        client = Collector()
        yield connectProtocol(TCP4ClientEndpoint(_reactor(), "127.0.0.1", webPort), client)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = yield client.done
        self.assertTrue(received.startswith(b"HTTP/1.1 200 OK"), received)
