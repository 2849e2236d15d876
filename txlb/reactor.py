"""
txlb's hot path: an epoll reactor and TCP transports that cost less per byte.

Stock Twisted spends most of what separates a relay from HAProxy in two
places, neither of them Python itself:

  1. B{Buffered writes.}  C{FileDescriptor.write} always appends to a buffer
     and registers for writability; the bytes leave on the next reactor
     iteration, then the descriptor unregisters.  That is two C{epoll_ctl}
     calls and a loop iteration per write even when the kernel could have
     taken the bytes at once.  Our transports call C{socket.send} directly
     when nothing is queued, and hand only an unsent rest to Twisted's
     buffered path, which then registers for writability and pauses the
     producer exactly as before.
  2. B{A log context per I/O event.}  C{EPollReactor.doPoll} dispatches each
     event through C{log.callWithLogger}, a context push and pop.  Our
     reactor dispatches directly.

And the Python that runs for each chunk a relay reads and writes (twice per
request) costs less:

  - the reactor handles a plain read event itself instead of through
    C{_doReadOrWrite}, and our transports' C{doRead} hands the bytes to the
    protocol itself instead of through C{_dataReceived}: two calls fewer;
  - the attributes C{write} and C{doRead} read on every call are instance
    attributes (see L{_ImmediateWriteMixin.__init__}), and L{Server} and
    L{Client} each have their own copy of those two functions (see
    L{_ownCode}), so that CPython's specialized attribute reads stay
    specialized.

Select it with C{twistd -r txlb}, C{twist --reactor=txlb} or
C{trial --reactor=txlb}, or call L{install} before anything imports
C{twisted.internet.reactor}.  C{listenTCP} and C{connectTCP} (and so every
TCP endpoint, C{serverFromString} and C{clientFromString}) and
C{adoptStreamPort}/C{adoptStreamConnection} give the transports below.

One behaviour differs from C{EPollReactor}: legacy C{twisted.python.log}
messages emitted while handling an I/O event no longer carry the
connection's C{logPrefix} as their C{system}.  C{twisted.logger} events
never took it from there.
"""

from __future__ import annotations

import socket
import sys
import types
from collections.abc import Iterable
from errno import ENOBUFS, EWOULDBLOCK

from twisted.internet import abstract, main, tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.logger import Logger
from twisted.python import log

try:
    from twisted.internet import _newtls
except ImportError:  # pragma: no cover - no pyOpenSSL: no startTLS at all
    _newtls = None

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # pragma: no cover - exercised only off Linux
    EPollReactor = None

__all__ = ["Client", "Connector", "HotPathReactor", "Port", "Server", "install"]

_log = Logger()


def _write(transport: tcp.Connection, data: bytes, raw: bool = False) -> None:
    """
    Send C{data} on C{transport}'s socket now if nothing is queued before it,
    and queue whatever the kernel did not take through Twisted's buffered
    path.

    This is L{Server.write} and L{Client.write} itself (a plain function
    as a method: no extra call on the hot path).  After C{startTLS}, the
    application's bytes go to the TLS layer instead; the ciphertext that
    layer writes comes back with C{raw=True}, from L{_TLSBypass}.

    C{EWOULDBLOCK}/C{EAGAIN} and C{ENOBUFS} mean "buffer it".  Any other
    error means the connection is broken: the reactor reports the loss on
    its next event (see L{_reportLossOnNextEvent}).  Nothing is raised.

    @param transport: a connected (or not) TCP transport.
    @param data: the bytes to write.  Anything that is not a non-empty
        C{bytes} takes the inherited path unchanged, which rejects
        non-bytes with C{TypeError} and ignores C{b""}.
    @param raw: C{True} for bytes for the wire even though C{startTLS} has
        run.
    """
    if (
        (raw or not transport.TLS)
        and type(data) is bytes
        and data
        and transport.connected
        # A close or half-close (_writeDisconnecting comes first and stays
        # set after _writeDisconnected) is pending or done, or the
        # connection was aborted: that ordering lives in the buffered path
        # (doWrite flushes, then closes), and after an abort nothing may
        # reach the peer.
        and not (
            transport.disconnecting
            or transport._writeDisconnecting
            or transport._aborting
        )
        # Nothing queued: sending now cannot overtake earlier bytes.
        and not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
        # A pull producer writes again only when doWrite drains the buffer
        # and calls its resumeProducing: bytes sent here would never get
        # there, and the transfer would stall.
        and (transport.producer is None or transport.streamingProducer)
    ):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            if e.errno != ENOBUFS:
                _reportLossOnNextEvent(transport)
                return
            sent = 0
        if sent == len(data):
            return
        # The rest is at most what one write carried; relay writes are at
        # most one recv (bufferSize), so this copy stays small.
        abstract.FileDescriptor.write(transport, data[sent:])
    elif raw or not transport.TLS:
        abstract.FileDescriptor.write(transport, data)
    else:
        # ConnectionMixin.write: to the TLS layer, if still connected.
        tcp.Connection.write(transport, data)


def _writeSequence(
    transport: tcp.Connection, iovec: Iterable[bytes], raw: bool = False
) -> None:
    """
    Like L{_write}, for a sequence of chunks sent as one.

    This is L{Server.writeSequence} and L{Client.writeSequence}.

    @param transport: a connected (or not) TCP transport.
    @param iovec: a sequence of C{bytes}.  If any element is not C{bytes}
        the whole sequence takes the inherited path, which raises
        C{TypeError} as Twisted always has.
    @param raw: as for L{_write}.
    """
    if not raw and transport.TLS:
        tcp.Connection.writeSequence(transport, iovec)
        return
    for chunk in iovec:
        if type(chunk) is not bytes:
            abstract.FileDescriptor.writeSequence(transport, iovec)
            return
    _write(transport, b"".join(iovec), raw)


def _connectionLost() -> ConnectionLost:
    """
    Stand-in for C{doRead}/C{doWrite} on a connection whose immediate send
    failed.

    @return: L{main.CONNECTION_LOST}, so the reactor disconnects the
        transport with L{ConnectionLost}.
    """
    return main.CONNECTION_LOST


def _reportLossOnNextEvent(transport: tcp.Connection) -> None:
    """
    Make the reactor disconnect C{transport} with L{ConnectionLost} on its
    next event, after C{socket.send} failed with a connection error.

    A write never raises and never disconnects synchronously (the protocol
    may be in the middle of anything), so the loss is reported from the
    reactor, as stock Twisted does from C{doWrite}.  It cannot simply be left
    to the next C{recv} or C{send}: this C{send} has already taken the
    socket's pending error (C{ECONNRESET}, say), and what follows would read
    as a clean end of file, C{ConnectionDone}.  C{abortConnection} and
    C{tcp.Client} replace C{doRead}/C{doWrite} the same way.

    @param transport: the transport whose send failed.
    """
    transport.doRead = transport.doWrite = _connectionLost
    # Reading may be paused; a writer always gets the next event.
    transport.startWriting()


def _ownCode(function: types.FunctionType) -> types.FunctionType:
    """
    Copy C{function}, with a code object of its own.

    CPython (3.11 and later) specializes each attribute read in a code
    object for the type it last saw there, and falls back to a slow read
    when another type comes.  A relay calls C{write} and C{doRead} on a
    L{Server} and a L{Client} in turn; with one code object for both, those
    reads would keep falling back.  So each transport class gets its own
    copy, whose reads only ever see that class.

    @param function: a plain function.
    @return: a function like it, of the same name and defaults.
    """
    return types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )


class _ImmediateWriteMixin:
    """
    Immediate-send C{write}/C{writeSequence} for L{tcp.Connection}
    subclasses, honouring C{startTLS}.

    Once C{startTLS} has run, C{TLS} is true and C{protocol} is a
    L{twisted.protocols.tls.TLSMemoryBIOProtocol}: application bytes go to
    it to be encrypted.  The ciphertext it produces comes back through
    L{_TLSBypass}, which sends it immediately too.
    """

    write = _write
    writeSequence = _writeSequence

    def __init__(self, *args, **kwargs) -> None:
        """
        Make the class attributes that L{_write} and L{_doRead} read on
        every call attributes of this instance, then initialize as
        Twisted's transport does.

        CPython 3.11 specializes reads of instance attributes, not reads of
        class attributes through an instance; these start out as class
        attributes of Twisted's classes (Twisted sets them on the instance
        only when they change).  Setting them here, in the same order for
        every instance, keeps them cheap to read.
        """
        self.TLS = False
        self.disconnecting = False
        self._writeDisconnecting = False
        self._aborting = False
        self.dataBuffer = b""
        self.offset = 0
        self.bufferSize = type(self).bufferSize
        super().__init__(*args, **kwargs)

    def registerProducer(self, producer, streaming: bool) -> None:
        """
        Register a producer; a pull producer is also resumed once the socket
        is next writable.

        A pull producer is asked for more when the write buffer drains.  Stock
        Twisted always has a buffer to drain after a write, so a pull producer
        registered right after a write is resumed once that write is on the
        wire.  Here that write may have gone out already; asking for
        writability makes C{doWrite} find the buffer empty and resume the
        producer on the next iteration, as stock Twisted would have.

        @param producer: an L{IPushProducer} or L{IPullProducer}.
        @param streaming: C{True} for a push producer.
        """
        super().registerProducer(producer, streaming)
        if (
            not streaming
            and not self.TLS
            and self.connected
            and self.producer is producer
        ):
            self.startWriting()

    if _newtls is not None:

        def startTLS(self, ctx, normal: bool = True) -> None:
            """
            Start TLS on this connection, as L{tcp.Connection.startTLS} does,
            but with L{_TLSBypass} as the raw layer under the TLS protocol.

            @param ctx: the TLS context factory.
            @param normal: C{True} if the TLS client is this connection's TCP
                client.
            """
            _newtls.startTLS(self, ctx, normal, _TLSBypass)


def _doRead(transport: tcp.Connection) -> ConnectionDone | ConnectionLost | None:
    """
    Read what the socket has and give it to the protocol.

    This is L{Server.doRead} and L{Client.doRead}: L{tcp.Connection.doRead}
    with its C{_dataReceived} folded in, one Python call less per chunk.
    After C{startTLS} the protocol is the TLS layer, as before.

    @param transport: the connected transport whose socket is readable.
    @return: L{main.CONNECTION_DONE} at end of file,
        L{main.CONNECTION_LOST} when C{recv} failed, else C{None}.
    """
    try:
        data = transport.socket.recv(transport.bufferSize)
    except OSError as e:
        if e.args[0] == EWOULDBLOCK:
            return None
        return main.CONNECTION_LOST
    if not data:
        return main.CONNECTION_DONE
    transport.protocol.dataReceived(data)
    return None


class _TLSBypass(abstract.FileDescriptor):
    """
    The raw layer under C{startTLS}.

    L{twisted.internet._newtls.startTLS} hands the TLS protocol a
    C{_BypassTLS} whose methods call this class's unbound methods with the
    connection as C{self}, to reach the socket without passing through the
    TLS layer again.  Stock Twisted passes L{abstract.FileDescriptor}; this
    subclass only makes the ciphertext writes immediate as well.
    """

    def write(self, data: bytes) -> None:
        """
        Send ciphertext now if possible, otherwise buffer it.

        @param data: bytes for the wire.
        """
        _write(self, data, raw=True)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        """
        Send chunks of ciphertext now if possible, otherwise buffer them.

        @param iovec: a sequence of C{bytes} for the wire.
        """
        _writeSequence(self, iovec, raw=True)


class Server(_ImmediateWriteMixin, tcp.Server):
    """
    A server-side TCP transport whose writes go out immediately when they
    can.
    """

    write = _ownCode(_write)
    doRead = _ownCode(_doRead)


class Client(_ImmediateWriteMixin, tcp.Client):
    """
    A client-side TCP transport whose writes go out immediately when they
    can.

    While it connects, C{tcp.BaseClient} sets C{doRead} on the instance,
    which hides the class's until the connection is made.
    """

    write = _ownCode(_write)
    doRead = _ownCode(_doRead)


class Port(tcp.Port):
    """
    A TCP listening port whose accepted connections are L{Server}s.
    """

    transport = Server


class Connector(tcp.Connector):
    """
    A TCP connector whose connections are L{Client}s.
    """

    def _makeTransport(self) -> Client:
        """
        @return: a new L{Client} for this connection attempt.
        """
        return Client(self.host, self.port, self.bindAddress, self, self.reactor)


_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


if EPollReactor is not None:

    class HotPathReactor(EPollReactor):
        """
        An C{EPollReactor} that dispatches I/O events without a log context
        and makes TCP connections with L{Port}, L{Connector}, L{Server} and
        L{Client}.
        """

        _log = Logger()

        def doPoll(self, timeout: float | None) -> None:
            """
            Wait for I/O events for at most C{timeout} seconds and dispatch
            them.

            C{EPollReactor} wraps each dispatch in C{log.callWithLogger}.  Here
            C{_doReadOrWrite} (C{twisted.internet.posixbase._PollLikeMixin},
            Twisted 26.10) is called directly, and for the commonest event,
            readable and nothing else, what it does is done inline, in its
            order: check the descriptor, C{doRead}, log any exception with
            C{log.err()}, and disconnect the selectable on a reason.  What
            can still escape is an exception from C{connectionLost} during
            that disconnect, which C{callWithLogger} used to log; the C{try}
            below does the same per event (it costs nothing when nothing is
            raised) so one broken protocol cannot cut short the rest of the
            batch.

            @param timeout: seconds to wait, or C{None} to wait until an
                event arrives.
            """
            if timeout is None:
                timeout = -1
            try:
                events = self._poller.poll(timeout, len(self._selectables))
            except InterruptedError:
                return
            selectables = self._selectables
            dispatch = self._doReadOrWrite
            readable = self._POLL_IN
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                try:
                    if event != readable:
                        dispatch(selectable, fd, event)
                        continue
                    inRead = False
                    try:
                        if selectable.fileno() == -1:
                            why = _NO_FILEDESC
                        else:
                            why = selectable.doRead()
                            inRead = True
                    except BaseException:
                        why = sys.exc_info()[1]
                        log.err()
                    if why:
                        self._disconnectSelectable(selectable, why, inRead)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    self._log.failure(
                        "Unhandled error handling I/O on {selectable!r}",
                        selectable=selectable,
                    )

        doIteration = doPoll

        def listenTCP(self, port, factory, backlog=50, interface=""):
            """
            Listen on a TCP port; accepted connections are L{Server}s.

            @see: L{twisted.internet.interfaces.IReactorTCP.listenTCP}
            """
            p = Port(port, factory, backlog, interface, self)
            p.startListening()
            return p

        def connectTCP(self, host, port, factory, timeout=30.0, bindAddress=None):
            """
            Connect to a TCP server; the connection is a L{Client}.

            @see: L{twisted.internet.interfaces.IReactorTCP.connectTCP}
            """
            c = Connector(host, port, factory, timeout, bindAddress, self)
            c.connect()
            return c

        def adoptStreamPort(self, fileDescriptor, addressFamily, factory):
            """
            Listen on an already-listening socket (systemd activation,
            C{SO_REUSEPORT} workers); TCP connections are L{Server}s.

            @see: L{twisted.internet.interfaces.IReactorSocket.adoptStreamPort}
            """
            if addressFamily not in _TCP_FAMILIES:
                return super().adoptStreamPort(fileDescriptor, addressFamily, factory)
            p = Port._fromListeningDescriptor(
                self, fileDescriptor, addressFamily, factory
            )
            p.startListening()
            return p

        def adoptStreamConnection(self, fileDescriptor, addressFamily, factory):
            """
            Take over an already-connected socket; a TCP one becomes a
            L{Server}.

            @see:
                L{twisted.internet.interfaces.IReactorSocket.adoptStreamConnection}
            """
            if addressFamily not in _TCP_FAMILIES:
                return super().adoptStreamConnection(
                    fileDescriptor, addressFamily, factory
                )
            return Server._fromConnectedSocket(
                fileDescriptor, addressFamily, factory, self
            )


def install() -> None:
    """
    Install L{HotPathReactor} as C{twisted.internet.reactor}.

    Where epoll is unavailable (not Linux), install the platform's default
    reactor instead and log a warning saying so.

    @raise twisted.internet.error.ReactorAlreadyInstalledError: a reactor is
        already installed.
    """
    from twisted.internet.main import installReactor

    if EPollReactor is None:
        from twisted.internet import default

        default.install()
        _log.warn(
            "txlb reactor needs epoll, unavailable here: "
            "using the platform default reactor instead"
        )
        return
    installReactor(HotPathReactor())
