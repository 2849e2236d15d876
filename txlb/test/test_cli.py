"""
Tests for L{txlb.cli}, the C{txlb} console command.

L{CheckTests} call L{txlb.cli.main} in this process with test-double
strategies; L{ConsoleScriptTests} run the installed C{txlb} script, with the
installed strategy plugins.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from io import StringIO

from twisted.trial.unittest import SynchronousTestCase

from txlb import config
from txlb.cli import main
from txlb.test.test_config import FAKE_REGISTRY, toml

SIMPLE = toml(
    """
    [load_balancer]
    address = "127.0.0.1"
    port = 8080
    algorithm = "round_robin"
    layer = "L7"

    [[server]]
    address = "127.0.0.1"
    port = 3000
    max_connections = 1000
    weight = 3
    """
)

FULL = toml(
    """
    [health_check]
    type = "http"
    path = "/healthz"

    [timeouts]
    connect = 3

    [listeners.web]
    port = 8080
    layer = "L7"
    pool = "app"
    max_connections = 5000
    [[listeners.web.routes]]
    host = "api.example.com"
    path_prefix = "/v1"
    headers = { X-Canary = "1" }
    pool = "api"
    [[listeners.web.routes]]
    pool = "app"

    [listeners.local]
    endpoint = "unix:/run/txlb.sock"
    pool = "api"

    [pools.app]
    algorithm = "consistent_hash"
    algorithm_options = { key = "client_ip", replicas = 10 }
    [[pools.app.servers]]
    address = "10.0.0.1"
    port = 80
    weight = 2
    max_connections = 100
    [[pools.app.servers]]
    endpoint = "unix:path=/run/app.sock"

    [pools.api]
    [pools.api.health_check]
    type = "tcp"
    interval = 2
    timeout = 1
    rise = 3
    fall = 4
    [[pools.api.servers]]
    address = "10.0.0.2"
    port = 81
    """
)


def writeConfig(testCase: SynchronousTestCase, text: str | bytes) -> str:
    """
    Write C{text} to C{lb.toml} in a new directory of C{testCase}.

    @return: the file's path.
    """
    directory = os.path.abspath(testCase.mktemp())
    os.makedirs(directory)
    path = os.path.join(directory, "lb.toml")
    with open(path, "wb") as f:
        f.write(text.encode("utf-8") if isinstance(text, str) else text)
    return path


class CheckTests(SynchronousTestCase):
    """
    C{txlb check FILE} validates a file and prints what it would run.
    """

    def setUp(self) -> None:
        self.patch(config, "strategyRegistry", lambda: FAKE_REGISTRY)

    def runCommand(self, *argv: str) -> tuple[int, list[str], str]:
        """
        Run C{txlb argv}.

        @return: the exit status, the lines written to standard output and
            what was written to standard error.
        """
        out, err = StringIO(), StringIO()
        status = main(list(argv), out=out, err=err)
        return status, out.getvalue().splitlines(), err.getvalue()

    def test_validSimpleFile(self) -> None:
        """
        A valid simple-form file is reported valid with its listener, pool
        and server, and the status is 0.
        """
        path = writeConfig(self, SIMPLE)
        self.assertEqual(
            self.runCommand("check", path),
            (
                0,
                [
                    f"{path}: configuration is valid",
                    "listener default: L7 on tcp:port=8080:interface=127.0.0.1:"
                    "backlog=1024 -> pool default",
                    "pool default: round_robin, 1 server, connect timeout 5s",
                    "  server 127.0.0.1:3000: tcp:host=127.0.0.1:port=3000:timeout=5, "
                    "weight 3, max_connections 1000",
                ],
                "",
            ),
        )

    def test_protectionAndAdminShown(self) -> None:
        """
        Rate limits, pool protection, the admin service and a non-default
        drain deadline are part of what C{check} prints.
        """
        path = writeConfig(
            self,
            "[load_balancer]\nlayer = \"L7\"\nstats = true\nslow_start = 10\n"
            "max_queue = 5\non_all_down = \"panic\"\n"
            "[rate_limit]\nrequests_per_second = 20\nburst = 40\n"
            "[outlier_detection]\n[circuit_breaker]\n"
            "[admin]\nport = 9191\n[lifecycle]\ndrain_timeout = 5\n"
            "[[server]]\naddress = \"127.0.0.1\"\nport = 3000\n",
        )
        status, lines, err = self.runCommand("check", path)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            lines[2:5],
            [
                "  rate limit: 20/s per client, burst 40",
                "  answers /lb-health and /lb-stats itself",
                "pool default: round_robin, 1 server, connect timeout 5s",
            ],
        )
        self.assertEqual(
            lines[5],
            "  protection: slow start 10s, queue 5 (5s), panic when all down, "
            "outlier ejection after 5 failures (30-300s, at most 50%), "
            "circuit breaker at 0.5 of 20 (open 10s)",
        )
        self.assertEqual(
            lines[-2:],
            [
                "admin: tcp:port=9191:interface=127.0.0.1:backlog=50, no token "
                "(loopback only)",
                "drain on stop: up to 5s",
            ],
        )

    def test_validFullFile(self) -> None:
        """
        A valid full-form file is reported with every listener, route, pool,
        health check and server.
        """
        path = writeConfig(self, FULL)
        self.assertEqual(
            self.runCommand("check", path),
            (
                0,
                [
                    f"{path}: configuration is valid",
                    "listener web: L7 on tcp:port=8080:interface=0.0.0.0:backlog=1024 "
                    "-> pool app (max_connections 5000)",
                    "  route host api.example.com and path /v1* and header x-canary: 1 -> pool api",
                    "  route any -> pool app",
                    "listener local: L4 on unix:/run/txlb.sock -> pool api",
                    "pool app: consistent_hash (key='client_ip', replicas=10), "
                    "2 servers, connect timeout 3s",
                    "  health check: http every 5s, timeout 2s, rise 2, fall 3, path /healthz",
                    "  server 10.0.0.1:80: tcp:host=10.0.0.1:port=80:timeout=3, "
                    "weight 2, max_connections 100",
                    "  server unix:path=/run/app.sock: unix:path=/run/app.sock, weight 1",
                    "pool api: round_robin, 1 server, connect timeout 3s",
                    "  health check: tcp every 2s, timeout 1s, rise 3, fall 4",
                    "  server 10.0.0.2:81: tcp:host=10.0.0.2:port=81:timeout=3, weight 1",
                ],
                "",
            ),
        )

    def test_invalidFile(self) -> None:
        """
        An invalid file gives one C{txlb: error:} line naming the file, the
        key and the value on standard error, nothing on standard output, and
        status 1.
        """
        path = writeConfig(
            self, SIMPLE + '[[server]]\naddress = "127.0.0.1"\nport = 70000\n'
        )
        self.assertEqual(
            self.runCommand("check", path),
            (1, [], f"txlb: error: {path}: server[2].port: must be 1-65535, got 70000\n"),
        )

    def test_unknownKey(self) -> None:
        """
        An unknown key is reported with its hint.
        """
        path = writeConfig(self, SIMPLE + "wieght = 2\n")
        self.assertEqual(
            self.runCommand("check", path),
            (
                1,
                [],
                f"txlb: error: {path}: server[1].wieght: unknown key; did you mean 'weight'?\n",
            ),
        )

    def test_missingFile(self) -> None:
        """
        A file that cannot be read is an error, status 1.
        """
        path = os.path.join(self.mktemp(), "lb.toml")
        self.assertEqual(
            self.runCommand("check", path),
            (1, [], f"txlb: error: {path}: cannot read: No such file or directory\n"),
        )

    def test_overrides(self) -> None:
        """
        C{--port}, C{--backends}, C{--algorithm} and C{--layer} override the
        file as they would under C{twistd txlb}.
        """
        path = writeConfig(self, SIMPLE)
        status, out, err = self.runCommand(
            "check",
            path,
            "--port",
            "9000",
            "--backends",
            "10.0.0.5:81,10.0.0.6:82",
            "--algorithm",
            "LEAST-CONNECTIONS",
            "--layer",
            "l4",
        )
        self.assertEqual(
            (status, out, err),
            (
                0,
                [
                    f"{path}: configuration is valid",
                    "listener default: L4 on tcp:port=9000:interface=127.0.0.1:"
                    "backlog=1024 -> pool default",
                    "pool default: least_connections, 2 servers, connect timeout 5s",
                    "  server 10.0.0.5:81: tcp:host=10.0.0.5:port=81:timeout=5, weight 1",
                    "  server 10.0.0.6:82: tcp:host=10.0.0.6:port=82:timeout=5, weight 1",
                ],
                "",
            ),
        )

    def test_overrideNeedsOneListener(self) -> None:
        """
        A flag that needs one listener is refused for a file with several.
        """
        path = writeConfig(self, FULL)
        self.assertEqual(
            self.runCommand("check", path, "--port", "9000"),
            (
                1,
                [],
                f"txlb: error: {path}: listeners: --port needs exactly one listener in "
                "the file to apply to\n",
            ),
        )

    def test_badBackends(self) -> None:
        """
        A malformed C{--backends} is an error naming the entry, status 1.
        """
        path = writeConfig(self, SIMPLE)
        self.assertEqual(
            self.runCommand("check", path, "--backends", "nope"),
            (1, [], "txlb: error: --backends: expected HOST:PORT, got 'nope'\n"),
        )

    def test_noSubcommand(self) -> None:
        """
        Without a subcommand, the usage goes to standard error and the status
        is 2.
        """
        status, out, err = self.runCommand()
        self.assertEqual((status, out), (2, []))
        self.assertTrue(err.startswith("usage: txlb"), err)
        self.assertIn("check", err)


class ConsoleScriptTests(SynchronousTestCase):
    """
    The installed C{txlb} console script, run as a separate process with the
    installed strategy plugins.
    """

    def runScript(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """
        Run the C{txlb} script installed beside this Python.
        """
        script = os.path.join(os.path.dirname(sys.executable), "txlb")
        directory = self.mktemp()
        os.makedirs(directory)
        return subprocess.run(
            [script, *argv], cwd=directory, capture_output=True, text=True, timeout=120
        )

    def test_checkOpensNoSocket(self) -> None:
        """
        C{txlb check} accepts a file whose listener's port is held by another
        socket, because it never binds: it prints the listener and exits 0.
        """
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(held.close)
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        path = writeConfig(
            self,
            SIMPLE.replace("port = 8080", f"port = {port}").replace('"L7"', '"L4"'),
        )
        result = self.runScript("check", path)
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(
            result.stdout.splitlines()[:2],
            [
                f"{path}: configuration is valid",
                f"listener default: L4 on tcp:port={port}:interface=127.0.0.1:"
                "backlog=1024 -> pool default",
            ],
        )

    def test_checkInvalid(self) -> None:
        """
        For an invalid file the script exits 1 with one error line.
        """
        path = writeConfig(self, SIMPLE.replace("weight = 3", "weight = 0"))
        result = self.runScript("check", path)
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr),
            (1, "", f"txlb: error: {path}: server[1].weight: must be 1-1000, got 0\n"),
        )
