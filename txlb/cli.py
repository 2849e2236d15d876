"""
The C{txlb} console command: offline tools that start nothing.

C{txlb check lb.toml} validates a configuration and prints what it would run,
like C{haproxy -c} or C{nginx -t}; it opens no socket and exits 0 (valid) or
1 (invalid, with one line naming the file, the key and the bad value).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence, TextIO

from txlb import __version__
from txlb.config import (
    Config,
    ConfigError,
    LifecycleConfig,
    Overrides,
    loadConfig,
    parseBackends,
)


def describe(config: Config) -> list[str]:
    """
    Human-readable lines saying what C{config} would run.
    """
    lines = []
    for listener in config.listeners:
        lines.append(
            f"listener {listener.name}: {listener.layer} on {listener.endpoint} "
            f"-> pool {listener.pool}"
            + (
                f" (max_connections {listener.maxConnections})"
                if listener.maxConnections
                else ""
            )
        )
        if listener.rateLimit is not None:
            rl = listener.rateLimit
            lines.append(
                f"  rate limit: {rl.requestsPerSecond:g}/s per client, burst {rl.burst}"
            )
        if listener.http.stats:
            lines.append("  answers /lb-health and /lb-stats itself")
        for route in listener.routes:
            conditions = []
            if route.host:
                conditions.append(f"host {route.host}")
            if route.pathPrefix:
                conditions.append(f"path {route.pathPrefix}*")
            for name, value in route.headers:
                conditions.append(f"header {name}: {value}")
            lines.append(f"  route {' and '.join(conditions) or 'any'} -> pool {route.pool}")
    for pool in config.pools:
        options = ", ".join(f"{k}={v!r}" for k, v in pool.algorithmOptions)
        n = len(pool.servers)
        lines.append(
            f"pool {pool.name}: {pool.algorithm}"
            + (f" ({options})" if options else "")
            + f", {n} server{'s' if n != 1 else ''}"
            + f", connect timeout {pool.timeouts.connect:g}s"
        )
        if pool.healthCheck is not None:
            hc = pool.healthCheck
            lines.append(
                f"  health check: {hc.type} every {hc.interval:g}s, timeout "
                f"{hc.timeout:g}s, rise {hc.rise}, fall {hc.fall}"
                + (f", path {hc.path}" if hc.type == "http" else "")
            )
        protection = []
        if pool.slowStart:
            protection.append(f"slow start {pool.slowStart:g}s")
        if pool.maxQueue:
            timeout = (
                f"{pool.queueTimeout:g}s" if pool.queueTimeout is not None else "no timeout"
            )
            protection.append(f"queue {pool.maxQueue} ({timeout})")
        if pool.panic:
            protection.append("panic when all down")
        if pool.outlier is not None:
            o = pool.outlier
            protection.append(
                f"outlier ejection after {o.consecutiveFailures} failures "
                f"({o.baseEjectionTime:g}-{o.maxEjectionTime:g}s, at most "
                f"{o.maxEjectionPercent}%)"
            )
        if pool.breaker is not None:
            b = pool.breaker
            protection.append(
                f"circuit breaker at {b.failureRatio:g} of {b.window} "
                f"(open {b.openTime:g}s)"
            )
        if protection:
            lines.append("  protection: " + ", ".join(protection))
        for s in pool.servers:
            limit = f", max_connections {s.maxConnections}" if s.maxConnections else ""
            lines.append(f"  server {s.name}: {s.endpoint}, weight {s.weight}{limit}")
    if config.admin is not None:
        admin = config.admin
        lines.append(
            f"admin: {admin.endpoint}, "
            + ("token required for changes" if admin.token else "no token (loopback only)")
            + ("" if admin.openReads or not admin.token else ", reads need the token")
        )
    if config.lifecycle != LifecycleConfig():
        lines.append(f"drain on stop: up to {config.lifecycle.drainTimeout:g}s")
    return lines


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        overrides = Overrides(
            port=args.port,
            backends=parseBackends(args.backends) if args.backends else None,
            algorithm=args.algorithm,
            layer=args.layer.upper() if args.layer else None,
        )
        config = loadConfig(args.config, overrides)
    except (ConfigError, ValueError) as e:
        print(f"txlb: error: {e}", file=err)
        return 1
    print(f"{config.source}: configuration is valid", file=out)
    for line in describe(config):
        print(line, file=out)
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    """
    Run the C{txlb} command.

    @return: the exit status.
    """
    parser = argparse.ArgumentParser(
        prog="txlb",
        description="txlb offline tools. Run the balancer itself with: "
        "twistd -n txlb --config lb.toml",
    )
    parser.add_argument("--version", action="version", version=f"txlb {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate a configuration file and print what it would run",
        description="Validate a configuration and print what it would run; "
        "opens no socket. Exit status 0 when valid, 1 when not.",
    )
    check.add_argument("config", help="path to lb.toml")
    check.add_argument("--port", type=int, help="as twistd txlb --port")
    check.add_argument("--backends", help="as twistd txlb --backends")
    check.add_argument("--algorithm", help="as twistd txlb --algorithm")
    check.add_argument("--layer", choices=["L4", "L7", "l4", "l7"],
                       help="as twistd txlb --layer")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args, out, err)
    parser.print_help(err)
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
