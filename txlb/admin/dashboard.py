"""
The live dashboard: C{GET /} serves one self-contained page
(C{dashboard.html}: inline CSS and JavaScript, no external asset, so it
works offline), and C{GET /events} streams snapshots of every pool and
listener to it as server-sent events.

The stream is computed once per interval for all subscribers, by one
L{LoopingCall} on the injected reactor that runs only while someone
listens.  Each subscriber is a push producer registered with its
request, so a client that stops reading pauses it: snapshots are skipped
(a later one supersedes them) rather than buffered, and a client paused
for longer than the stall limit is disconnected.

Both endpoints are read-only and go through L{Guard.checkRead}.  A
browser's C{EventSource} cannot send an C{Authorization} header, so when
C{open_reads} is false these two (and only these two) also accept the
token as a C{?token=} query parameter.  That is a trade-off: a token in a
URL can end up in the browser's history and in access logs, where a
header would not.  To limit it, the token is blanked out of the request's
URI before the access log sees it, both responses say
C{Referrer-Policy: no-referrer} and C{Cache-Control: no-store}, and the
page removes the token from its address bar as soon as it has read it.
Mutating calls (the page's drain and enable buttons) never take a token
from the URL: they send C{Authorization: Bearer}.
"""

from __future__ import annotations

import hmac
import json
import math
import re
from importlib import resources
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from txlb.admin.guard import Guard, Refused, writeError
from txlb.admin.views import listenerView, poolView

# Seconds between two snapshots.
INTERVAL = 1.0
# Seconds between two keep-alive comments on the stream.
KEEPALIVE = 15.0
# Seconds a subscriber may stay paused (not reading) before it is dropped.
STALL_LIMIT = 30.0
# Milliseconds an EventSource waits before reconnecting.
RETRY_MS = 2000

_TOKEN_IN_QUERY = re.compile(rb"([?&]token=)[^&#]*")

# The page is served as it is, but for the one attribute telling whether
# its event stream needs the token.
_READS_PLACEHOLDER = b"__TXLB_READS__"

_PAGE_POLICY = (
    b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    b"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'self'; "
    b"frame-ancestors 'none'"
)


def install(root: Resource, txlb: Any, guard: Guard, reactor: Any) -> EventsResource:
    """
    Put the dashboard page at C{/} and its event stream at C{/events} of
    the admin resource tree C{root}.

    @param txlb: the running L{txlb.service.TxlbService}.
    @param guard: the admin service's L{Guard}.
    @param reactor: the clock snapshots are timed by.
    @return: the L{EventsResource}, whose L{EventsResource.stop} ends
        every stream.
    """
    events = EventsResource(txlb, guard, reactor)
    root.putChild(b"", IndexResource(guard))
    root.putChild(b"events", events)
    return events


def queryTokenGiven(guard: Guard, request: IRequest) -> bool:
    """
    Whether C{request}'s URL carries the configured token as C{?token=}
    (compared in constant time).
    """
    token = guard.config.token
    given = (request.args or {}).get(b"token")
    if token is None or not given:
        return False
    return hmac.compare_digest(given[-1], token.encode("utf-8"))


def checkRead(guard: Guard, request: IRequest) -> None:
    """
    L{Guard.checkRead}, also accepting the token from the query string;
    the token is then blanked out of C{request.uri} so that the access log
    does not record it.

    @raise Refused: as L{Guard.checkRead}.
    """
    try:
        guard.checkRead(request)
    except Refused as refused:
        if refused.status != 401 or not queryTokenGiven(guard, request):
            raise
    finally:
        request.uri = _TOKEN_IN_QUERY.sub(rb"\1-", request.uri)


def _readOnlyHeaders(request: IRequest) -> None:
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"x-content-type-options", b"nosniff")


def _loginPage(message: str) -> bytes:
    """
    A small page asking for the token, for a browser refused the
    dashboard: the form puts it in the URL, where the dashboard reads it.
    """
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        "<title>txlb admin</title></head><body>"
        f"<p>{message}</p><form method=get action=''>"
        "<label>Admin token <input type=password name=token autocomplete=off "
        "autofocus></label> <button>Open</button></form></body></html>\n"
    ).encode("utf-8")


# Dashboards streaming at once at most: each costs a snapshot a second.
MAX_SUBSCRIBERS = 64

class IndexResource(Resource):
    """
    C{GET /}: the dashboard page.
    """

    isLeaf = True

    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self.guard = guard
        self.page = resources.files("txlb.admin").joinpath("dashboard.html").read_bytes()

    def render_GET(self, request: IRequest) -> bytes:
        """
        The page, or a refusal: 421 for a foreign Host; 401 with a form
        asking for the token when reads need it.
        """
        _readOnlyHeaders(request)
        request.setHeader(b"x-frame-options", b"DENY")
        try:
            checkRead(self.guard, request)
        except Refused as refused:
            if refused.status != 401:
                return writeError(request, refused.status, refused.message)
            request.setResponseCode(401)
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"content-security-policy", _PAGE_POLICY)
            return _loginPage("This dashboard needs the admin token.")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", _PAGE_POLICY)
        reads = b"open" if self.guard.config.openReads else b"token"
        return self.page.replace(_READS_PLACEHOLDER, reads)


@implementer(IPushProducer)
class _Subscriber:
    """
    One client of the event stream: a push producer registered with its
    request, so that the transport tells it when the client stops reading.

    @ivar pausedSince: when the transport paused it, or C{None}.
    """

    def __init__(self, request: IRequest, clock: Any) -> None:
        self.request = request
        self.clock = clock
        self.pausedSince: float | None = None
        self.stopped = False

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: the client is not reading.
        """
        if self.pausedSince is None:
            self.pausedSince = self.clock.seconds()

    def resumeProducing(self) -> None:
        """
        The transport has room again.
        """
        self.pausedSince = None

    def stopProducing(self) -> None:
        """
        The connection is going away.
        """
        self.stopped = True

    def send(self, data: bytes) -> None:
        """
        Write C{data} unless the transport is full (skipped: the next
        snapshot supersedes it).
        """
        if self.pausedSince is None and not self.stopped:
            self.request.write(data)

    def stalledFor(self) -> float:
        """
        Seconds it has been paused.
        """
        if self.pausedSince is None:
            return 0.0
        return self.clock.seconds() - self.pausedSince

    def drop(self) -> None:
        """
        Cut the connection now: buffered data is not worth waiting for.
        """
        self.stopped = True
        transport = getattr(self.request, "transport", None)
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.request.loseConnection()

    def end(self) -> None:
        """
        Finish the response (the client's EventSource will reconnect).
        """
        self.stopped = True
        self.request.unregisterProducer()
        self.request.finish()


class EventsResource(Resource):
    """
    C{GET /events}: server-sent events, one C{data:} line of JSON per
    snapshot (see L{snapshot}): one at once, then one per C{interval}
    seconds, with a comment every C{keepAlive} seconds.

    @ivar subscribers: the clients listening now.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        txlb: Any,
        guard: Guard,
        reactor: Any,
        interval: float = INTERVAL,
        keepAlive: float = KEEPALIVE,
        stallLimit: float = STALL_LIMIT,
    ) -> None:
        super().__init__()
        self.txlb = txlb
        self.guard = guard
        self.reactor = reactor
        self.interval = interval
        self.stallLimit = stallLimit
        self.subscribers: list[_Subscriber] = []
        self.keepAlive = keepAlive
        self._keptAliveAt = 0.0
        self._loop: LoopingCall | None = None
        # (pool, server) -> (responses, connections) at the last sample.
        self._counts: dict[tuple[str, str], tuple[int, int]] = {}
        self._sampledAt: float | None = None
        # (pool, server) -> (requests/s, connections/s) over the last interval.
        self._rates: dict[tuple[str, str], tuple[float, float]] = {}

    # ---------------------------------------------------------------- HTTP

    def render_GET(self, request: IRequest) -> Any:
        """
        Subscribe C{request} to the stream, after L{checkRead}.
        """
        _readOnlyHeaders(request)
        try:
            checkRead(self.guard, request)
        except Refused as refused:
            return writeError(request, refused.status, refused.message)
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            request.setHeader(b"retry-after", b"5")
            return writeError(request, 503, "too many dashboards open")
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        # Tell a buffering reverse proxy (nginx) to pass events through.
        request.setHeader(b"x-accel-buffering", b"no")
        if self._loop is None:
            # Rates start over: the counters are sampled from now on.
            self._sampledAt = None
            self._sample()
            self._keptAliveAt = self.reactor.seconds()
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self.reactor
            self._loop.start(self.interval, now=False)
        subscriber = _Subscriber(request, self.reactor)
        self.subscribers.append(subscriber)
        request.registerProducer(subscriber, True)
        request.notifyFinish().addBoth(self._finished, subscriber)
        request.write(b"retry: %d\n" % (RETRY_MS,) + self.encode(self.snapshot()))
        return NOT_DONE_YET

    def render_HEAD(self, request: IRequest) -> bytes:
        """
        The headers a C{GET} would get, and no stream.
        """
        _readOnlyHeaders(request)
        try:
            checkRead(self.guard, request)
        except Refused as refused:
            return writeError(request, refused.status, refused.message)
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            request.setHeader(b"retry-after", b"5")
            return writeError(request, 503, "too many dashboards open")
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        return b""

    def _finished(self, result: object, subscriber: _Subscriber) -> None:
        """
        The response ended (the client left, or L{stop}): forget it.
        """
        self._unsubscribe(subscriber)

    def _unsubscribe(self, subscriber: _Subscriber) -> None:
        subscriber.stopped = True
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)
        if not self.subscribers and self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()

    def stop(self) -> None:
        """
        End every stream and stop the timer.
        """
        for subscriber in list(self.subscribers):
            self._unsubscribe(subscriber)
            subscriber.end()

    # ------------------------------------------------------------ snapshots

    def _tick(self) -> None:
        """
        Send a snapshot (and now and then a keep-alive) to every
        subscriber; drop those stalled too long.  Never raises: an error
        would stop the L{LoopingCall} for good.
        """
        try:
            self._sample()
            data = self.encode(self.snapshot())
        except Exception:
            self._log.failure("dashboard snapshot failed")
            return
        now = self.reactor.seconds()
        if now - self._keptAliveAt >= self.keepAlive:
            self._keptAliveAt = now
            data = b": keep-alive\n\n" + data
        for subscriber in list(self.subscribers):
            try:
                if subscriber.stalledFor() >= self.stallLimit:
                    self._log.info(
                        "dashboard client {client} stopped reading: dropped",
                        client=_describePeer(subscriber.request),
                    )
                    self._unsubscribe(subscriber)
                    subscriber.drop()
                else:
                    subscriber.send(data)
            except Exception:
                self._log.failure("dashboard stream write failed")
                self._unsubscribe(subscriber)

    def _sample(self) -> None:
        """
        Record every backend's counters, and their rates since the last
        sample.
        """
        now = self.reactor.seconds()
        elapsed = None if self._sampledAt is None else now - self._sampledAt
        counts: dict[tuple[str, str], tuple[int, int]] = {}
        rates: dict[tuple[str, str], tuple[float, float]] = {}
        for pool in self.txlb.pools.values():
            for backend in pool.backends:
                key = (pool.name, backend.name)
                current = (sum(backend.responses), backend.totalConnections)
                counts[key] = current
                before = self._counts.get(key)
                if before is None or not elapsed or elapsed <= 0:
                    continue
                requests = current[0] - before[0]
                connections = current[1] - before[1]
                if requests >= 0 and connections >= 0:
                    rates[key] = (requests / elapsed, connections / elapsed)
        self._counts, self._rates, self._sampledAt = counts, rates, now

    def snapshot(self) -> dict[str, Any]:
        """
        Every pool (L{poolView}) and listener (L{listenerView}); each server
        also gets C{requests_per_second} and C{connections_per_second} over
        the last interval (C{None} before two samples) and C{errors}
        (connect and response failures, and 5xx responses).
        """
        pools = []
        for pool in self.txlb.pools.values():
            view = poolView(pool, self.txlb)
            for server, backend in zip(view["servers"], pool.backends, strict=True):
                rate = self._rates.get((pool.name, backend.name))
                server["requests_per_second"] = (
                    None if rate is None else round(rate[0], 3)
                )
                server["connections_per_second"] = (
                    None if rate is None else round(rate[1], 3)
                )
                server["errors"] = backend.failures + backend.responses[5]
            pools.append(view)
        return {
            "pools": pools,
            "listeners": [listenerView(service) for service in self.txlb.listeners],
            "time": self.reactor.seconds(),
            "interval": self.interval,
        }

    @staticmethod
    def encode(snapshot: dict[str, Any]) -> bytes:
        """
        One server-sent event carrying C{snapshot} as JSON on one line.
        """
        try:
            text = json.dumps(
                snapshot, separators=(",", ":"), default=str, allow_nan=False
            )
        except ValueError:
            # Infinity and NaN are not JSON: the page's JSON.parse would fail.
            text = json.dumps(_finite(snapshot), separators=(",", ":"), default=str)
        return b"data: " + text.encode("utf-8") + b"\n\n"


def _finite(value: Any) -> Any:
    """
    C{value} with every infinite or NaN float replaced by C{None}.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _describePeer(request: IRequest) -> str:
    try:
        peer = request.getClientAddress()
        return f"{peer.host}:{peer.port}"
    except Exception:
        return "?"
