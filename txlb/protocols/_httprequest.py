"""
Reading requests on an L7 client connection: the part of
L{txlb.protocols.http.HTTPProxyProtocol} that feeds httptools, checks what it
reports, and queues each request (or its refusal).

Most requests a listener sees are the same few plain heads over and over.
A read that is exactly one whole head it has parsed, checked and routed
before, at a message boundary, is that request again (L{_KnownRequest}): it
is queued without being parsed.  A head is remembered the second time it is
parsed: traffic whose heads vary (cookies, queries) would otherwise pay for
remembering every one.

The httptools callbacks do as little as they can: each runs in Python, and
L{on_header} runs for every header line, so it only collects the lines; the
head is counted against C{maxHeaderSize} once it ends (or at the end of
each read, while it spans reads).
"""

from __future__ import annotations

import collections
import math

import attrs
import httptools
from twisted.python.failure import Failure

from txlb.protocols._httpparts import (
    _MAX_KNOWN_REQUEST_SIZE,
    BODY_HIGH_WATER,
    MAX_PIPELINE,
    ProxiedRequest,
    _Closing,
    _KnownRequest,
)
from txlb.protocols._httpwire import (
    _frameBody,
    _originForm,
    _parserReason,
    _Reject,
)
from txlb.protocols.headers import (
    HeaderError,
    validateRequestHeaders,
)

# Paths a listener with C{stats = true} answers itself.
_LOCAL_PATHS = frozenset((b"/lb-health", b"/lb-stats"))

_HTTP11 = (1, 1)
_HTTP10 = (1, 0)
# The versions txlb serves, as httptools spells them, and as the end of a
# request line spells them.
_VERSIONS = {"1.1": _HTTP11, "1.0": _HTTP10}
_REQUEST_LINE_VERSIONS = {b" HTTP/1.1": _HTTP11, b" HTTP/1.0": _HTTP10}


def _linesSize(headers: list[tuple[bytes, bytes]], start: int) -> int:
    """
    @return: what the header lines from C{start} on count against
        C{maxHeaderSize}: their names and values, and 4 bytes each.
    """
    size = 0
    for name, value in headers[start:] if start else headers:
        size += len(name) + len(value) + 4
    return size


def _rateLimited(wait: float) -> tuple[int, str, tuple[bytes, ...]]:
    """
    @return: the refusal of a request over the rate limit, which may try
        again in C{wait} seconds.
    """
    return 429, "too many requests", (b"Retry-After: %d" % max(1, math.ceil(wait)),)


class _RequestReader:
    """
    The input half of L{txlb.protocols.http.HTTPProxyProtocol}: its
    C{dataReceived} and the httptools callbacks.
    """

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        if self.closing or self.ignoreInput:
            return
        if "upgrade" in self.pauses:
            # Until the backend answers the upgrade, the bytes are the
            # tunnel's (a transport may deliver a read after a pause).
            last = self.queue[-1]
            last.upgradeData = [*last.upgradeData, data]
            return
        if self.parsing is None:
            # A read that starts a request may be one whole request head
            # already seen (see _KnownRequest).
            factory = self.factory
            # Only reads this small are remembered: a larger one is not
            # looked up (which would hash all of it).
            known = (
                factory.knownRequests.get(data)
                if len(data) <= _MAX_KNOWN_REQUEST_SIZE else None
            )
            if (
                known is not None
                # Parsed and routed under what the listener has now.
                and known.router is factory.router
                and known.settings is factory.settings
                and known.pools is factory.pools
                and known.localStats is factory.localStats
            ):
                self.knownRequest(known)
                return
            self.wholeRead = data
        else:
            self.wholeRead = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if not self.closing:
                self.upgradeData(data[e.args[0]:])
        except httptools.HttpParserCallbackError as e:
            reject = e.__context__
            if self.closing:
                # txlb answered and closed while this read was parsed.
                return
            if isinstance(reject, _Reject):
                self.rejectParsing(reject.status, reject.reason, reject.headers)
            else:
                self._log.failure(
                    "internal error parsing a request from {peer}",
                    failure=Failure(reject) if reject is not None else None,
                    peer=self.peer,
                )
                self.rejectParsing(500, "internal error")
        except httptools.HttpParserError as e:
            if self.closing:
                return
            if self.headTooLarge():
                # Over the limit before the error (see on_header).
                self.rejectParsing(431, "request header block too large")
            elif isinstance(e, httptools.HttpParserInvalidMethodError):
                self.rejectParsing(400, "invalid method")
            elif isinstance(e, httptools.HttpParserInvalidURLError):
                self.rejectParsing(400, "invalid request target")
            else:
                self.rejectParsing(400, _parserReason(e))
        else:
            if self.parsing is not None:
                self.checkPendingHead(len(data))

    def knownRequest(self, known: _KnownRequest) -> None:
        """
        A read that was one whole request head seen before: what parsing
        and checking it gave then, it gives now; queue it as
        L{on_headers_complete} and L{on_message_complete} would.
        """
        factory = self.factory
        request = ProxiedRequest()
        request.started = now = factory.reactor.seconds()
        request.method = known.method
        request.target = known.target
        request.headers = known.headers
        request.framing = known.framing
        request.headerSize = known.headerSize
        request.bodyDone = True
        request.known = known
        self.firstHead = False
        queue = self.queue
        if not queue:
            # The head is all here: no head deadline.
            self.timer.deadline = None
        if factory.rateLimit is not None:
            wait = factory.rateLimit.take(factory.rateKey(self.peer, request.headers))
            if wait:
                factory.counters["rate_limited"] += 1
                request.framing = None
                self.parsing = request
                self.rejectParsing(*_rateLimited(wait))
                return
        l7pool = request.l7pool = known.l7pool
        l7pool.budget.requests += 1
        request.counted = True
        queue.append(request)
        if len(queue) > MAX_PIPELINE:
            self.pauseReading("pipeline")
        elif len(queue) == 1:
            self.sendWhole(request, now)

    def checkPendingHead(self, received: int) -> None:
        """
        Bound a request head that spans reads: start its deadline (see
        L{on_message_begin}), count the header lines reported during this
        read (L{on_header} only collects them), and the part that httptools
        holds before reporting it (a header line is reported only once it
        ends): a read during which no part of the head was reported belongs
        to it whole.
        """
        request = self.parsing
        if request is None or self.ignoreInput:
            return
        headers = request.headers
        counted = request.headersCounted
        if len(headers) != counted:
            # Header lines (or, after a chunked body, trailer lines) came.
            request.headerSize += _linesSize(headers, counted)
            request.headersCounted = len(headers)
            self.headProgress = True
        if request.framing is not None:
            pending = 0
        else:
            if request.headTimed:
                request.headTimed = False
                self.timer.set(
                    self.factory.settings.headerTimeout, self.headerTimedOut,
                    request.started,
                )
            if self.headProgress:
                self.headProgress = False
                pending = request.headerPending = 0
            else:
                pending = request.headerPending = request.headerPending + received
        if request.headerSize + pending > self.factory.settings.maxHeaderSize:
            self.rejectParsing(431, "request header block too large")

    def headTooLarge(self) -> bool:
        """
        @return: the header (or trailer) lines of the request being read,
            reported but not counted yet, put it over C{maxHeaderSize}.
        """
        request = self.parsing
        if request is None:
            return False
        size = request.headerSize + _linesSize(request.headers, request.headersCounted)
        return size > self.factory.settings.maxHeaderSize

    def rejectParsing(self, status: int, reason: str,
                      headers: tuple[bytes, ...] = (), counter: str = "rejected") -> None:
        """
        The request being parsed is refused: once the requests before it
        are answered, answer C{status} and close.  Nothing more is read.

        @param counter: the listener counter that counts the refusal.
        """
        request = self.parsing or ProxiedRequest()
        self.parsing = None
        self.bodyWatch = False
        request.error = _Reject(status, reason, headers)
        self.factory.counters[counter] += 1
        self.ignoreInput = True
        self.pauseReading("rejected")
        queue = self.queue
        if request.framing is None or request not in queue:
            # Refused in its head: not queued yet.
            if not queue:
                self.timer.clear()
            queue.append(request)
            if len(queue) == 1:
                self.dispatch()
            return
        # Refused in its body (too large, too slow): it is queued, maybe in
        # flight.
        if queue[0] is request:
            self.abandon(request)
            if request.headSent:
                # Its response has started: it cannot be answered, only
                # cut short (and counted, and logged, as it went out).
                self.unregisterResponseProducer()
                queue.popleft()
                self.logRequest(request)
                self.closing = True
                self.transport.abortConnection()
                return
            self.answerError(request, status, reason, True, headers)

    def upgradeData(self, data: bytes) -> None:
        """
        Bytes after an upgrade request: held for the tunnel if the backend
        agrees, or, when txlb does not tunnel this upgrade, parsed as HTTP.
        """
        last = self.queue[-1] if self.queue else None
        if last is not None and last.framing is not None and last.framing.upgrade:
            if data:
                last.upgradeData = [*last.upgradeData, data]
            # Nothing after this request is HTTP until the backend answers.
            self.pauseReading("upgrade")
            return
        self.parser = httptools.HttpRequestParser(self)
        if data:
            self.dataReceived(data)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.closing:
            raise _Closing()
        factory = self.factory
        request = ProxiedRequest()
        request.started = factory.reactor.seconds()
        request.headers = []
        self.parsing = request
        self.headProgress = True
        if self.firstHead:
            # The deadline started at connectionMade runs on.
            self.firstHead = False
        elif not self.queue:
            # The head's deadline, from now: set at the end of this read if
            # the head is not whole by then (see checkPendingHead); a head
            # read whole never needs it.
            request.headTimed = True

    def on_url(self, url: bytes) -> None:
        self.headProgress = True
        request = self.parsing
        request.target += url
        request.headerSize += len(url)
        if len(request.target) > self.factory.settings.maxTargetLength:
            raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called for every header line: it only collects them.  They are
        # counted against maxHeaderSize at the end of the head, or of each
        # read while the head spans reads (checkPendingHead): a read is
        # bounded, so the lines of one read are too.
        self.parsing.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self.parsing
        parser = self.parser
        queue = self.queue
        if not queue:
            # self.timer.clear(), inline.
            self.timer.deadline = None
        factory = self.factory
        headers = request.headers
        counted = request.headersCounted
        if counted:
            size = request.headerSize + _linesSize(headers, counted)
        else:
            # _linesSize, inline, for a head reported in one read.
            size = request.headerSize + 4 * len(headers)
            for name, value in headers:
                size += len(name) + len(value)
        request.headerSize = size
        request.headersCounted = len(headers)
        if size > factory.settings.maxHeaderSize:
            raise _Reject(431, "request header block too large")
        data = self.wholeRead
        if data is not None:
            # The read started with this head, whose request line llhttp
            # accepted: its end says the version, for less than asking
            # llhttp (which formats a string).  A read starting with an
            # empty line is not looked at (the lookup misses).
            end = data.find(b"\r\n")
            version = _REQUEST_LINE_VERSIONS.get(data[end - 9:end])
        else:
            version = None
        if version is None:
            version = _VERSIONS.get(parser.get_http_version())
            if version is None:
                request.version = (0, 0)
                raise _Reject(505, "unsupported HTTP version")
        if version is not _HTTP11:
            request.version = version
        method = request.method = parser.get_method()
        if method == b"CONNECT":
            raise _Reject(405, "CONNECT is not supported")
        try:
            framing = validateRequestHeaders(version, headers)
        except HeaderError as e:
            raise _Reject(e.status, e.reason) from None
        target = request.target
        if not target.startswith(b"/"):
            if target == b"*" and method == b"OPTIONS":
                pass
            else:
                target, host = _originForm(target)
                request.target = target
                if host is not None:
                    framing = attrs.evolve(framing, host=host)
        maxBody = factory.settings.maxBodySize
        if maxBody is not None and (framing.contentLength or 0) > maxBody:
            raise _Reject(413, "request body too large")
        if factory.rateLimit is not None:
            wait = factory.rateLimit.take(factory.rateKey(self.peer, headers))
            if wait:
                factory.counters["rate_limited"] += 1
                # Refused in its head: answered, then closed, so its body
                # (if any) is never read as a request.
                raise _Reject(*_rateLimited(wait))
        request.framing = framing
        if factory.localStats is not None and target in _LOCAL_PATHS and (
            method == b"GET" or method == b"HEAD"
        ):
            request.local = target
            if not framing.chunked and not framing.contentLength:
                request.bodyDone = True
            elif not framing.expectContinue:
                self.watchBody()
            queue.append(request)
            if len(queue) == 1:
                self.dispatch()
            return
        l7pool = request.l7pool = factory.pools[
            factory.router.route(framing.host, target, headers)
        ]
        l7pool.budget.requests += 1
        request.counted = True
        if not framing.chunked and not framing.contentLength:
            # No body (RequestFraming.body is Body.NONE, without the call).
            request.bodyDone = True
        elif not framing.expectContinue:
            self.watchBody()
        queue.append(request)
        if len(queue) > MAX_PIPELINE:
            self.pauseReading("pipeline")
        elif len(queue) == 1:
            # dispatch(), for a request that is not an error.
            if request.bodyDone:
                self.sendWhole(request, factory.reactor.seconds())
            else:
                self.tryBackend(request)

    def on_body(self, data: bytes) -> None:
        request = self.parsing
        request.bodyReceived += len(data)
        settings = self.factory.settings
        maxBody = settings.maxBodySize
        if maxBody is not None and request.bodyReceived > maxBody:
            raise _Reject(413, "request body too large")
        bodyTimeout = settings.bodyTimeout
        if bodyTimeout is None:
            # No limit (maybe since a reload).
            if self.bodyWatch:
                self.bodyWatch = False
                self.timer.clear()
        elif self.bodyWatch:
            # Moved later in place: the timer looks again when it fires.
            self.timer.deadline = self.reactor.seconds() + bodyTimeout
        else:
            # A body sent before (or without) the 100 Continue it expected.
            self.watchBody()
        exchange = request.exchange
        if exchange is not None and exchange.connection is not None and not request.body:
            exchange.connection.writeBody(_frameBody(request, data))
            request.bodySent = True
            return
        if not request.body:
            request.body = collections.deque()
        request.body.append(data)
        request.bodyBuffered += len(data)
        self.bodyHeld += len(data)
        if self.bodyHeld > BODY_HIGH_WATER:
            self.pauseReading("body")

    def on_message_complete(self) -> None:
        request = self.parsing
        if not request.bodyDone and len(request.headers) != request.headersCounted:
            # Trailer lines after a chunked body, bounded as the head is.
            if self.headTooLarge():
                raise _Reject(431, "request header block too large")
            request.headerSize += _linesSize(request.headers, request.headersCounted)
        self.parsing = None
        data, self.wholeRead = self.wholeRead, None
        if request.bodyDone:
            # No body: its backend request is (or will be) finished where
            # it is sent.
            if (
                data is not None
                and request.l7pool is not None
                and len(data) <= _MAX_KNOWN_REQUEST_SIZE
            ):
                # A read that was one whole request may be remembered (see
                # _KnownRequest), but only the second time it is seen:
                # remembering costs more than parsing once, and most
                # requests of traffic whose heads vary never come again.
                factory = self.factory
                if (
                    factory.seenRequests.again(data)
                    and data.find(b"\r\n\r\n") == len(data) - 4
                ):
                    # The read was this request, and nothing else.
                    factory.rememberRequest(data, request)
            return
        request.bodyDone = True
        if self.bodyWatch:
            self.bodyWatch = False
            self.timer.clear()
        exchange = request.exchange
        if exchange is not None and exchange.connection is not None and not request.body:
            self.finishRequestBody(request, exchange.connection)

