"""
The lifecycle half of L{txlb.service.TxlbService}: signals, the sequenced
graceful stop with its drain deadline, and the SIGHUP reload entry point.

Stopping is sequenced, not all at once as L{MultiService} would: listeners
stop accepting first; then connections and requests in flight get up to the
drain deadline (C{[lifecycle] drain_timeout}) to finish while kept-alive L7
clients are told C{Connection: close}; what is left is cut; then health
checking and the admin service stop.  A second SIGTERM or SIGINT cuts the
drain short.  SIGHUP reloads the configuration (see L{txlb.reload}).
"""

from __future__ import annotations

import signal as _signal
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.logger import Logger

from txlb.config import ConfigError


class StartupError(Exception):
    """
    txlb cannot start (or a reload cannot be applied); the message is one
    line meant for the operator.
    """


class Lifecycle:
    """
    Mixed into L{txlb.service.TxlbService}: it expects C{reactor},
    C{config}, C{listeners}, C{health}, C{admin}, C{retired},
    C{upstreams}, C{reloader}, C{running} and the C{_signals},
    C{stopping}, C{_stopRequested} and C{_drainTimer} attributes.
    """

    _log = Logger()

    # ------------------------------------------------------------ signals

    def installReloadHandler(self) -> None:
        """
        Handle SIGHUP (reload) from now on.

        Installed before anything listens: the reactor leaves SIGHUP alone,
        and its default action kills the process, so a SIGHUP sent as soon
        as the first listener is logged must already find this handler.
        The reload itself waits for the reactor (C{callFromThread}).
        """
        signals = self._signals
        number = getattr(signals, "SIGHUP", None)
        if number is not None:
            signals.signal(number, self._reloadSignal)

    def installSignalHandlers(self) -> None:
        """
        Handle SIGTERM and SIGINT: a graceful stop; a second one cuts the
        drain short.

        Called once the reactor runs: the reactor installs its own SIGINT
        and SIGTERM handlers as it starts, replacing any set earlier.
        """
        signals = self._signals
        for name in ("SIGTERM", "SIGINT"):
            number = getattr(signals, name, None)
            if number is None:
                continue
            getsignal = getattr(signals, "getsignal", None)
            if getsignal is not None and getsignal(number) == getattr(
                signals, "SIG_IGN", object()
            ):
                # Ignored by whoever started txlb (nohup, a shell's &):
                # keep it so, as the reactor does.
                continue
            signals.signal(number, self._stopSignal)

    def _stopSignal(self, number: int, frame: Any) -> None:
        # Signal handlers run between two bytecodes of whatever the reactor
        # was doing: hand the work to the reactor.
        self.reactor.callFromThread(self.stopRequested, number)

    def _reloadSignal(self, number: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    def stopRequested(self, number: int = _signal.SIGTERM) -> None:
        """
        SIGTERM or SIGINT arrived: the first stops the reactor (and so this
        service, gracefully); the next ones cut the drain short.
        """
        try:
            name = _signal.Signals(number).name
        except ValueError:
            name = str(number)
        if not self._stopRequested and not self.stopping and self.running:
            self._stopRequested = True
            self._log.info("{signal}: stopping gracefully", signal=name)
            self.reactor.stop()
        else:
            self._log.warn(
                "{signal} again: cutting {count} connections now",
                signal=name,
                count=self.openConnections(),
            )
            self.abortAll()

    # ------------------------------------------------------------ stopping

    def factories(self) -> list[Any]:
        """
        Every protocol factory that may still have connections: the
        listeners' and the retired ones.
        """
        return [listener.factory for listener in self.listeners] + list(self.retired)

    def openConnections(self) -> int:
        """
        Client connections open now, over every listener.
        """
        return sum(getattr(f, "activeCount", 0) for f in self.factories())

    def abortAll(self) -> None:
        """
        Cut every client connection now.
        """
        for factory in self.factories():
            abort = getattr(factory, "abortAll", None)
            if abort is not None:
                abort()

    def stopService(self) -> Deferred[None]:
        """
        Stop in sequence: listeners first (accept nothing more), then drain
        what is in flight up to the drain deadline, then cut what is left,
        then stop health checking and close idle backend connections.
        """
        self.stopping = True
        Service.stopService(self)
        d = maybeDeferred(self.listeners.stopService)
        d.addBoth(lambda _: self._drain())
        d.addBoth(lambda _: self.health.stopService())
        if self.admin is not None:
            admin = self.admin
            d.addBoth(lambda _: admin.stopService())
        d.addBoth(lambda _: self._closeUpstreams())
        d.addBoth(lambda _: None)
        return d

    def _drain(self) -> Deferred[Any]:
        factories = self.factories()
        for factory in factories:
            startDraining = getattr(factory, "startDraining", None)
            if startDraining is not None:
                startDraining()
        open_ = self.openConnections()
        deadline = self.config.lifecycle.drainTimeout
        if open_ == 0:
            return succeed(None)
        self._log.info(
            "stopping: accepting no more; draining {count} connections "
            "(deadline {deadline:g} s)",
            count=open_,
            deadline=deadline,
        )
        drained = DeferredList([f.drained() for f in factories], consumeErrors=True)

        def cut() -> None:
            self._drainTimer = None
            left = self.openConnections()
            if left:
                self._log.warn(
                    "drain deadline passed: cutting {count} connections", count=left
                )
            self.abortAll()

        self._drainTimer = self.reactor.callLater(deadline, cut)

        def done(result: object) -> object:
            timer, self._drainTimer = self._drainTimer, None
            if timer is not None and timer.active():
                timer.cancel()
                self._log.info("drained: every connection finished")
            return result

        return drained.addBoth(done)

    def _closeUpstreams(self) -> Deferred[Any]:
        closing = [maybeDeferred(u.closeAll) for u in self.upstreams.values()]
        return DeferredList(closing, consumeErrors=True)

    # ------------------------------------------------------------ reload

    def reload(self) -> bool:
        """
        Re-read the configuration and apply the difference (see
        L{txlb.reload}); an invalid configuration changes nothing and is
        logged with the same message as at startup.

        @return: whether a new configuration was applied.
        """
        from txlb.reload import applyConfig

        if self.stopping:
            self._log.warn("SIGHUP while stopping: not reloading")
            return False
        if self.reloader is None:
            self._log.warn("SIGHUP: no configuration file to reload")
            return False
        try:
            config = self.reloader()
        except ConfigError as e:
            self._log.error("reload failed, configuration unchanged: {error}", error=str(e))
            return False
        except Exception:
            self._log.failure("reload failed, configuration unchanged")
            return False
        try:
            summary = applyConfig(self, config)
        except StartupError as e:
            self._log.error("reload failed, configuration unchanged: {error}", error=str(e))
            return False
        except Exception:
            # A bug: say so loudly, but keep running what runs.
            self._log.failure("reload failed while applying {source}", source=config.source)
            return False
        self._log.info("reloaded {source}: {summary}", source=config.source, summary=summary)
        return True
