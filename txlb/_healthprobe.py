"""
The parts of an active health check that talk to the backend: the TCP
probe, the bounded reading of an HTTP check's body, the endpoint an HTTP
check's agent connects through, and the one-line reason a failed check
gets.  L{txlb.health} runs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
)
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
    NoRouteError,
    TCPTimedOutError,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

if TYPE_CHECKING:
    pass


# Reasons are one line of at most this many characters.
_REASON_LENGTH = 200


class _TimedOut(Exception):
    """
    A check took longer than its timeout.
    """


class _CheckerError(Exception):
    """
    The checker's own code raised (already logged with its traceback).
    """


class _Probe(Protocol):
    """
    Closes the connection as soon as it opens: a TCP check asks no more.
    """

    def connectionMade(self) -> None:
        self.transport.loseConnection()


class _BoundedBody(Protocol):
    """
    Reads and drops a response body, stopping after C{limit} bytes.

    @ivar done: fires with C{None} once the body ended, failed, was cut at
        the limit, or was cancelled: whatever happens to the body, the
        check is judged by the status.
    """

    def __init__(self, limit: int) -> None:
        self._remaining = limit
        self.done: Deferred[None] = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._remaining -= len(data)
        if self._remaining <= 0:
            self._stop()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            self.done.callback(None)

    def _stop(self) -> None:
        # Stopping the response's producer closes the connection, which is
        # how Twisted's HTTP client drops the rest of a body.
        if self.transport is not None:
            self.transport.stopProducing()
        if not self.done.called:
            self.done.callback(None)

    def _cancel(self, d: Deferred[None]) -> None:
        self._stop()


@implementer(IAgentEndpointFactory)
class _BackendEndpoint:
    """
    Connects an L{Agent} to one backend, whatever the URL says, through
    the backend's endpoint string (so UNIX and TLS endpoints work too).
    """

    def __init__(self, reactor: Any, description: str) -> None:
        self._reactor = reactor
        self._description = description

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return clientFromString(self._reactor, self._description)


def _oneLine(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    if len(line) > _REASON_LENGTH:
        line = line[: _REASON_LENGTH - 3] + "..."
    return line


_WRAPPERS: tuple[tuple[type[Exception], str], ...] = (
    (ResponseNeverReceived, "no response"),
    (ResponseFailed, "response failed"),
    (RequestTransmissionFailed, "request failed"),
    (RequestGenerationFailed, "request failed"),
)

_KNOWN: tuple[tuple[type[BaseException], str], ...] = (
    (CancelledError, "cancelled"),
    (ConnectingCancelledError, "cancelled"),
    (ConnectionRefusedError, "connection refused"),
    (TCPTimedOutError, "connect timed out"),
    (ConnectTimeoutError, "connect timed out"),
    (NoRouteError, "no route to host"),
    (DNSLookupError, "DNS lookup failed"),
    (ConnectionDone, "connection closed"),
    (ConnectionLost, "connection lost"),
)


def _describe(f: Failure, timeout: float, inner: bool = False) -> str | None:
    """
    A one-line reason for a failed check, or C{None} when C{f} is not one
    of the ways a network check fails (a bug to log).

    @param inner: C{f} is the cause inside an HTTP client error: describe
        it whatever it is.
    """
    e = f.value
    if isinstance(e, _TimedOut):
        return f"timed out after {timeout:g} s"
    if isinstance(e, _CheckerError):
        return _oneLine(f"internal error: {e}")
    for kind, prefix in _WRAPPERS:
        if isinstance(e, kind):
            reasons = getattr(e, "reasons", None) or []
            if reasons and isinstance(reasons[0], Failure):
                return f"{prefix}: {_describe(reasons[0], timeout, inner=True)}"
            return prefix
    for kind, text in _KNOWN:
        if isinstance(e, kind):
            return text
    if isinstance(e, (ConnectError, OSError)) or inner:
        return _oneLine(f"{type(e).__name__}: {e}")
    return None
