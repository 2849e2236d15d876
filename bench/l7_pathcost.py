"""
The Python cost of one request through txlb's L7 proxy, system calls left out.

C{l7.sh} measures the proxy whole, and on a shared machine its numbers move
by 15% between runs.  This measures only what txlb's own code adds per
request, with stand-in sockets, so that a change to the L7 data path
(L{txlb.protocols.http}, L{txlb.protocols.upstream}, the header policy,
L{txlb.pool}) can be compared run against run to a few nanoseconds.

It builds the L7 listener's factory as C{twistd txlb --layer L7 --backends
...} does (strict parsing, request counters, the default forwarding policy,
retries and pool), on one L{txlb.reactor.HotPathReactor} in this process,
and proxies one real keep-alive request on 127.0.0.1 to a small backend, so
that one pooled backend connection is left idle.  Then it replaces the
client's and that backend connection's sockets with stand-ins whose C{recv}
returns a request (as C{wrk} sends it) or a response (as the benchmark's
nginx backends send it) and whose C{send} takes everything at once, and
replaces epoll with a stand-in that reports both sockets readable.  One
request is then one read event on each side: the client's request is parsed,
routed, given a backend and sent on the pooled connection; the response is
parsed, checked and written back, the connection returned to the pool.

With C{--varied}, no two requests in a row are alike: each has its own
query string, C{User-Agent} and C{Cookie}, and each response its own
C{ETag} and C{Set-Cookie}, over a cycle longer than any table txlb keeps of
heads it has seen.  So every request is parsed by llhttp, checked, routed
and its forwarded head made, and every response head parsed, checked and
its client head made: the full path, as traffic whose heads seldom repeat
takes it.  C{--varied requests} or C{--varied responses} varies one side
only.

Usage::

    .venv/bin/python bench/l7_pathcost.py [--requests N] [--access-log PATH]
                                          [--varied [requests|responses|both]]
                                          [--connections N] [--profile]

It prints nanoseconds per request, the best of five runs, for the whole path
from the reactor's C{doPoll} and for the two protocols' C{dataReceived}
alone; C{--profile} prints a C{cProfile} summary of one run instead.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from itertools import cycle, islice
from select import EPOLLIN

from _standins import StandInPoller, StandInSocket, best
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from txlb.config import Overrides, loadConfig
from txlb.protocols.upstream import ConnectionState
from txlb.reactor import HotPathReactor
from txlb.service import TxlbService

# What wrk sends to the benchmark's txlb-l7 target.
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:19111\r\n\r\n"
# What the benchmark's nginx backends answer for /.
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Sun, 22 Nov 2026 20:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 3\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
    b"ok\n"
)

# Events reported by one stand-in poll: this many requests' worth.
_BATCH = 10

# How many different requests (and responses) --varied cycles through: more
# than txlb remembers of either (256 request heads per listener, 512
# response heads), so that every one is read as new.
_VARIED = 4099


def _variedRequests(count: int) -> list[bytes]:
    """
    @return: C{count} different requests, as a browser behind C{wrk}'s
        C{bench/varied.lua} might send them: a query string, a user agent and
        a session cookie of their own, on a path the backends answer.
    """
    return [
        b"GET /?item=%d&page=%d HTTP/1.1\r\n"
        b"Host: 127.0.0.1:19111\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/%d\r\n"
        b"Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n"
        b"Accept-Language: en-GB,en;q=0.5\r\n"
        b"Cookie: session=%016x; theme=dark; seen=%d\r\n"
        b"\r\n" % (n, n % 7, n % 97, n * 2654435761, n)
        for n in range(count)
    ]


def _variedResponses(count: int) -> list[bytes]:
    """
    @return: C{count} different responses: L{RESPONSE} with an C{ETag} and a
        C{Set-Cookie} of their own.
    """
    return [
        b"HTTP/1.1 200 OK\r\n"
        b"Server: nginx/1.22.1\r\n"
        b"Date: Sun, 22 Nov 2026 20:00:00 GMT\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: 3\r\n"
        b"Connection: keep-alive\r\n"
        b'ETag: "%x-3"\r\n'
        b"Set-Cookie: session=%016x; Path=/; HttpOnly\r\n"
        b"\r\n"
        b"ok\n" % (n, n * 40503)
        for n in range(count)
    ]


def _payloads(varied: str | None, count: int) -> tuple[list[bytes], list[bytes]]:
    """
    @param varied: C{None}, C{"requests"}, C{"responses"} or C{"both"}.
    @param count: how many different ones, when varied.
    @return: the requests and the responses to cycle through.
    """
    requests = [REQUEST]
    responses = [RESPONSE]
    if varied in ("requests", "both"):
        requests = _variedRequests(count)
    if varied in ("responses", "both"):
        responses = _variedResponses(count)
    return requests, responses


class _Backend(Protocol):
    """
    The backend: answers every request head with L{RESPONSE}, once
    C{factory.hold} requests are waiting (so that that many backend
    connections are opened at first).
    """

    buffered = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffered += data
        waiting = self.factory.waiting
        while b"\r\n\r\n" in self.buffered:
            _, _, self.buffered = self.buffered.partition(b"\r\n\r\n")
            waiting.append(self.transport)
        if len(waiting) >= self.factory.hold:
            for transport in waiting:
                transport.write(RESPONSE)
            waiting.clear()


class _Client(Protocol):
    """
    The client: sends one request and keeps what comes back.
    """

    received = b""

    def connectionMade(self) -> None:
        self.transport.write(REQUEST)

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class _AlternatingPoller:
    """
    An epoll that reports every client readable, then every backend
    connection that waits for a response, and so on.
    """

    def __init__(self, clients: list[int], connections: list) -> None:
        self._clients = [(fd, EPOLLIN) for fd in clients]
        self._connections = connections
        self._turn = 0

    def poll(self, timeout: float, maxEvents: int) -> list[tuple[int, int]]:
        self._turn ^= 1
        if self._turn:
            return self._clients
        return [
            (c.transport.fileno(), EPOLLIN)
            for c in self._connections
            if c.state is ConnectionState.waiting
        ]


def _proxyRequests(reactor: HotPathReactor, accessLog: str | None, count: int):
    """
    Proxy C{count} real requests at once on 127.0.0.1, from as many
    clients, leaving as many backend connections idle in the pool.

    @return: the proxy's client protocols and the pooled backend
        connections.
    """
    backendFactory = Factory.forProtocol(_Backend)
    backendFactory.hold = count
    backendFactory.waiting = []
    backendPort = reactor.listenTCP(0, backendFactory, interface="127.0.0.1")
    port = backendPort.getHost().port
    config = loadConfig(
        None,
        Overrides(port=19111, backends=(("127.0.0.1", port),), layer="L7"),
    )
    if accessLog is not None:
        import attrs

        listener = config.listeners[0]
        config = attrs.evolve(
            config,
            listeners=(
                attrs.evolve(
                    listener, http=attrs.evolve(listener.http, accessLog=accessLog)
                ),
            ),
        )
    service = TxlbService(config, reactor)
    factory = service.buildHTTPFactory(config.listeners[0])
    proxyPort = reactor.listenTCP(0, factory, interface="127.0.0.1")
    clients = [_Client() for _ in range(count)]
    for client in clients:
        connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", proxyPort.getHost().port), client
        )
    [l7pool] = factory.pools.values()
    upstreams = l7pool.upstreams
    deadline = time.monotonic() + 10
    while not (
        all(client.received.endswith(b"ok\n") for client in clients)
        and upstreams.idleCount() == count
    ):
        if time.monotonic() > deadline:
            raise SystemExit("the proxy did not answer within 10 s")
        reactor.iterate(0.01)
    [idle] = upstreams._idle.values()
    return list(factory.openConnections), list(idle)


def _measureMany(reactor: HotPathReactor, protos: list, connections: list,
                 requests: int, varied: str | None) -> None:
    """
    Measure and print, with one request in flight on each client connection.
    """
    count = len(protos)
    # Connection i reads every count-th payload from the i-th on: the
    # connections together go through them all in order, so that none is
    # seen again before the whole cycle.
    requestPayloads, responsePayloads = _payloads(
        varied, -(-_VARIED // count) * count
    )
    def share(payloads: list[bytes], i: int) -> list[bytes]:
        return payloads[i::count] if len(payloads) > 1 else payloads

    for i, proto in enumerate(protos):
        transport = proto.transport
        transport.socket = StandInSocket(
            transport.socket, share(requestPayloads, i), transport.bufferSize
        )
    for i, connection in enumerate(connections):
        transport = connection.transport
        transport.socket = StandInSocket(
            transport.socket, share(responsePayloads, i), transport.bufferSize
        )
    poller = reactor._poller = _AlternatingPoller(
        [proto.transport.fileno() for proto in protos], connections
    )
    rounds = max(1, requests // count)

    def polls() -> None:
        doPoll = reactor.doPoll
        for _ in range(rounds):
            doPoll(0)
            doPoll(0)

    polls()
    print(f"{best(polls, rounds * count):6.0f} ns/request  doPoll, both sides, "
          f"{count} connections")
    del poller


def main() -> None:
    """
    Measure and print.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--access-log", default=None, help="log requests to this file")
    parser.add_argument("--profile", action="store_true", help="cProfile one run")
    parser.add_argument(
        "--show", action="store_true", help="print what one request sends each way"
    )
    parser.add_argument(
        "--varied", nargs="?", const="both", default=None,
        choices=("requests", "responses", "both"),
        help="a different request head (query, user agent, cookie) and response "
        "head (ETag, Set-Cookie) every time, so that none is recognized: the "
        "full parse path (default: both sides)",
    )
    parser.add_argument(
        "--connections", type=int, default=1,
        help="client (and backend) connections, each with its own request in "
        "flight: more objects for the caches to hold, as under load",
    )
    args = parser.parse_args()
    requests = args.requests - args.requests % _BATCH
    reactor = HotPathReactor()
    protos, connections = _proxyRequests(reactor, args.access_log, args.connections)
    if args.connections > 1:
        _measureMany(reactor, protos, connections, args.requests, args.varied)
        return
    requestPayloads, responsePayloads = _payloads(args.varied, _VARIED)
    [proto], [connection] = protos, connections
    client, backend = proto.transport, connection.transport
    realClient, realBackend = client.socket, backend.socket

    if args.show:
        toClient: list[bytes] = []
        toBackend: list[bytes] = []
        client.socket = StandInSocket(
            realClient, requestPayloads, client.bufferSize, toClient
        )
        backend.socket = StandInSocket(
            realBackend, responsePayloads, backend.bufferSize, toBackend
        )
        client.doRead()
        backend.doRead()
        print("to the backend:", b"".join(toBackend).decode("latin-1"), sep="\n")
        print("to the client:", b"".join(toClient).decode("latin-1"), sep="\n")

    client.socket = StandInSocket(realClient, requestPayloads, client.bufferSize)
    backend.socket = StandInSocket(realBackend, responsePayloads, backend.bufferSize)
    reactor._poller = StandInPoller(
        [(client.fileno(), EPOLLIN), (backend.fileno(), EPOLLIN)] * _BATCH
    )

    def polls() -> None:
        doPoll = reactor.doPoll
        for _ in range(requests // _BATCH):
            doPoll(0)

    def protocols() -> None:
        request, response = proto.dataReceived, connection.dataReceived
        for _ in range(requests):
            request(REQUEST)
            response(RESPONSE)

    if args.varied:
        pairs = list(zip(
            islice(cycle(requestPayloads), _VARIED),
            islice(cycle(responsePayloads), _VARIED),
            strict=True,
        ))

        def protocols() -> None:
            request, response = proto.dataReceived, connection.dataReceived
            for requestBytes, responseBytes in islice(cycle(pairs), requests):
                request(requestBytes)
                response(responseBytes)

    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(polls)
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(40)
        return
    polls()
    print(f"{best(polls, requests):6.0f} ns/request  doPoll, both sides")
    print(f"{best(protocols, requests):6.0f} ns/request  dataReceived, both sides")


if __name__ == "__main__":
    main()
