"""
Real HTTP backends for the L7 integration tests, run inside the test
process on 127.0.0.1: a C{twisted.web} site that names itself and counts
its connections, and small raw protocols for what a well-behaved server
never does (streaming a gigabyte with backpressure, reading one slowly,
dying in the middle of a response).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httptools
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from txlb.test import procs

MIB = 1024 * 1024


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class NamedResource(Resource):
    """
    Answers every path for one named backend:

      - C{/chunked}: the name in three pieces, chunked (no Content-Length);
      - C{/upload}: JSON with the length and SHA-256 of the request body;
      - C{/hold}: nothing until the test calls L{NamedSite.releaseHeld};
      - every response: C{X-Served-By} (the name) and C{X-Target} (the
        request target) headers;
      - anything else: the name and a newline, with Content-Length.
    """

    isLeaf = True

    def __init__(self, site: NamedSite) -> None:
        super().__init__()
        self.site = site

    def render(self, request: Request) -> Any:
        site = self.site
        site.requests.append((request.method, request.uri, request.requestHeaders))
        site.transports.add(request.channel.transport)
        request.setHeader(b"X-Served-By", site.name)
        request.setHeader(b"X-Target", request.uri)
        request.setHeader(b"Content-Type", b"text/plain")
        path = request.path
        if path == b"/chunked":
            for piece in (site.name[:1], site.name[1:], b"\n"):
                request.write(piece)
            request.finish()
            return NOT_DONE_YET
        if path == b"/upload":
            body = request.content.read()
            return json.dumps(
                {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            ).encode("ascii")
        if path == b"/hold":
            site.held.append(request)
            arrived, site.arrived = site.arrived, Deferred()
            arrived.callback(request)
            return NOT_DONE_YET
        return site.name + b"\n"


class NamedSite(Site):
    """
    A C{twisted.web} site that says its name, and counts the TCP connections
    made to it.

    @ivar connections: connections accepted so far.
    @ivar requests: C{(method, uri, headers)} of every request rendered.
    @ivar held: requests to C{/hold} not answered yet.
    @ivar transports: the transports of the connections that carried a
        request.
    @ivar arrived: fires with the next request to C{/hold}.
    """

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.connections = 0
        self.requests: list[tuple[bytes, bytes, Any]] = []
        self.held: list[Request] = []
        self.transports: set[Any] = set()
        self.arrived: Deferred[Request] = Deferred()
        super().__init__(NamedResource(self))
        self.noisy = False

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)

    def dropConnections(self) -> None:
        """
        Abort every connection that carried a request (with
        C{stopListening}: the backend is gone).
        """
        for transport in self.transports:
            transport.abortConnection()

    def releaseHeld(self) -> None:
        """
        Answer every held request with the name.
        """
        held, self.held = self.held, []
        for request in held:
            request.write(self.name + b"\n")
            request.finish()


class _HeadReader(Protocol):
    """
    Parses requests with httptools; subclasses act on the events.
    """

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.parser = httptools.HttpRequestParser(self)

    def dataReceived(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        pass

    def on_body(self, data: bytes) -> None:
        pass

    def on_message_complete(self) -> None:
        pass


class TruncatingBackend(_HeadReader):
    """
    Answers each request with a response that promises more than it sends,
    then closes: 1000 bytes announced by Content-Length (C{factory.chunked}
    false) or a chunked body without its last chunk.
    """

    def on_message_complete(self) -> None:
        if self.factory.chunked:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"64\r\n" + b"t" * 100 + b"\r\n"
            )
        else:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"t" * 100
            )
        self.transport.loseConnection()


class TruncatingFactory(Factory):
    protocol = TruncatingBackend
    noisy = False

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked
        self.connections = 0


class CloseDelimitedBackend(_HeadReader):
    """
    Answers with a body that has neither Content-Length nor chunking: it
    ends when the backend closes the connection.
    """

    def on_message_complete(self) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for piece in (b"until ", b"the ", b"end\n"):
            self.transport.write(piece)
        self.transport.loseConnection()


class CloseDelimitedFactory(Factory):
    protocol = CloseDelimitedBackend
    noisy = False

    def __init__(self) -> None:
        self.connections = 0


class OneShotBackend(_HeadReader):
    """
    Answers the first request of each connection (keep-alive, with a
    Content-Length) and closes on the next without answering it: a backend
    whose keep-alive timeout ends a connection just as a request arrives.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.answered = 0

    def on_message_complete(self) -> None:
        self.factory.requests += 1
        if self.answered:
            self.transport.loseConnection()
            return
        self.answered += 1
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")


class OneShotFactory(Factory):
    protocol = OneShotBackend
    noisy = False

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0


class BadResponseBackend(_HeadReader):
    """
    Answers each request with a response a proxy must refuse: two
    different Content-Lengths.
    """

    def on_message_complete(self) -> None:
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
        )


class BadResponseFactory(Factory):
    protocol = BadResponseBackend
    noisy = False

    def __init__(self) -> None:
        self.connections = 0


class StreamingBackend(_HeadReader):
    """
    Answers each request with C{factory.total} bytes and a Content-Length,
    written as fast as the connection takes them, honouring backpressure
    (a push producer).
    """

    def on_message_complete(self) -> None:
        total = self.factory.total
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (total,))
        procs.ByteSource(self.transport, total).start()


class StreamingFactory(Factory):
    protocol = StreamingBackend
    noisy = False

    def __init__(self, total: int) -> None:
        self.total = total
        self.connections = 0


class UploadSink(_HeadReader):
    """
    Counts the request body, with whichever framing it came; stops reading
    for C{factory.pauseSeconds} after the first MiB; answers with the count
    and the framing header it saw.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.count = 0
        self.pausedOnce = False
        self.headers: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, data: bytes) -> None:
        self.count += len(data)
        if not self.pausedOnce and self.count > MIB:
            self.pausedOnce = True
            self.transport.pauseProducing()
            factory = self.factory
            _reactor().callLater(factory.pauseSeconds, self._resume)

    def _resume(self) -> None:
        self.factory.resumed.callback(None)
        self.transport.resumeProducing()

    def on_message_complete(self) -> None:
        framing = [
            h for h in self.headers if h[0] in (b"content-length", b"transfer-encoding")
        ]
        body = json.dumps(
            {
                "count": self.count,
                "framing": [[n.decode(), v.decode()] for n, v in framing],
            }
        ).encode("ascii")
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.headers = []
        self.count = 0


class UploadSinkFactory(Factory):
    protocol = UploadSink
    noisy = False

    def __init__(self, pauseSeconds: float) -> None:
        self.pauseSeconds = pauseSeconds
        self.connections = 0
        self.resumed: Deferred[None] = Deferred()
