"""
The admin service: one listening socket serving the resource tree that
L{txlb.admin.metrics}, L{txlb.admin.api} and L{txlb.admin.dashboard} fill.

It binds in C{privilegedStartService}, like txlb's listeners: a port that
cannot be bound is a L{txlb.service.StartupError} (one line, exit 1), never
a traceback and a process running without its admin.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from txlb.admin.guard import Guard
from txlb.config import AdminConfig


def buildRoot(txlb: Any, guard: Guard, reactor: Any) -> Resource:
    """
    The admin resource tree over the running L{txlb.service.TxlbService}
    C{txlb}.
    """
    from txlb.admin import api, dashboard, metrics

    root = Resource()
    metrics.install(root, txlb, guard)
    api.install(root, txlb, guard, reactor)
    root.events = dashboard.install(root, txlb, guard, reactor)
    return root


class AdminService(Service):
    """
    Serves the admin resource tree on C{config.endpoint}.

    @ivar guard: the L{Guard} every resource checks requests with; a
        reload may change its configuration (token, open reads).
    @ivar port: the listening port once bound.
    """

    _log = Logger()

    def __init__(self, config: AdminConfig, txlb: Any, reactor: Any) -> None:
        self.setName("admin")
        self.config = config
        self.reactor = reactor
        self.guard = Guard(config)
        self.root = buildRoot(txlb, self.guard, reactor)
        self.site = Site(self.root)
        self.site.noisy = False
        self.site.displayTracebacks = False
        self.port: Any = None

    def privilegedStartService(self) -> None:
        """
        Bind now.

        @raise txlb.service.StartupError: the endpoint cannot be bound.
        """
        Service.privilegedStartService(self)
        if self.port is None:
            self._listen()

    def startService(self) -> None:
        """
        Start, binding first if L{privilegedStartService} was not called.
        """
        Service.startService(self)
        if self.port is None:
            self._listen()

    def _listen(self) -> None:
        from txlb.service import StartupError, describeAddress, describeListenFailure

        outcome: list[Any] = []
        serverFromString(self.reactor, self.config.endpoint).listen(self.site).addBoth(
            outcome.append
        )
        if not outcome or isinstance(outcome[0], Failure):
            why = describeListenFailure(outcome[0]) if outcome else "did not bind at once"
            raise StartupError(f"admin: cannot listen on {self.config.endpoint}: {why}")
        self.port = outcome[0]
        self._log.info(
            "admin listening on http://{address}/",
            address=describeAddress(self.port.getHost()),
        )

    def reconfigure(self, config: AdminConfig) -> bool:
        """
        Take a reloaded C{[admin]}: a new token, C{open_reads} or allowed
        host names apply at once.  A new address or port needs a restart,
        and until then nothing of C{config} applies: a token dropped
        because the new address is loopback must not be dropped while the
        old, wider one still listens.

        @return: whether C{config} is now in force.
        """
        if (config.address, config.port) != (self.config.address, self.config.port):
            return False
        self.config = self.guard.config = config
        return True

    def stopService(self) -> Deferred[None] | None:
        """
        Stop listening and end the dashboard's event streams.
        """
        Service.stopService(self)
        events = getattr(self.root, "events", None)
        if events is not None:
            events.stop()
        port, self.port = self.port, None
        if port is None:
            return None
        return maybeDeferred(port.stopListening)
