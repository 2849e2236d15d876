"""
Tests for L{txlb.reactor}.

The immediate-write logic is driven directly: real TCP sockets on 127.0.0.1,
transports over a L{MemoryReactorClock} that is never run, C{doWrite} called by
hand.  End-to-end behaviour and Twisted's own reactor test suites (TCP, TLS,
producers, core, time, FD sets) run on L{HotPathReactor} instances through
L{ReactorBuilder}.
"""

from __future__ import annotations

import errno
import os
import select
import socket

from twisted.application.reactors import IReactorInstaller
from twisted.internet import abstract, main
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import (
    HostnameEndpoint,
    clientFromString,
    connectProtocol,
    serverFromString,
)
from twisted.internet.error import (
    ConnectionDone,
    ConnectionFdescWentAway,
    ConnectionLost,
)
from twisted.internet.interfaces import (
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTCP,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.test.reactormixins import ReactorBuilder, needsRunningReactor
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.plugin import getPlugins
from twisted.python import context
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.python.log import ILogContext
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import implementer

import twisted
from txlb import reactor as txlbreactor
from txlb.reactor import Client, Port, Server

try:
    from twisted.internet import ssl
except ImportError:  # pragma: no cover - pyOpenSSL is a Twisted[tls] extra
    ssl = None

try:
    # Twisted's own test modules need Twisted's test extras (PyHamcrest).
    from twisted.internet.test import (
        test_core,
        test_fdset,
        test_socket,
        test_tcp,
        test_threads,
        test_time,
    )

    if ssl is not None:
        from twisted.internet.test import test_newtls, test_tls
except ImportError as e:  # pragma: no cover - reported by UpstreamSuitesTests
    _UPSTREAM_MISSING: str | None = str(e)
else:
    _UPSTREAM_MISSING = None

_HOT_PATH = ["txlb.reactor.HotPathReactor"]

# Generous bound on any wait for loopback bytes: reaching it is a failure,
# never a pass.
_WAIT = 10.0


def _loopbackPair(case: SynchronousTestCase) -> tuple[socket.socket, socket.socket]:
    """
    Make a connected pair of TCP sockets on 127.0.0.1 with small, fixed
    kernel buffers, so that a write of a few hundred KiB is always sent only
    in part.

    @param case: the test; it closes both sockets when it ends.
    @return: C{(server, peer)}: the accepted socket (to put a transport on)
        and the connecting one, non-blocking (to read what arrives).
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    peer.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    peer.setblocking(False)
    case.addCleanup(peer.close)
    case.addCleanup(server.close)
    return server, peer


def _readNow(sock: socket.socket) -> bytes:
    """
    @return: every byte that can be read from C{sock} without waiting.
    """
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _readExactly(case: SynchronousTestCase, sock: socket.socket, n: int) -> bytes:
    """
    Read exactly C{n} bytes from C{sock}, waiting at most L{_WAIT} seconds
    for each.

    @return: the bytes read.
    """
    received = bytearray()
    while len(received) < n:
        readable, _, _ = select.select([sock], [], [], _WAIT)
        if not readable:
            case.fail(f"only {len(received)} of {n} bytes arrived")
        chunk = sock.recv(n - len(received))
        if not chunk:
            case.fail(f"end of file after {len(received)} of {n} bytes")
        received += chunk
    return bytes(received)


def _readToEOF(case: SynchronousTestCase, sock: socket.socket) -> bytes:
    """
    Read from C{sock} until the peer's end of file, waiting at most
    L{_WAIT} seconds for each chunk.

    @return: the bytes read before end of file.
    """
    received = bytearray()
    while True:
        readable, _, _ = select.select([sock], [], [], _WAIT)
        if not readable:
            case.fail(f"no end of file after {len(received)} bytes")
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(received)
        received += chunk


def _closeReactor(reactor) -> None:
    """
    Release the waker and epoll descriptors of a reactor that was never run.

    @param reactor: a L{txlb.reactor.HotPathReactor}.
    """
    for reader in list(reactor._internalReaders):
        reactor.removeReader(reader)
        reader.connectionLost(None)
    reactor._internalReaders.clear()
    # Closing the epoll descriptor drops whatever is still registered.
    reactor._poller.close()


class _FailingSocket:
    """
    A socket whose C{send} fails with one errno; everything else is the real
    socket's.
    """

    def __init__(self, sock: socket.socket, errorNumber: int) -> None:
        """
        @param sock: the real socket.
        @param errorNumber: the errno C{send} fails with.
        """
        self._sock = sock
        self._errorNumber = errorNumber

    def send(self, data: bytes) -> int:
        """
        @raise OSError: always, with the configured errno (an C{EAGAIN}
            comes out as C{BlockingIOError}, as from a real socket).
        """
        raise OSError(self._errorNumber, os.strerror(self._errorNumber))

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


@implementer(IPushProducer)
class _RecordingProducer:
    """
    A streaming producer that records what the transport asks of it.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class ImmediateWriteTests(SynchronousTestCase):
    """
    L{Server} sends at once when nothing is queued and otherwise keeps stock
    Twisted's buffering, ordering, producer and close semantics.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.socket, self.peer = _loopbackPair(self)
        self.protocol = Protocol()
        self.transport = Server(
            self.socket, self.protocol, ("127.0.0.1", 1), None, 0, self.reactor
        )
        self.protocol.makeConnection(self.transport)

    def buffered(self) -> int:
        """
        @return: how many bytes the transport holds, unsent.
        """
        t = self.transport
        return len(t.dataBuffer) - t.offset + t._tempDataLen

    def flush(self, expectedLength: int) -> bytes:
        """
        Run C{doWrite} as the reactor would, reading what arrives, until the
        transport no longer asks to write; then read the rest in flight.

        @param expectedLength: how many bytes the peer must receive in all.
        @return: what the peer received.
        """
        received = bytearray()
        for _ in range(100000):
            received += _readNow(self.peer)
            if self.transport not in self.reactor.writers:
                break
            self.assertIsNone(self.transport.doWrite())
        else:
            self.fail("the transport never finished writing")
        received += _readExactly(self, self.peer, expectedLength - len(received))
        return bytes(received)

    def fillKernelBuffers(self) -> int:
        """
        Send on the raw socket until the kernel takes no more.

        @return: how many bytes were sent.
        """
        sent = 0
        self.socket.setblocking(False)
        for size in (65536, 1):
            while True:
                try:
                    sent += self.socket.send(b"f" * size)
                except BlockingIOError:
                    break
        return sent

    def test_writeSendsAtOnce(self) -> None:
        """
        With nothing queued, C{write} puts the bytes on the wire before it
        returns and does not register for writability.
        """
        self.transport.write(b"hello")
        self.assertEqual(self.buffered(), 0)
        self.assertNotIn(self.transport, self.reactor.writers)
        self.assertEqual(_readExactly(self, self.peer, 5), b"hello")

    def test_writeSequenceSendsAtOnce(self) -> None:
        """
        With nothing queued, C{writeSequence} sends its chunks at once, in
        order.
        """
        self.transport.writeSequence([b"he", b"", b"llo"])
        self.assertEqual(self.buffered(), 0)
        self.assertNotIn(self.transport, self.reactor.writers)
        self.assertEqual(_readExactly(self, self.peer, 5), b"hello")

    def test_partialSendKeepsOrder(self) -> None:
        """
        When the kernel takes part of a write, the rest is buffered, later
        writes queue behind it instead of being sent, and the peer receives
        everything in order.
        """
        payload = bytes(range(256)) * 2048
        self.transport.write(payload)
        rest = self.buffered()
        self.assertGreater(rest, 0)
        self.assertLess(rest, len(payload))
        self.assertIn(self.transport, self.reactor.writers)

        self.transport.write(b"second")
        self.transport.writeSequence([b"third", b"fourth"])
        self.assertEqual(self.buffered(), rest + len(b"secondthirdfourth"))

        expected = payload + b"secondthirdfourth"
        self.assertEqual(self.flush(len(expected)), expected)

    def test_pausesProducerWhenRestExceedsBufferSize(self) -> None:
        """
        A streaming producer is paused when the unsent rest of a write is
        more than C{bufferSize}, and resumed once it has been sent.
        """
        producer = _RecordingProducer()
        self.transport.registerProducer(producer, True)
        payload = b"p" * (8 * self.transport.bufferSize)
        self.transport.write(payload)
        self.assertGreater(self.buffered(), self.transport.bufferSize)
        self.assertEqual(producer.calls, ["pause"])

        self.flush(len(payload))
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_smallRestDoesNotPauseProducer(self) -> None:
        """
        A streaming producer is not paused when what stays unsent fits in
        C{bufferSize}.
        """
        filler = self.fillKernelBuffers()
        producer = _RecordingProducer()
        self.transport.registerProducer(producer, True)
        self.transport.write(b"s" * 1000)
        self.assertGreater(self.buffered(), 0)
        self.assertEqual(producer.calls, [])
        self.assertEqual(self.flush(filler + 1000), b"f" * filler + b"s" * 1000)

    def test_fullKernelBufferBuffers(self) -> None:
        """
        When the kernel buffers are full, a write is buffered and registers
        for writability, and goes out after what was there before.
        """
        filler = self.fillKernelBuffers()
        self.transport.write(b"late")
        self.assertGreater(self.buffered(), 0)
        self.assertIn(self.transport, self.reactor.writers)
        self.assertEqual(self.flush(filler + 4), b"f" * filler + b"late")

    def assertBufferedAfterSendError(self, errorNumber: int) -> None:
        """
        Make C{send} fail with C{errorNumber}, then check that C{write} did
        not raise, buffered the bytes, and that they reach the peer once the
        socket works again.

        @param errorNumber: the errno.
        """
        self.transport.socket = _FailingSocket(self.socket, errorNumber)
        self.transport.write(b"data")
        self.assertEqual(self.transport._tempDataBuffer, [b"data"])
        self.assertIn(self.transport, self.reactor.writers)
        self.transport.socket = self.socket
        self.assertEqual(self.flush(4), b"data")

    def test_wouldBlockBuffers(self) -> None:
        """
        C{EWOULDBLOCK}/C{EAGAIN} from C{send} buffers the write.
        """
        self.assertBufferedAfterSendError(errno.EWOULDBLOCK)

    def test_noBuffersBuffers(self) -> None:
        """
        C{ENOBUFS} from C{send} buffers the write.
        """
        self.assertBufferedAfterSendError(errno.ENOBUFS)

    def assertLossReportedAfterSendError(self, errorNumber: int) -> None:
        """
        Make C{send} fail with C{errorNumber}, then check that C{write} did
        not raise and that the transport's next read or write event reports
        L{ConnectionLost}, even though the failed C{send} has consumed the
        socket's error.

        @param errorNumber: the errno.
        """
        self.transport.socket = _FailingSocket(self.socket, errorNumber)
        self.transport.write(b"data")
        self.transport.writeSequence([b"more"])
        self.assertIn(self.transport, self.reactor.writers)
        self.assertIsInstance(self.transport.doWrite(), ConnectionLost)
        self.assertIsInstance(self.transport.doRead(), ConnectionLost)

    def test_connectionResetReportsLoss(self) -> None:
        """
        C{ECONNRESET} from C{send} becomes a L{ConnectionLost} on the next
        event.
        """
        self.assertLossReportedAfterSendError(errno.ECONNRESET)

    def test_brokenPipeReportsLoss(self) -> None:
        """
        C{EPIPE} from C{send} becomes a L{ConnectionLost} on the next event.
        """
        self.assertLossReportedAfterSendError(errno.EPIPE)

    def test_writeAfterLoseConnectionIsNotImmediate(self) -> None:
        """
        After C{loseConnection}, a write is not sent at once: it joins the
        buffered path, which (as in stock Twisted) flushes it and then
        closes.
        """
        self.transport.loseConnection()
        self.transport.write(b"late")
        self.assertEqual(self.transport._tempDataBuffer, [b"late"])
        self.assertEqual(_readNow(self.peer), b"")
        self.assertIsInstance(self.transport.doWrite(), ConnectionDone)
        self.assertEqual(_readExactly(self, self.peer, 4), b"late")

    def test_writeAfterConnectionLostDoesNothing(self) -> None:
        """
        Once the connection is lost, C{write} and C{writeSequence} do
        nothing, and raise nothing.
        """
        self.transport.connectionLost(Failure(ConnectionDone()))
        self.transport.write(b"x")
        self.transport.writeSequence([b"y"])
        self.assertEqual(self.buffered(), 0)
        self.assertEqual(_readToEOF(self, self.peer), b"")

    def test_writeAfterLoseWriteConnectionDoesNothing(self) -> None:
        """
        Once the write side is shut down, C{write} and C{writeSequence} do
        nothing: the peer sees end of file and no more bytes.
        """
        self.transport.write(b"before")
        self.transport.loseWriteConnection()
        self.assertIsNone(self.transport.doWrite())
        self.assertTrue(self.transport._writeDisconnected)
        self.transport.write(b"x")
        self.transport.writeSequence([b"y"])
        self.assertEqual(self.buffered(), 0)
        self.assertEqual(_readToEOF(self, self.peer), b"before")

    def test_writeBeforeHalfCloseCompletesGoesFirst(self) -> None:
        """
        A write between C{loseWriteConnection} and the shutdown it asks for
        is not sent at once; it is flushed before the shutdown.
        """
        self.transport.loseWriteConnection()
        self.transport.write(b"last")
        self.assertEqual(self.transport._tempDataBuffer, [b"last"])
        self.assertIsNone(self.transport.doWrite())
        self.assertTrue(self.transport._writeDisconnected)
        self.assertEqual(_readToEOF(self, self.peer), b"last")

    def test_writeAfterAbortIsDropped(self) -> None:
        """
        After C{abortConnection}, writes never reach the peer.
        """
        self.transport.abortConnection()
        self.transport.write(b"x")
        self.transport.writeSequence([b"y"])
        self.assertEqual(self.transport._tempDataBuffer, [b"x", b"y"])
        self.assertEqual(_readNow(self.peer), b"")
        self.reactor.advance(0)
        self.assertRaises(ConnectionResetError, self.peer.recv, 1)

    def test_pullProducerWritesAreBuffered(self) -> None:
        """
        While a pull producer is registered, writes take the buffered path,
        so that C{doWrite} drains them and then asks the producer for more.
        """
        producer = _RecordingProducer()
        self.transport.registerProducer(producer, False)
        self.assertEqual(producer.calls, ["resume"])
        self.transport.write(b"chunk")
        self.assertEqual(self.transport._tempDataBuffer, [b"chunk"])
        self.assertIsNone(self.transport.doWrite())
        self.assertEqual(producer.calls, ["resume", "resume"])
        self.assertEqual(_readExactly(self, self.peer, 5), b"chunk")

    def test_pullProducerResumedAfterImmediateWrite(self) -> None:
        """
        A pull producer registered just after a write that went out at once
        is still resumed from C{doWrite}, as it would be in stock Twisted
        once that write had been flushed.
        """
        self.transport.write(b"header")
        producer = _RecordingProducer()
        self.transport.registerProducer(producer, False)
        self.assertEqual(producer.calls, ["resume"])
        self.assertIn(self.transport, self.reactor.writers)
        self.assertIsNone(self.transport.doWrite())
        self.assertEqual(producer.calls, ["resume", "resume"])

    def test_nonBytesRaiseTypeError(self) -> None:
        """
        C{write} and C{writeSequence} reject text as stock Twisted does.
        """
        self.assertRaises(TypeError, self.transport.write, "text")
        self.assertRaises(TypeError, self.transport.writeSequence, [b"a", "text"])
        self.assertEqual(self.buffered(), 0)

    def test_startTLSWritesGoThroughTLS(self) -> None:
        """
        After C{startTLS}, C{write} hands bytes to the TLS layer: the wire
        carries only the TLS handshake, which itself went out immediately.
        """
        if ssl is None:
            raise SkipTest("TLS needs pyOpenSSL")
        # The accepted side acts as the TLS client, so it speaks first.
        self.transport.startTLS(ssl.CertificateOptions(), normal=False)
        self.transport.write(b"secret")
        self.transport.writeSequence([b"more ", b"secrets"])
        self.assertTrue(ISSLTransport.providedBy(self.transport))
        self.assertNotIn(self.transport, self.reactor.writers)

        header = _readExactly(self, self.peer, 5)
        # A TLS handshake record (0x16), then its length.
        self.assertEqual(header[0], 0x16)
        body = _readExactly(self, self.peer, int.from_bytes(header[3:5], "big"))
        self.assertEqual(body[0], 0x01, "not a ClientHello")
        self.assertEqual(_readNow(self.peer), b"")


class HotPathLayoutTests(SynchronousTestCase):
    """
    What keeps the per-chunk functions' attribute reads specialized in
    CPython.
    """

    def test_ownCodePerTransportClass(self) -> None:
        """
        L{Server} and L{Client} each have their own code object for C{write}
        and C{doRead}, copies of the shared functions.
        """
        for name, shared in [
            ("write", txlbreactor._write),
            ("doRead", txlbreactor._doRead),
        ]:
            serverFunction = getattr(Server, name)
            clientFunction = getattr(Client, name)
            self.assertIsNot(serverFunction.__code__, clientFunction.__code__)
            for function in (serverFunction, clientFunction):
                self.assertIsNot(function.__code__, shared.__code__)
                self.assertEqual(function.__code__.co_code, shared.__code__.co_code)
                self.assertEqual(function.__name__, shared.__name__)
                self.assertEqual(function.__defaults__, shared.__defaults__)

    def test_hotAttributesOnInstance(self) -> None:
        """
        The class attributes C{write} and C{doRead} read are set on each new
        transport, with the values the classes give them.
        """
        mine, theirs = _loopbackPair(self)
        transport = Server(
            mine, Protocol(), ("127.0.0.1", 1), None, 0, MemoryReactorClock()
        )
        self.addCleanup(transport.connectionLost, Failure(ConnectionDone()))
        expected = {
            "TLS": False,
            "disconnecting": False,
            "_writeDisconnecting": False,
            "_aborting": False,
            "dataBuffer": b"",
            "offset": 0,
            "bufferSize": abstract.FileDescriptor.bufferSize,
        }
        self.assertEqual(
            {name: vars(transport).get(name, "missing") for name in expected},
            expected,
        )


class _Selectable(abstract.FileDescriptor):
    """
    A readable end of a socket pair, for driving L{HotPathReactor.doPoll}.
    """

    def __init__(self, reactor, sock, name, log, failOnLost=False):
        """
        @param reactor: the reactor it is registered with.
        @param sock: the socket to read.
        @param name: its log prefix, recorded with each call.
        @param log: a list of what happened, appended to.
        @param failOnLost: raise from C{connectionLost} and end on first read.
        """
        abstract.FileDescriptor.__init__(self, reactor)
        self._sock = sock
        self._name = name
        self._events = log
        self._failOnLost = failOnLost
        self.connected = 1

    def fileno(self):
        return self._sock.fileno()

    def logPrefix(self):
        return self._name

    def doRead(self):
        self._events.append((self._name, context.get(ILogContext)["system"]))
        self._sock.recv(1024)
        if self._failOnLost:
            return main.CONNECTION_DONE
        return None

    def connectionLost(self, reason):
        abstract.FileDescriptor.connectionLost(self, reason)
        if self._failOnLost:
            raise RuntimeError("connectionLost failed")


class _ScriptedSelectable(_Selectable):
    """
    A L{_Selectable} whose C{doRead} does what a test says, and which may
    report its descriptor gone (C{fileno()} of C{-1}) once registered.

    @ivar lost: the reasons given to C{connectionLost}.
    @ivar readLost: the reasons given to C{readConnectionLost}.
    """

    def __init__(self, reactor, sock, name, log, onRead):
        """
        @param onRead: called by C{doRead}; its result is C{doRead}'s.
        """
        _Selectable.__init__(self, reactor, sock, name, log)
        self._onRead = onRead
        self.descriptorGone = False
        self.lost = []
        self.readLost = []

    def fileno(self):
        if self.descriptorGone:
            return -1
        return _Selectable.fileno(self)

    def doRead(self):
        _Selectable.doRead(self)
        return self._onRead()

    def connectionLost(self, reason):
        self.lost.append(reason)
        _Selectable.connectionLost(self, reason)


@implementer(IHalfCloseableDescriptor)
class _HalfCloseableSelectable(_ScriptedSelectable):
    """
    A L{_ScriptedSelectable} that can be told its read side is done.
    """

    def readConnectionLost(self, reason):
        self.readLost.append(reason)

    def writeConnectionLost(self, reason):
        pass


class HotPathReactorTests(SynchronousTestCase):
    """
    L{HotPathReactor}'s event dispatch, driven by calling C{doPoll} on a
    reactor that is never run.
    """

    def setUp(self) -> None:
        if not hasattr(txlbreactor, "HotPathReactor"):
            raise SkipTest("HotPathReactor needs epoll")
        self.reactor = txlbreactor.HotPathReactor()
        self.addCleanup(_closeReactor, self.reactor)

    def readablePair(self, name, log, failOnLost=False) -> _Selectable:
        """
        Register a L{_Selectable} over a socket pair with a byte waiting.

        @return: the selectable.
        """
        mine, theirs = socket.socketpair()
        self.addCleanup(mine.close)
        self.addCleanup(theirs.close)
        theirs.send(b"!")
        selectable = _Selectable(self.reactor, mine, name, log, failOnLost)
        self.reactor.addReader(selectable)
        return selectable

    def scripted(self, onRead, kind=_ScriptedSelectable) -> _ScriptedSelectable:
        """
        Register a C{kind} over a socket pair with a byte waiting.

        @param onRead: what its C{doRead} does.
        @return: the selectable.
        """
        mine, theirs = socket.socketpair()
        self.addCleanup(mine.close)
        self.addCleanup(theirs.close)
        theirs.send(b"!")
        selectable = kind(self.reactor, mine, "scripted", [], onRead)
        self.reactor.addReader(selectable)
        return selectable

    def test_readErrorLoggedAndDisconnects(self) -> None:
        """
        An exception from C{doRead} is logged and disconnects that
        selectable with the exception as the reason; the other events of
        the same poll are still dispatched.
        """
        log: list[tuple[str, str]] = []

        def broken():
            raise ZeroDivisionError("broken doRead")

        selectable = self.scripted(broken)
        self.readablePair("fine", log)
        self.reactor.doPoll(0)
        self.assertEqual([name for name, _ in log], ["fine"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        [reason] = selectable.lost
        self.assertIsInstance(reason.value, ZeroDivisionError)
        self.assertNotIn(selectable, self.reactor.getReaders())

    def test_readEndOfFileIsHalfClose(self) -> None:
        """
        C{doRead} returning L{main.CONNECTION_DONE} on a half-closeable
        selectable tells it its read side is done, and does not disconnect
        it.
        """
        selectable = self.scripted(
            lambda: main.CONNECTION_DONE, kind=_HalfCloseableSelectable
        )
        self.reactor.doPoll(0)
        [reason] = selectable.readLost
        self.assertIsInstance(reason.value, ConnectionDone)
        self.assertEqual(selectable.lost, [])
        self.assertNotIn(selectable, self.reactor.getReaders())

    def test_readLostDisconnects(self) -> None:
        """
        C{doRead} returning L{main.CONNECTION_LOST} disconnects the
        selectable with L{ConnectionLost}, half-closeable or not.
        """
        selectable = self.scripted(
            lambda: main.CONNECTION_LOST, kind=_HalfCloseableSelectable
        )
        self.reactor.doPoll(0)
        [reason] = selectable.lost
        self.assertIsInstance(reason.value, ConnectionLost)
        self.assertEqual(selectable.readLost, [])

    def test_descriptorGoneDisconnects(self) -> None:
        """
        A readable selectable whose C{fileno()} has become C{-1} is not
        read: it is disconnected with L{ConnectionFdescWentAway}, as a lost
        connection, not a half-close.
        """
        reads = []
        selectable = self.scripted(
            lambda: reads.append("read"), kind=_HalfCloseableSelectable
        )
        selectable.descriptorGone = True
        self.reactor.doPoll(0)
        self.assertEqual(reads, [])
        [reason] = selectable.lost
        self.assertIsInstance(reason.value, ConnectionFdescWentAway)
        self.assertEqual(selectable.readLost, [])

    def test_errorEscapingDispatchIsLoggedPerEvent(self) -> None:
        """
        An exception that escapes C{_doReadOrWrite} (here from
        C{connectionLost}) is logged, and the other events of the same poll
        are still dispatched.
        """
        log: list[tuple[str, str]] = []
        self.readablePair("broken", log, failOnLost=True)
        self.readablePair("fine", log)
        self.reactor.doPoll(0)
        self.assertEqual(sorted(name for name, _ in log), ["broken", "fine"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_noLogContextPerEvent(self) -> None:
        """
        Events are dispatched without pushing the selectable's log prefix as
        the legacy log context (the cost this reactor removes).
        """
        log: list[tuple[str, str]] = []
        self.readablePair("prefix", log)
        self.reactor.doPoll(0)
        self.assertEqual(len(log), 1)
        self.assertNotEqual(log[0][1], "prefix")

    def test_adoptStreamConnectionGivesServer(self) -> None:
        """
        An adopted TCP connection is a L{Server}.
        """
        server, peer = _loopbackPair(self)
        server.setblocking(False)
        transport = self.reactor.adoptStreamConnection(
            server.fileno(), socket.AF_INET, Factory.forProtocol(Protocol)
        )
        self.addCleanup(transport.connectionLost, Failure(ConnectionDone()))
        self.assertIsInstance(transport, Server)
        transport.write(b"adopted")
        self.assertEqual(_readExactly(self, peer, 7), b"adopted")


class InstallTests(SynchronousTestCase):
    """
    L{txlb.reactor.install} and the C{txlb} reactor plugin.
    """

    def test_installsHotPathReactor(self) -> None:
        """
        C{install} installs a new L{HotPathReactor}.
        """
        if not hasattr(txlbreactor, "HotPathReactor"):
            raise SkipTest("HotPathReactor needs epoll")
        installed = []
        self.patch(main, "installReactor", installed.append)
        txlbreactor.install()
        self.assertEqual(len(installed), 1)
        self.assertIsInstance(installed[0], txlbreactor.HotPathReactor)
        _closeReactor(installed[0])

    def test_fallsBackWithoutEpoll(self) -> None:
        """
        Without epoll, C{install} installs the platform default reactor and
        logs a warning saying so.
        """
        from twisted.internet import default

        defaults = []
        events = []
        self.patch(txlbreactor, "EPollReactor", None)
        self.patch(default, "install", lambda: defaults.append(True))
        self.patch(main, "installReactor", self.fail)
        self.patch(txlbreactor, "_log", Logger(observer=events.append))
        txlbreactor.install()
        self.assertEqual(defaults, [True])
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"].name, "warn")

    def test_pluginNamesModule(self) -> None:
        """
        A reactor plugin named C{txlb} installs from L{txlb.reactor}, so
        C{twistd -r txlb} and C{trial --reactor=txlb} find it.
        """
        found = [r for r in getPlugins(IReactorInstaller) if r.shortName == "txlb"]
        self.assertEqual([r.moduleName for r in found], ["txlb.reactor"])


@implementer(IHalfCloseableProtocol)
class _HalfClosingServer(Protocol):
    """
    Collects a request until the client half-closes, then answers and
    closes.
    """

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.transport.write(b"reply:" + self.received)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class _HalfClosingClient(Protocol):
    """
    Sends a request, half-closes, and collects the reply.
    """

    def __init__(self) -> None:
        self.received = b""
        self.writeClosed = False
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"request")
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def writeConnectionLost(self) -> None:
        self.writeClosed = True

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(None)


class _Echo(Protocol):
    """
    Echoes what it receives.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class _Exchange(Protocol):
    """
    Writes a message, waits for C{expected}, then closes.

    @ivar done: fires with the bytes received when the connection is lost.
    """

    def __init__(self, message: bytes, expected: bytes, tlsOptions=None) -> None:
        self.message = message
        self.expected = expected
        self.tlsOptions = tlsOptions
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        if self.tlsOptions is not None:
            self.transport.startTLS(self.tlsOptions)
        self.transport.write(self.message)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received == self.expected:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(self.received)


class HotPathEndToEndTestsBuilder(ReactorBuilder):
    """
    L{HotPathReactor} running real connections on 127.0.0.1.
    """

    _reactors = _HOT_PATH
    requiredInterfaces = (IReactorTCP,)

    def runUntil(self, reactor, scenario) -> None:
        """
        Run C{reactor} until the L{Deferred} returned by C{scenario()} fires,
        then stop it; fail if it failed.

        @param scenario: a no-argument callable, called once the reactor
            runs.
        """
        failures = []

        def start() -> None:
            d = scenario()
            d.addErrback(failures.append)
            d.addBoth(lambda _: reactor.stop())

        needsRunningReactor(reactor, start)
        self.runReactor(reactor, timeout=30)
        if failures:
            failures[0].raiseException()

    def test_endpointsGetHotPathTransports(self) -> None:
        """
        C{serverFromString}, C{clientFromString} and L{HostnameEndpoint} give
        L{Port}, L{Server} and L{Client}, and bytes flow both ways.
        """
        reactor = self.buildReactor()
        serverTransports = []
        results = {}

        class RecordingEcho(_Echo):
            def connectionMade(self) -> None:
                serverTransports.append(type(self.transport))

        async def scenario() -> None:
            port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
                Factory.forProtocol(RecordingEcho)
            )
            results["port"] = port
            number = port.getHost().port
            byString = _Exchange(b"ping", b"ping")
            byName = _Exchange(b"pong", b"pong")
            await connectProtocol(
                clientFromString(reactor, f"tcp:host=127.0.0.1:port={number}"),
                byString,
            )
            await connectProtocol(
                HostnameEndpoint(reactor, b"127.0.0.1", number), byName
            )
            results["clients"] = [type(byString.transport), type(byName.transport)]
            results["received"] = await gatherResults([byString.done, byName.done])
            await port.stopListening()

        self.runUntil(reactor, lambda: Deferred.fromCoroutine(scenario()))
        self.assertIsInstance(results["port"], Port)
        self.assertEqual(serverTransports, [Server, Server])
        self.assertEqual(results["clients"], [Client, Client])
        self.assertEqual(results["received"], [b"ping", b"pong"])

    def test_adoptedPortGivesServers(self) -> None:
        """
        A port adopted with C{adoptStreamPort} (systemd activation,
        C{SO_REUSEPORT} workers) is a L{Port} whose connections are
        L{Server}s.
        """
        reactor = self.buildReactor()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        listener.setblocking(False)
        serverTransports = []
        results = {}

        class RecordingEcho(_Echo):
            def connectionMade(self) -> None:
                serverTransports.append(type(self.transport))

        async def scenario() -> None:
            port = reactor.adoptStreamPort(
                listener.fileno(), socket.AF_INET, Factory.forProtocol(RecordingEcho)
            )
            results["port"] = port
            client = _Exchange(b"adopted", b"adopted")
            await connectProtocol(
                HostnameEndpoint(reactor, b"127.0.0.1", listener.getsockname()[1]),
                client,
            )
            results["received"] = await client.done
            await port.stopListening()

        self.runUntil(reactor, lambda: Deferred.fromCoroutine(scenario()))
        self.assertIsInstance(results["port"], Port)
        self.assertEqual(serverTransports, [Server])
        self.assertEqual(results["received"], b"adopted")

    def test_halfClose(self) -> None:
        """
        A client writes and half-closes; the server, told its read side is
        closed, answers at once and closes; the client gets the whole
        answer.
        """
        reactor = self.buildReactor()
        server = _HalfClosingServer()
        client = _HalfClosingClient()

        async def scenario() -> None:
            port = reactor.listenTCP(
                0, Factory.forProtocol(lambda: server), interface="127.0.0.1"
            )
            await connectProtocol(
                HostnameEndpoint(reactor, b"127.0.0.1", port.getHost().port), client
            )
            await client.done
            await port.stopListening()

        self.runUntil(reactor, lambda: Deferred.fromCoroutine(scenario()))
        self.assertEqual(server.received, b"request")
        self.assertEqual(client.received, b"reply:request")
        self.assertTrue(client.writeClosed)

    def test_startTLSExchange(self) -> None:
        """
        Both ends of a L{Server}/L{Client} connection C{startTLS} and then
        exchange bytes: they arrive decrypted, so they went through the TLS
        layer, whose own raw writes went through L{txlb.reactor}'s immediate
        path.
        """
        if ssl is None:
            raise SkipTest("TLS needs pyOpenSSL")
        reactor = self.buildReactor()
        serverOptions = ssl.PrivateCertificate.loadPEM(
            FilePath(twisted.__file__).sibling("test").child("server.pem").getContent()
        ).options()
        # No verification: this is about bytes through the layers, not trust.
        client = _Exchange(b"ping", b"ping", ssl.CertificateOptions())
        results = {}

        class TLSEcho(_Echo):
            def connectionMade(self) -> None:
                self.transport.startTLS(serverOptions)

        async def scenario() -> None:
            port = reactor.listenTCP(
                0, Factory.forProtocol(TLSEcho), interface="127.0.0.1"
            )
            await connectProtocol(
                HostnameEndpoint(reactor, b"127.0.0.1", port.getHost().port), client
            )
            results["transport"] = type(client.transport)
            results["tls"] = ISSLTransport.providedBy(client.transport)
            results["raw"] = client.transport.protocol.transport._base
            results["received"] = await client.done
            await port.stopListening()

        self.runUntil(reactor, lambda: Deferred.fromCoroutine(scenario()))
        self.assertIs(results["transport"], Client)
        self.assertTrue(results["tls"])
        self.assertIs(results["raw"], txlbreactor._TLSBypass)
        self.assertEqual(results["received"], b"ping")


globals().update(HotPathEndToEndTestsBuilder.makeTestCaseClasses())


# Twisted's own reactor test suites, on HotPathReactor.  Three upstream tests
# do not apply; each is skipped with its reason.

_NO_LOG_CONTEXT = (
    "HotPathReactor dispatches I/O without log.callWithLogger, by design, so "
    "the legacy log context has no per-connection 'system' during "
    "dataReceived (twisted.logger events never used it); see "
    "HotPathReactorTests.test_noLogContextPerEvent"
)

_WRITES_ARE_IMMEDIATE = (
    "assumes every write is buffered (1000 bytes against a 500-byte "
    "bufferSize must pause the producer); HotPathReactor sends them at once "
    "and pauses only when an unsent rest exceeds bufferSize, see "
    "ImmediateWriteTests.test_pausesProducerWhenRestExceedsBufferSize"
)

_EPOLL_LOST_DESCRIPTOR = (
    "epoll cannot see a descriptor closed and replaced behind its back; "
    "Twisted skips this test for EPollReactor by class name, which does not "
    "match a subclass"
)


def _skipped(reason: str):
    """
    @return: a test method that is skipped with C{reason}.
    """

    def test(self) -> None:
        """
        Not applicable to L{HotPathReactor}; see C{skip}.
        """

    test.skip = reason
    return test


def _onHotPath(builder: type, skips: dict[str, str]) -> type:
    """
    Make a subclass of one of Twisted's L{ReactorBuilder}s that runs only on
    L{HotPathReactor}.

    @param builder: the upstream builder.
    @param skips: test method names mapped to why they do not apply.
    @return: the subclass, named as C{builder} but in this module, so that
        its generated test cases read C{<builder>_HotPathReactorTests}.
    """
    namespace = {name: _skipped(reason) for name, reason in skips.items()}
    namespace.update(
        _reactors=_HOT_PATH,
        __module__=__name__,
        __doc__=f"Twisted's L{{{builder.__module__}.{builder.__name__}}}.",
    )
    return type(builder.__name__, (builder,), namespace)


class UpstreamSuitesTests(SynchronousTestCase):
    """
    Twisted's reactor test suites are there to run.
    """

    def test_importable(self) -> None:
        """
        Twisted's test modules import; they need Twisted's test extras
        (PyHamcrest), which CI must install.
        """
        if _UPSTREAM_MISSING is not None:
            self.fail(f"Twisted's reactor test suites cannot run: {_UPSTREAM_MISSING}")


_UPSTREAM: dict[type, dict[str, str]] = {}

if _UPSTREAM_MISSING is None:
    _UPSTREAM = {
        test_tcp.TCP4ClientTestsBuilder: {"test_logPrefix": _NO_LOG_CONTEXT},
        test_tcp.TCP6ClientTestsBuilder: {"test_logPrefix": _NO_LOG_CONTEXT},
        test_tcp.TCPPortTestsBuilder: {},
        test_tcp.TCPFDPortTestsBuilder: {},
        # stopReading/startReading, half-close
        test_tcp.TCPConnectionTestsBuilder: {},
        test_tcp.TCP4ConnectorTestsBuilder: {},
        test_tcp.TCP6ConnectorTestsBuilder: {},
        # writeSequence, producers, addresses
        test_tcp.TCPTransportTestsBuilder: {
            "test_streamingProducer": _WRITES_ARE_IMMEDIATE
        },
        test_tcp.AdoptStreamConnectionTestsBuilder: {
            "test_streamingProducer": _WRITES_ARE_IMMEDIATE
        },
        test_tcp.TestBindAddressBuilder: {},
        # abortConnection with writes in flight, producers, full buffers
        test_tcp.AbortConnectionTests: {},
        test_core.SystemEventTestsBuilder: {},
        test_time.TimeTestsBuilder: {},
        test_fdset.ReactorFDSetTestsBuilder: {
            "test_lostFileDescriptor": _EPOLL_LOST_DESCRIPTOR
        },
        test_socket.IReactorSocketVerificationTestsBuilder: {},
        test_socket.AdoptStreamPortErrorsTestsBuilder: {},
        test_socket.AdoptStreamConnectionErrorsTestsBuilder: {},
        # callFromThread: the waker
        test_threads.ThreadTestsBuilder: {},
    }

    if ssl is not None:
        _UPSTREAM.update(
            {
                # TLS as a protocol over Server/Client (listenSSL, connectSSL)
                test_tls.SSLClientTestsMixin: {"test_logPrefix": _NO_LOG_CONTEXT},
                test_tls.TLSPortTestsBuilder: {},
                test_tls.AbortSSLConnectionTests: {},
                # startTLS: TLS inside the transport, through _TLSBypass
                test_tls.StartTLSClientTestsMixin: {"test_logPrefix": _NO_LOG_CONTEXT},
                test_newtls.ProducerTestsMixin: {},
            }
        )

    for _builder, _skips in _UPSTREAM.items():
        globals().update(_onHotPath(_builder, _skips).makeTestCaseClasses())
