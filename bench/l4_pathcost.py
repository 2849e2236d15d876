"""
The Python cost of one request through txlb's L4 relay, system calls left out.

C{l4.sh} measures the relay whole, and on a shared machine its numbers move
by 15% between runs; most of its CPU time is the kernel's.  This measures
only what txlb's own code adds per request, with stand-in sockets, so that a
change to the data path (L{txlb.reactor}, L{txlb.protocols.tcp}) can be
compared run against run to a few nanoseconds.

It relays one real connection on 127.0.0.1 (client, relay and an echo
backend, all on one L{txlb.reactor.HotPathReactor} in this process), then
replaces both of the relay's sockets with stand-ins whose C{recv} returns a
small HTTP request or response and whose C{send} takes everything at once,
and replaces epoll with a stand-in that reports both sockets readable.  One
request is then one read event on each leg: the reactor's dispatch, C{doRead},
the protocol's C{dataReceived} and the other transport's C{write}.

Usage::

    .venv/bin/python bench/l4_pathcost.py [--requests N] [--idle-timeout S]

It prints nanoseconds per request, the best of five runs, for: the whole
path from the reactor's C{doPoll}, and the two transports' C{doRead} alone.
"""

from __future__ import annotations

import argparse
import time
from select import EPOLLIN

from _standins import StandInPoller, StandInSocket, best
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from txlb.interfaces import IStrategy
from txlb.pool import Backend, Pool
from txlb.protocols.tcp import TCPRelayFactory
from txlb.reactor import HotPathReactor

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100

# Events reported by one stand-in poll: this many requests' worth.
_BATCH = 10


@implementer(IStrategy)
class _First:
    """
    Always the first backend.
    """

    def choose(self, candidates, context):
        """
        @return: the first candidate.
        """
        return candidates[0]


class _Echo(Protocol):
    """
    The backend: sends back what it receives.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class _Ping(Protocol):
    """
    The client: sends a ping and keeps what comes back.
    """

    received = b""

    def connectionMade(self) -> None:
        self.transport.write(b"ping")

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def _relayOneConnection(reactor: HotPathReactor, idleTimeout: float | None):
    """
    Relay one real connection on 127.0.0.1 until its ping has come back.

    @return: the relay's client leg protocol.
    """
    backendPort = reactor.listenTCP(
        0, Factory.forProtocol(_Echo), interface="127.0.0.1"
    )
    port = backendPort.getHost().port
    backend = Backend(
        name="echo",
        address="127.0.0.1",
        port=port,
        endpoint=f"tcp:host=127.0.0.1:port={port}",
    )
    pool = Pool(
        name="bench",
        algorithm="first",
        strategy=_First(),
        clock=reactor,
        backends=[backend],
    )
    factory = TCPRelayFactory(pool, reactor, idleTimeout=idleTimeout)
    relayPort = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = _Ping()
    connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", relayPort.getHost().port), client
    )
    deadline = time.monotonic() + 10
    while client.received != b"ping":
        if time.monotonic() > deadline:
            raise SystemExit("the relay did not echo within 10 s")
        reactor.iterate(0.01)
    [relay] = factory._relays
    return relay


def main() -> None:
    """
    Measure and print.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300_000)
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=600.0,
        help="the relay's idle timeout (txlb's default: 600; 0 for none)",
    )
    args = parser.parse_args()
    requests = args.requests - args.requests % _BATCH
    reactor = HotPathReactor()
    relay = _relayOneConnection(reactor, args.idle_timeout or None)
    client, backend = relay.transport, relay._backendTransport
    client.socket = StandInSocket(client.socket, REQUEST, client.bufferSize)
    backend.socket = StandInSocket(backend.socket, RESPONSE, backend.bufferSize)
    reactor._poller = StandInPoller(
        [(client.fileno(), EPOLLIN), (backend.fileno(), EPOLLIN)] * _BATCH
    )

    def polls() -> None:
        doPoll = reactor.doPoll
        for _ in range(requests // _BATCH):
            doPoll(0)

    def reads() -> None:
        clientRead, backendRead = client.doRead, backend.doRead
        for _ in range(requests):
            clientRead()
            backendRead()

    print(f"{best(polls, requests):6.0f} ns/request  doPoll, both legs")
    print(f"{best(reads, requests):6.0f} ns/request  doRead, both legs")


if __name__ == "__main__":
    main()
