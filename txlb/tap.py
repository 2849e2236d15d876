"""
C{twistd txlb}: command-line options and the service they make.

The reactor: unless C{-r}/C{--reactor} chose one, parsing these options
installs txlb's own hot-path reactor (L{txlb.reactor}), which works because
nothing has imported the global reactor yet at that point.  A C{.tac} file
runs after twistd has chosen a reactor: use C{twistd -r txlb -ny txlb.tac}.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable, NoReturn

import attrs
from twisted.application.service import IServiceCollection, MultiService, Service
from twisted.internet.defer import succeed
from twisted.logger import Logger
from twisted.python import usage

from txlb.config import (
    LAYERS,
    Config,
    ConfigError,
    Overrides,
    loadConfig,
    parseBackends,
    parseConfig,
)
from txlb.service import StartupError, TxlbService

DEMO_ADMIN_PORT = 9090
DEMO_PORT = 8080

_log = Logger()


def installDefaultReactor() -> bool:
    """
    Install txlb's reactor unless a reactor is installed already.

    @return: C{True} if this call installed it.
    """
    if "twisted.internet.reactor" in sys.modules:
        return False
    from txlb.reactor import install

    install()
    return True


def _globalReactor() -> Any:
    """
    The global reactor, imported only when a service is made.
    """
    from twisted.internet import reactor

    return reactor


class Options(usage.Options):
    """
    Options of C{twistd txlb}.

    Every option works with or without C{--config}, and overrides the file.
    """

    synopsis = "[options]"
    longdesc = (
        "Balance TCP connections (L4) or HTTP/1.1 requests (L7) across backend servers.  Configure it "
        "with a TOML file (--config, see docs/configuration.md), or entirely "
        "on the command line (--port and --backends), or try it with --demo, "
        "which starts three demo HTTP backends on loopback and balances "
        "across them.  The options below override the file's values.  "
        "Unless -r chose another reactor, txlb runs on its own hot-path "
        "reactor (twistd -r txlb)."
    )

    optFlags = [
        [
            "demo",
            None,
            "Start three demo HTTP backends on 127.0.0.1 and balance HTTP "
            f"requests across them (L7 unless --layer; listens on "
            f"127.0.0.1:{DEMO_PORT} unless --port).",
        ],
    ]

    optParameters = [
        ["config", "c", None, "Path to the TOML configuration file (lb.toml)."],
        [
            "port",
            "p",
            None,
            "Port to listen on; overrides the (only) listener's port.",
        ],
        [
            "backends",
            "b",
            None,
            "Comma-separated HOST:PORT list ([::1]:80 for IPv6); replaces the "
            "servers of the (only) listener's pool.",
        ],
        [
            "algorithm",
            "a",
            None,
            "Balancing algorithm, e.g. round_robin, weighted_round_robin, "
            "least_connections, random, power_of_two, ip_hashing, "
            "consistent_hash, maglev (case-insensitive).",
        ],
        ["layer", "l", None, "L4 (TCP relay) or L7 (HTTP)."],
        [
            "health-check-interval",
            None,
            None,
            "Seconds between active health checks of each server.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.configuration: Config | None = None
        self.overrides = Overrides()

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse; a usage or configuration error exits non-zero with one line.

        twistd prints the usage text and exits 0 on L{usage.UsageError};
        an operator's mistake must fail the start instead.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"txlb: error: {e} (see: twistd txlb --help)")
        except ConfigError as e:
            raise SystemExit(f"txlb: error: {e}")

    def postOptions(self) -> None:
        """
        Check the flags, load and validate the configuration.

        @raise usage.UsageError: a flag is malformed.
        @raise ConfigError: the configuration is invalid.
        """
        installDefaultReactor()
        self.overrides = self._overrides()
        if self["config"] is not None:
            self["config"] = os.path.abspath(self["config"])
        if self["demo"]:
            if self["config"] is not None or self["backends"] is not None:
                raise usage.UsageError("--demo runs its own backends; drop --config/--backends")
            # Validate the flags now with stand-in backends; makeService binds
            # the real demo backends and builds the configuration again.
            self.configuration = self.demoConfig([("127.0.0.1", 1)])
        else:
            self.configuration = loadConfig(self["config"], self.overrides)

    def _overrides(self) -> Overrides:
        port = self["port"]
        if port is not None:
            try:
                port = int(port)
            except ValueError:
                raise usage.UsageError(f"--port: must be a number, got {port!r}")
            if not 0 <= port <= 65535:
                raise usage.UsageError(f"--port: must be 0-65535, got {port}")
        backends = self["backends"]
        if backends is not None:
            try:
                backends = parseBackends(backends)
            except ValueError as e:
                raise usage.UsageError(str(e))
        layer = self["layer"]
        if layer is not None:
            matches = [candidate for candidate in LAYERS if candidate == layer.upper()]
            if not matches:
                raise usage.UsageError(f"--layer: must be L4 or L7, got {layer!r}")
            layer = matches[0]
        interval = self["health-check-interval"]
        if interval is not None:
            try:
                interval = float(interval)
            except ValueError:
                interval = -1.0
            if not interval > 0:
                raise usage.UsageError(
                    f"--health-check-interval: must be a positive number of seconds, "
                    f"got {self['health-check-interval']!r}"
                )
        return Overrides(
            port=port,
            backends=backends,
            algorithm=self["algorithm"],
            layer=layer,
            healthCheckInterval=interval,
        )

    def demoConfig(self, backends: list[tuple[str, int]]) -> Config:
        """
        The configuration of a C{--demo} run over C{backends}: a listener on
        127.0.0.1 (port 8080 unless C{--port}) and the flags applied.
        """
        document = {
            "load_balancer": {
                "address": "127.0.0.1",
                "port": DEMO_PORT,
                "layer": "L7",
                "backend_header": True,
            },
            # The admin service: dashboard, metrics, API.  With --port 0
            # (tests, several demos at once) it takes a free port too.
            "admin": {"port": 0 if self.overrides.port == 0 else DEMO_ADMIN_PORT},
            # The demo backends answer /health: show health checking too.
            "health_check": {"type": "http", "path": "/health", "interval": 2.0,
                             "timeout": 1.0},
        }
        return parseConfig(
            document, "<demo>", attrs.evolve(self.overrides, backends=tuple(backends))
        )


def exitWithError(message: str) -> NoReturn:
    """
    Print C{txlb: error: MESSAGE} on the process's real standard error and
    exit with status 1.

    Once twistd has started logging, C{sys.stderr} is redirected into the
    log; the operator must see this line where the command was typed.
    """
    stream = sys.__stderr__ or sys.stderr
    try:
        stream.write(f"txlb: error: {message}\n")
        stream.flush()
    except (OSError, ValueError):
        pass
    raise SystemExit(1)


class CommandLineService(MultiService):
    """
    The service twistd runs: txlb's tree, turning L{StartupError} (such as a
    port already in use) into a one-line message and a non-zero exit instead
    of a traceback or a process that runs with nothing listening.
    """

    def privilegedStartService(self) -> None:
        """
        Start, exiting with a message on a startup error.
        """
        try:
            MultiService.privilegedStartService(self)
        except StartupError as e:
            exitWithError(str(e))

    def startService(self) -> None:
        """
        Start, exiting with a message on a startup error.
        """
        try:
            MultiService.startService(self)
        except StartupError as e:
            exitWithError(str(e))

    def stopService(self) -> Any:
        """
        Stop the children one after another, last started first (txlb
        drains before the demo backends behind it stop), where
        L{MultiService} would stop them all at once.
        """
        Service.stopService(self)
        children = list(self)
        d = succeed(None)
        for child in reversed(children):
            d.addBoth(lambda _, child=child: child.stopService())
        d.addBoth(lambda _: None)
        return d


def buildService(
    config: Config,
    reactor: Any,
    demo: Any = None,
    reloader: Callable[[], Config] | None = None,
    signals: Any = signal,
) -> MultiService:
    """
    The whole service tree for C{config}, wrapped in L{CommandLineService}.

    @param demo: a L{txlb.demo.DemoBackends} to start first, or C{None}.
    @param reloader: re-reads the configuration for SIGHUP, or C{None}.
    @param signals: the C{signal} module txlb installs its SIGTERM, SIGINT
        and SIGHUP handlers with, or C{None} for none.
    """
    top = CommandLineService()
    if demo is not None:
        demo.setServiceParent(top)
    try:
        TxlbService(
            config, reactor, reloader=reloader, signals=signals
        ).setServiceParent(top)
    except StartupError as e:
        raise SystemExit(f"txlb: error: {e}")
    return top


def makeService(options: Options, reactor: Any = None) -> IServiceCollection:
    """
    Make txlb's service tree from parsed L{Options}.
    """
    if reactor is None:
        reactor = _globalReactor()
    demo = None
    config = options.configuration
    if options["demo"]:
        from txlb.demo import DemoBackends

        demo = DemoBackends(reactor)
        config = options.demoConfig(demo.addresses)
        _log.info(
            "txlb demo: three backends started; try: curl http://127.0.0.1:{port}/ "
            "(several times); dashboard and API on the admin port (see 'admin "
            "listening' below)",
            port=config.listeners[0].endpoint.split("port=")[1].split(":")[0],
        )
    assert config is not None
    reloader = None
    if not options["demo"]:
        path, overrides = options["config"], options.overrides

        def reloader() -> Config:
            return loadConfig(path, overrides)

    return buildService(config, reactor, demo, reloader)


def makeServiceFromFile(path: str, reactor: Any = None) -> IServiceCollection:
    """
    The service tree for the configuration at C{path}, for C{.tac} files.

    A configuration error exits with a one-line message.
    """
    if reactor is None:
        reactor = _globalReactor()
    path = os.path.abspath(path)
    try:
        config = loadConfig(path)
    except ConfigError as e:
        raise SystemExit(f"txlb: error: {e}")
    return buildService(config, reactor, reloader=lambda: loadConfig(path))
