"""
End-to-end test of C{txlbctl}: the installed console script drives a real
C{twistd txlb} with an C{[admin]} table, in front of real backends on
127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, TestCase

from txlb.test import procs
from txlb.test.l7backends import NamedSite
from txlb.test.test_integration_l7 import _requests

TXLBCTL = os.path.join(procs.BIN, "txlbctl")
TOKEN = "integration-token-0123456789"
ADMIN_LISTENING = re.compile(rb"admin listening on (http://\S+?)/")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class TxlbctlIntegrationTests(TestCase):
    """
    C{txlbctl} lists, adds, drains, reweights and removes servers of a
    running txlb.
    """

    timeout = 120

    def setUp(self) -> None:
        if not os.path.exists(TXLBCTL):
            raise SkipTest(f"{TXLBCTL} is not installed (pip install -e .)")
        self.tmp = FilePath(self.mktemp())
        self.tmp.makedirs()

    @inlineCallbacks
    def startSite(self, name: bytes):
        """
        Start a L{NamedSite} on a free port of 127.0.0.1 until the test
        ends; fire with C{(site, port)}.
        """
        site = NamedSite(name)
        port = yield TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        return site, port.getHost().port

    def txlbctl(self, *args: str, token: str | None = TOKEN):
        """
        Run the installed C{txlbctl args} against the admin API; fire with
        C{(exit status, stdout lines, stderr)}.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("TXLB_ADMIN")}
        env["TXLB_ADMIN_URL"] = self.adminURL
        if token is not None:
            env["TXLB_ADMIN_TOKEN"] = token
        d = getProcessOutputAndValue(TXLBCTL, args, env=env, reactor=_reactor())
        return d.addCallback(
            lambda r: (r[2], r[0].decode().splitlines(), r[1].decode())
        )

    @inlineCallbacks
    def servedBy(self, port: int, count: int):
        """
        Send C{count} GETs through txlb's listener, each on a new
        connection; fire with the backends' names in order.
        """
        names = []
        for _ in range(count):
            responses, _ = yield deferToThread(_requests, port, [("GET", "/", {})])
            [(status, headers, body)] = responses
            self.assertEqual(status, 200)
            names.append(body.strip())
        return names

    @inlineCallbacks
    def servers(self):
        """
        Fire with C{txlbctl --json list app}'s servers by name.
        """
        status, out, err = yield self.txlbctl("--json", "list", "app")
        self.assertEqual((status, err), (0, ""))
        return {s["name"]: s for s in json.loads("\n".join(out))["servers"]}

    @inlineCallbacks
    def test_driveRunningTxlb(self):
        """
        Against a real txlb: C{list} shows the configured server; C{add}
        needs the token and then adds a server that takes traffic; C{drain}
        takes it out of rotation; C{weight} changes a weight; C{remove}
        removes it; unknown servers exit 1 with a 404; once txlb is gone,
        C{txlbctl} exits 3 saying the connection was refused.
        """
        _, portA = yield self.startSite(b"a")
        _, portB = yield self.startSite(b"b")
        a, b = f"127.0.0.1:{portA}", f"127.0.0.1:{portB}"
        config = self.tmp.child("lb.toml")
        config.setContent(
            (
                f'[admin]\nport = 0\ntoken = "{TOKEN}"\n'
                '[listeners.web]\naddress = "127.0.0.1"\nport = 0\nlayer = "L7"\n'
                'pool = "app"\n'
                '[pools.app]\nalgorithm = "round_robin"\n'
                f'[[pools.app.servers]]\naddress = "127.0.0.1"\nport = {portA}\n'
            ).encode()
        )
        proc = procs.spawnTxlb(_reactor(), "--config", config.path, cwd=self.tmp.path)
        self.addCleanup(proc.stop)
        self.adminURL = (yield proc.waitFor(ADMIN_LISTENING)).group(1).decode()
        listening = yield proc.waitFor(procs.LISTENING)
        port = int(listening.group(4))

        status, out, err = yield self.txlbctl("list")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out[0], "pool app (round_robin): 1 of 1 servers healthy")
        self.assertEqual(
            out[1].split(),
            ["NAME", "ADDRESS", "STATE", "HEALTH", "WEIGHT", "IN", "FLIGHT", "P50", "MS",
             "P99", "MS", "ERRORS"],
        )
        self.assertEqual(out[2].split()[:5], [a, a, "active", "up", "1/1"])

        status, out, err = yield self.txlbctl("add", "app", b, "--weight", "2", token=None)
        self.assertEqual(
            (status, out, err),
            (1, [], "txlbctl: error: 401 this call needs Authorization: Bearer <token>\n"),
        )
        self.assertEqual(list((yield self.servers())), [a])

        status, out, err = yield self.txlbctl("add", "app", b, "--weight", "2")
        self.assertEqual(
            (status, out, err),
            (0, [f"pool app: added server {b} at {b}, weight 2, health up"], ""),
        )
        status, out, _ = yield self.txlbctl("list")
        self.assertEqual(out[0], "pool app (round_robin): 2 of 2 servers healthy")
        self.assertEqual(out[3].split()[:5], [b, b, "active", "up", "2/2"])
        self.assertEqual(sorted((yield self.servedBy(port, 4))), [b"a", b"a", b"b", b"b"])

        status, out, err = yield self.txlbctl("drain", "app", b)
        self.assertEqual((status, out, err), (0, [f"pool app: server {b} is draining"], ""))
        self.assertEqual((yield self.servers())[b]["state"], "draining")
        self.assertEqual((yield self.servedBy(port, 4)), [b"a"] * 4)

        status, out, err = yield self.txlbctl("weight", "app", a, "5")
        self.assertEqual((status, out, err), (0, [f"pool app: server {a} has weight 5"], ""))
        self.assertEqual((yield self.servers())[a]["weight"], 5)

        status, out, err = yield self.txlbctl("remove", "app", b)
        self.assertEqual(
            (status, out, err),
            (0, [f"pool app: server {b} is draining and will be removed"], ""),
        )
        # Nothing is in flight to it: it leaves at once, or very soon.
        for _ in range(int(procs.WAIT_SECONDS / 0.05)):
            if b not in (yield self.servers()):
                break
            yield deferLater(_reactor(), 0.05, lambda: None)
        self.assertEqual(list((yield self.servers())), [a])

        status, out, err = yield self.txlbctl("drain", "app", "nope")
        self.assertEqual((status, out), (1, []))
        self.assertTrue(err.startswith("txlbctl: error: 404 "), err)

        yield proc.stop()
        status, out, err = yield self.txlbctl("list")
        self.assertEqual(
            (status, out, err),
            (3, [], f"txlbctl: error: cannot reach the admin API at {self.adminURL}: "
                    "connection refused\n"),
        )
