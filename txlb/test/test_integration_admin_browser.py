"""
The dashboard in a real browser: a real C{twistd txlb} with its admin
service, real backends, and headless Chromium (the Debian package
C{chromium}) driven over the DevTools protocol (L{txlb.test.cdp}).

Without C{/usr/bin/chromium} these tests are skipped, except in CI
(C{CI=true}), where they fail saying what to install.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from typing import Any, Callable

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from txlb.test import cdp, procs
from txlb.test.l7backends import NamedSite

try:
    import websockets.sync.client  # noqa: F401
except ImportError:  # pragma: no cover - a test extra
    HAVE_WEBSOCKETS = False
else:
    HAVE_WEBSOCKETS = True

ADMIN_LISTENING = re.compile(rb"admin listening on http://127\.0\.0\.1:(\d+)/")

# Seconds between two looks at the page while waiting for it to change.
POLL = 0.2

# Every backend row of the dashboard, as [pool, server, health, state].
ROWS = """
Array.from(document.querySelectorAll('tr[data-server]')).map(
  r => [r.dataset.pool, r.dataset.server, r.dataset.health, r.dataset.state])
"""


def _reactor() -> Any:
    """
    The real reactor trial runs these tests on.
    """
    from twisted.internet import reactor

    return reactor


def _missing() -> str | None:
    """
    Why the browser tests cannot run here, or C{None}.
    """
    if not os.path.exists(cdp.CHROMIUM):
        return (
            f"{cdp.CHROMIUM} is missing: install the Debian package with "
            "'apt-get install -y --no-install-recommends chromium'"
        )
    if not HAVE_WEBSOCKETS:
        return "the websockets package (a test extra) is missing"
    return None


class DashboardBrowserTests(TestCase):
    """
    Headless Chromium shows the live dashboard of a running C{twistd txlb}.
    """

    timeout = 120

    if _missing() is not None and os.environ.get("CI") != "true":
        skip = _missing()

    def setUp(self) -> None:
        missing = _missing()
        if missing is not None:
            self.fail(f"CI=true, so the browser tests must run, but {missing}")
        self.tmp = FilePath(self.mktemp())
        self.tmp.makedirs()

    # ------------------------------------------------------------- helpers

    @inlineCallbacks
    def startBackend(self, name: bytes):
        """
        A L{NamedSite} (it answers C{/health} with 200) on a free port;
        fire with C{(site, listeningPort)}.
        """
        site = NamedSite(name)
        port = yield TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1").listen(site)
        self.addCleanup(site.dropConnections)
        self.addCleanup(port.stopListening)
        return site, port

    def writeConfig(self, backendPorts: list[int], adminPort: int,
                    admin: str = "") -> str:
        """
        An L7 listener over one pool of C{backendPorts}, health-checked
        over HTTP every half second, and the admin service on C{adminPort}
        (with more C{[admin]} lines C{admin}).
        """
        servers = "".join(
            f'[[server]]\naddress = "127.0.0.1"\nport = {port}\n' for port in backendPorts
        )
        path = self.tmp.child("lb.toml")
        path.setContent(
            (
                '[load_balancer]\naddress = "127.0.0.1"\nport = 0\nlayer = "L7"\n'
                'algorithm = "round_robin"\n'
                '[health_check]\ntype = "http"\npath = "/health"\n'
                "interval = 0.5\ntimeout = 0.4\nfall = 2\n"
                f'[admin]\naddress = "127.0.0.1"\nport = {adminPort}\n{admin}\n'
                + servers
            ).encode("utf-8")
        )
        return path.path

    @inlineCallbacks
    def startTxlb(self, config: str):
        """
        Run C{twistd -n txlb --config CONFIG} until the test ends; fire with
        the admin port once the admin service and the listener listen.
        """
        proc = procs.spawnTxlb(_reactor(), "--config", config, cwd=self.tmp.path)
        self.addCleanup(proc.stop)
        admin = yield proc.waitFor(ADMIN_LISTENING)
        yield proc.waitFor(procs.LISTENING)
        return int(admin.group(1))

    @inlineCallbacks
    def openBrowser(self):
        """
        Start headless Chromium until the test ends; fire with a
        L{cdp.Page} attached to its page.
        """
        directory = self.tmp.child("chromium")
        directory.makedirs()
        proc, listening = cdp.launch(_reactor(), directory.path)
        # Cleanups run last-added first: the session closes, then the
        # browser stops (SIGKILL if SIGTERM has not ended it in 10 s).
        self.addCleanup(proc.stop, 10.0)
        browserURL = yield listening
        pageURL = yield deferToThread(cdp.pageTarget, browserURL)
        page = yield deferToThread(cdp.Page, pageURL)
        self.addCleanup(deferToThread, page.close)
        return page

    @inlineCallbacks
    def waitUntil(self, page: cdp.Page, expression: str,
                  done: Callable[[Any], bool], what: str):
        """
        Evaluate C{expression} in C{page} until C{done} holds for its value
        (fire with it), failing after L{procs.WAIT_SECONDS}.
        """
        reactor = _reactor()
        deadline = reactor.seconds() + procs.WAIT_SECONDS
        while True:
            value = yield deferToThread(page.evaluate, expression)
            if done(value):
                return value
            if reactor.seconds() > deadline:
                self.fail(f"not {what} within {procs.WAIT_SECONDS}s; last: {value!r}")
            yield deferLater(reactor, POLL, lambda: None)

    # --------------------------------------------------------------- tests

    @inlineCallbacks
    def test_backendGoesDownLive(self):
        """
        The page lists every backend up; when one backend dies, its row
        turns down while the page stays loaded (no reload).
        """
        (aliveSite, alivePort) = yield self.startBackend(b"alive")
        (doomedSite, doomedPort) = yield self.startBackend(b"doomed")
        alive = f"127.0.0.1:{alivePort.getHost().port}"
        doomed = f"127.0.0.1:{doomedPort.getHost().port}"
        adminPort = yield self.startTxlb(
            self.writeConfig(
                [alivePort.getHost().port, doomedPort.getHost().port], procs.freePort()
            )
        )
        page = yield self.openBrowser()
        url = f"http://127.0.0.1:{adminPort}/"
        yield deferToThread(page.navigate, url)
        yield self.waitUntil(
            page, "[document.readyState, location.href]",
            lambda v: v == ["complete", url], "loaded",
        )
        marker = secrets.token_hex(8)
        yield deferToThread(page.evaluate, f"window.txlbTestMarker = {json.dumps(marker)}")

        rows = yield self.waitUntil(
            page, ROWS,
            lambda rows: sorted(rows) == sorted(
                [["default", alive, "up", "active"], ["default", doomed, "up", "active"]]
            ),
            "every backend up",
        )
        self.assertEqual(len(rows), 2)
        stream = yield deferToThread(
            page.evaluate, "document.getElementById('stream').dataset.state"
        )
        self.assertEqual(stream, "live")

        yield doomedPort.stopListening()
        doomedSite.dropConnections()
        rows = yield self.waitUntil(
            page, ROWS,
            lambda rows: ["default", doomed, "down", "active"] in rows,
            f"{doomed} down",
        )
        self.assertIn(["default", alive, "up", "active"], rows)
        # The same document all along: no reload, no second navigation.
        still = yield deferToThread(
            page.evaluate,
            "[window.txlbTestMarker, performance.getEntriesByType('navigation').length,"
            " document.querySelectorAll('tr[data-server]').length]",
        )
        self.assertEqual(still, [marker, 1, 2])
        # The failing checks are in the row's history, with their reasons.
        reasons = yield deferToThread(
            page.evaluate,
            "Array.from(document.querySelectorAll("
            f"'tr[data-server=\"{doomed}\"] .checks .fail')).map(s => s.title)",
        )
        self.assertTrue(reasons, "no failed check shown")

    @inlineCallbacks
    def test_tokenAndButtons(self):
        """
        With reads closed, the page opened with C{?token=} keeps the token
        for the tab (and out of its address), streams with it, and its
        Drain and Enable buttons change a server's state through the API
        with it; a wrong token is reported in the status line and changes
        nothing.
        """
        token = secrets.token_urlsafe(24)
        (_, portA) = yield self.startBackend(b"a")
        (_, portB) = yield self.startBackend(b"b")
        target = f"127.0.0.1:{portB.getHost().port}"
        adminPort = yield self.startTxlb(
            self.writeConfig(
                [portA.getHost().port, portB.getHost().port], procs.freePort(),
                admin=f'token = "{token}"\nopen_reads = false',
            )
        )
        page = yield self.openBrowser()
        base = f"http://127.0.0.1:{adminPort}/"
        yield deferToThread(page.navigate, base + "?token=" + token)
        yield self.waitUntil(
            page, "[document.readyState, location.href]",
            lambda v: v == ["complete", base], "loaded, token out of the address",
        )
        yield self.waitUntil(
            page, ROWS, lambda rows: len(rows) == 2 and all(r[2] == "up" for r in rows),
            "every backend up",
        )
        stored = yield deferToThread(
            page.evaluate, "sessionStorage.getItem('txlb.admin.token')"
        )
        self.assertEqual(stored, token)
        row = f"Array.from(document.querySelectorAll('tr[data-server]')).find(r => r.dataset.server === {json.dumps(target)})"
        status = "document.getElementById('status')"
        state = f"{row}.dataset.state"

        yield deferToThread(page.evaluate, f"{row}.querySelector('button.drain').click()")
        yield self.waitUntil(page, state, lambda v: v == "draining", f"{target} draining")

        yield deferToThread(
            page.evaluate,
            "(i => { i.value = 'not-the-admin-token'; i.dispatchEvent(new Event('change')); })"
            "(document.getElementById('token'))",
        )
        yield deferToThread(page.evaluate, f"{row}.querySelector('button.enable').click()")
        message = yield self.waitUntil(
            page, f"[{status}.className, {status}.textContent]",
            lambda v: v[0] == "error" and "401" in v[1], "the refusal shown",
        )
        self.assertIn(target, message[1])

        yield deferToThread(
            page.evaluate,
            f"(i => {{ i.value = {json.dumps(token)}; i.dispatchEvent(new Event('change')); }})"
            "(document.getElementById('token'))",
        )
        yield self.waitUntil(
            page, "document.getElementById('stream').dataset.state",
            lambda v: v == "live", "the stream live again",
        )
        # The refused call changed nothing: ask the API itself.
        current = yield deferToThread(
            page.evaluate,
            f"fetch('api/v1/pools/default/servers/' + encodeURIComponent({json.dumps(target)}),"
            f" {{headers: {{Authorization: 'Bearer ' + {json.dumps(token)}}}}})"
            ".then(r => r.json()).then(server => server.state)",
        )
        self.assertEqual(current, "draining")
        yield deferToThread(page.evaluate, f"{row}.querySelector('button.enable').click()")
        yield self.waitUntil(page, state, lambda v: v == "active", f"{target} active")
