"""
End-to-end tests of the L4 relay: a real C{twistd txlb} process, real
backends and real clients on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from txlb.test import procs

GIB = 1024 * 1024 * 1024


def _reactor() -> Any:
    """
    The real reactor trial runs these tests on.
    """
    from twisted.internet import reactor

    return reactor


@implementer(IHalfCloseableProtocol)
class NamedBackend(Protocol):
    """
    Says its name on connect, echoes what it gets, and on the client's EOF
    writes C{bye} and closes.
    """

    def connectionMade(self) -> None:
        self.transport.write(self.factory.name + b"\n")

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.transport.write(b"bye")
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class NamedBackendFactory(Factory):
    protocol = NamedBackend

    def __init__(self, name: bytes) -> None:
        self.name = name


class Collector(Protocol):
    """
    A client that keeps what it receives and fires C{done} when closed.
    """

    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bytes] = Deferred()
        self.firstLine: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\n" in self.received and not self.firstLine.called:
            self.firstLine.callback(self.received.split(b"\n", 1)[0])

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(self.received)


class StreamingBackend(Protocol):
    """
    Sends C{total} bytes as fast as the connection takes them, honouring
    backpressure (a push producer), then closes.
    """

    def connectionMade(self) -> None:
        procs.ByteSource(
            self.transport, self.factory.total, onDone=self.transport.loseConnection
        ).start()


class CountingReader(Protocol):
    """
    Counts bytes; pauses reading for C{pauseSeconds} after the first MiB.
    """

    def __init__(self, pauseSeconds: float) -> None:
        self.count = 0
        self.pauseSeconds = pauseSeconds
        self.paused = False
        self.pausedOnce = False
        self.done: Deferred[int] = Deferred()
        self.resumed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        if not self.pausedOnce and self.count > 1024 * 1024:
            self.pausedOnce = True
            self.transport.pauseProducing()
            _reactor().callLater(self.pauseSeconds, self._resume)

    def _resume(self) -> None:
        self.resumed.callback(None)
        self.transport.resumeProducing()

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(self.count)


class L4IntegrationTests(TestCase):
    """
    C{twistd txlb} relaying real connections.
    """

    timeout = 180

    def setUp(self) -> None:
        self.tmp = FilePath(self.mktemp())
        self.tmp.makedirs()

    @inlineCallbacks
    def startBackends(self, names: list[bytes], factoryClass: Any = NamedBackendFactory):
        ports = []
        for name in names:
            port = yield TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1").listen(
                factoryClass(name)
            )
            self.addCleanup(port.stopListening)
            ports.append(port.getHost().port)
        return ports

    def writeConfig(self, text: str) -> str:
        path = self.tmp.child("lb.toml")
        path.setContent(text.encode("utf-8"))
        return path.path

    def simpleConfig(self, ports: list[int], algorithm: str = "round_robin") -> str:
        servers = "".join(
            f'\n[[server]]\naddress = "127.0.0.1"\nport = {p}\n' for p in ports
        )
        return self.writeConfig(
            f'[load_balancer]\naddress = "127.0.0.1"\nport = 0\n'
            f'algorithm = "{algorithm}"\n{servers}'
        )

    @inlineCallbacks
    def startTxlb(self, *args: str, argv: list[str] | None = None,
                  env: dict[str, str] | None = None):
        if argv is None:
            proc = procs.spawnTxlb(_reactor(), *args, cwd=self.tmp.path, env=env)
        else:
            proc = procs.spawn(_reactor(), argv, cwd=self.tmp.path, env=env)
        self.addCleanup(proc.stop)
        m = yield proc.waitFor(procs.LISTENING)
        return proc, int(m.group(4))

    @inlineCallbacks
    def connect(self, port: int):
        client = Collector()
        yield connectProtocol(TCP4ClientEndpoint(_reactor(), "127.0.0.1", port), client)
        return client

    @inlineCallbacks
    def namesOf(self, port: int, count: int):
        names = []
        for _ in range(count):
            client = yield self.connect(port)
            name = yield client.firstLine
            client.transport.loseConnection()
            yield client.done
            names.append(name)
        return names

    @inlineCallbacks
    def test_balancesAcrossBackends(self):
        """
        Round robin over three real backends gives each a third of the
        connections, in rotation.
        """
        ports = yield self.startBackends([b"a", b"b", b"c"])
        proc, port = yield self.startTxlb("--config", self.simpleConfig(ports))
        names = yield self.namesOf(port, 9)
        self.assertEqual(sorted(names), [b"a"] * 3 + [b"b"] * 3 + [b"c"] * 3)
        self.assertEqual(names[:3], names[3:6])

    @inlineCallbacks
    def test_failsOverPastDeadBackend(self):
        """
        A backend that refuses connections is skipped: every client connection
        reaches a live backend.
        """
        ports = yield self.startBackends([b"a", b"b"])
        dead = procs.freePort()
        proc, port = yield self.startTxlb(
            "--config", self.simpleConfig([dead] + ports)
        )
        names = yield self.namesOf(port, 6)
        self.assertEqual(sorted(set(names)), [b"a", b"b"])
        self.assertEqual(len(names), 6)

    @inlineCallbacks
    def test_echoAndHalfClose(self):
        """
        Bytes go both ways, and the client's half-close reaches the backend,
        whose last words still reach the client.
        """
        ports = yield self.startBackends([b"a"])
        proc, port = yield self.startTxlb("--backends", f"127.0.0.1:{ports[0]}",
                                          "--port", "0")
        client = yield self.connect(port)
        yield client.firstLine
        client.transport.write(b"hello through txlb")
        client.transport.loseWriteConnection()
        received = yield client.done
        self.assertEqual(received, b"a\nhello through txlbbye")

    @inlineCallbacks
    def test_badConfigExitsWithOneLine(self):
        """
        An invalid file makes twistd exit non-zero with one line naming the
        file, the key and the value, and no traceback.
        """
        path = self.writeConfig(
            '[[server]]\naddress = "127.0.0.1"\nport = 1\n'
            '[[server]]\naddress = "127.0.0.1"\nport = 70000\n'
        )
        proc = procs.spawnTxlb(_reactor(), "--config", path, cwd=self.tmp.path)
        code = yield proc.ended
        self.assertNotEqual(code, 0)
        self.assertIn(
            f"{path}: server[2].port: must be 1-65535, got 70000".encode(), proc.stderr
        )
        self.assertNotIn(b"Traceback", proc.output)
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)

    @inlineCallbacks
    def test_portTakenExitsWithOneLine(self):
        """
        When the port is taken, txlb exits non-zero with one clear line
        instead of running with nothing listening.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = self.writeConfig(
            f'[load_balancer]\naddress = "127.0.0.1"\nport = {port}\n'
            '[[server]]\naddress = "127.0.0.1"\nport = 1\n'
        )
        proc = procs.spawnTxlb(_reactor(), "--config", path, cwd=self.tmp.path)
        code = yield proc.ended
        self.assertNotEqual(code, 0)
        self.assertIn(b"cannot listen on", proc.stderr)
        self.assertIn(b"address already in use", proc.stderr)
        self.assertNotIn(b"Traceback", proc.output)

    @inlineCallbacks
    def test_unknownFlagExitsNonZero(self):
        """
        A malformed flag exits non-zero with one line, not twistd's usage
        text and status 0.
        """
        proc = procs.spawnTxlb(_reactor(), "--port", "eighty", cwd=self.tmp.path)
        code = yield proc.ended
        self.assertNotEqual(code, 0)
        self.assertIn(b"--port: must be a number, got 'eighty'", proc.stderr)
        self.assertNotIn(b"Traceback", proc.output)

    @inlineCallbacks
    def test_helpDocumentsEveryOption(self):
        """
        C{twistd txlb --help} documents every option.
        """
        proc = procs.spawnTxlb(_reactor(), "--help", cwd=self.tmp.path)
        code = yield proc.ended
        self.assertEqual(code, 0)
        for option in (b"--config", b"--port", b"--backends", b"--algorithm",
                       b"--layer", b"--health-check-interval", b"--demo"):
            self.assertIn(option, proc.output)

    @inlineCallbacks
    def test_runsOnTxlbReactor(self):
        """
        Without C{-r}, C{twistd txlb} runs on txlb's own reactor.
        """
        ports = yield self.startBackends([b"a"])
        proc, port = yield self.startTxlb("--backends", f"127.0.0.1:{ports[0]}",
                                          "--port", "0")
        self.assertIn(b"txlb.reactor", proc.output)

    @inlineCallbacks
    def test_tacRunsTheSameService(self):
        """
        C{twistd -ny txlb.tac} runs the configuration named by TXLB_CONFIG.
        """
        ports = yield self.startBackends([b"a", b"b"])
        config = self.simpleConfig(ports)
        tac = os.path.join(procs.sourceTree(), "txlb.tac")
        proc, port = yield self.startTxlb(
            argv=[procs.TWISTD, "-n", "--pidfile=", "-r", "txlb", "-y", tac],
            env={"TXLB_CONFIG": config},
        )
        names = yield self.namesOf(port, 4)
        self.assertEqual(sorted(names), [b"a", b"a", b"b", b"b"])

    @inlineCallbacks
    def test_twistRunsTheSameService(self):
        """
        C{twist txlb --config lb.toml} works too.
        """
        ports = yield self.startBackends([b"a", b"b"])
        config = self.simpleConfig(ports)
        proc, port = yield self.startTxlb(
            argv=[os.path.join(procs.BIN, "twist"), "--log-format=text", "txlb",
                  "--config", config]
        )
        names = yield self.namesOf(port, 2)
        self.assertEqual(sorted(names), [b"a", b"b"])

    @inlineCallbacks
    def test_demo(self):
        """
        C{--demo} starts three HTTP backends and balances across them.
        """
        proc, port = yield self.startTxlb("--demo", "--port", "0")
        bodies = []
        for _ in range(3):
            client = yield self.connect(port)
            client.transport.write(
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            body = yield client.done
            bodies.append(body)
        served = {b.split(b"Hello from ")[1].split(b":")[0] for b in bodies}
        self.assertEqual(
            served, {b"demo-backend-1", b"demo-backend-2", b"demo-backend-3"}
        )

    @inlineCallbacks
    def test_gigabyteToPausingReaderInBoundedMemory(self):
        """
        1 GiB passes through the relay to a reader that stops reading for
        5 s, while txlb's peak RSS grows by less than 64 MiB.
        """

        class Source(Factory):
            protocol = StreamingBackend
            total = GIB

            def __init__(self, name: bytes) -> None:
                pass

        ports = yield self.startBackends([b"big"], Source)
        proc, port = yield self.startTxlb("--backends", f"127.0.0.1:{ports[0]}",
                                          "--port", "0")
        before = procs.vmHWM(proc.pid)
        reader = CountingReader(pauseSeconds=5.0)
        yield connectProtocol(TCP4ClientEndpoint(_reactor(), "127.0.0.1", port), reader)
        count, _ = yield gatherResults([reader.done, reader.resumed])
        after = procs.vmHWM(proc.pid)
        self.assertEqual(count, GIB)
        self.assertLess(after - before, 64 * 1024 * 1024,
                        f"peak RSS grew from {before} to {after}")
