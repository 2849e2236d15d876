"""
A small Chrome DevTools Protocol client for the browser integration tests:
start headless Chromium, attach to its page, navigate, and evaluate
JavaScript in it.

L{launch} runs Chromium as a child of the test (through
L{txlb.test.procs}, so it is stopped by PID).  L{Page} talks to one page
over the DevTools WebSocket with C{websockets.sync.client}: its calls
block, so tests run them with C{deferToThread} and the reactor keeps
serving meanwhile.  Every wait is bounded.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred

from txlb.test import procs

CHROMIUM = "/usr/bin/chromium"

# What Chromium prints on stderr once its DevTools server listens.
DEVTOOLS_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")

# Seconds any one DevTools exchange may take.
CALL_TIMEOUT = 30.0


class DevToolsError(Exception):
    """
    Chromium answered a call with an error, or not in time.
    """


class JavaScriptError(DevToolsError):
    """
    The evaluated expression threw.
    """


def chromiumArguments(profile: str) -> list[str]:
    """
    The command line of a headless Chromium with its own profile in
    C{profile}, its DevTools server on a free port of 127.0.0.1, and none
    of the background traffic a test does not want.
    """
    return [
        CHROMIUM,
        "--headless=new",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--mute-audio",
        "about:blank",
    ]


def launch(reactor: Any, directory: str) -> tuple[procs.WatchedProcess, Deferred[str]]:
    """
    Start headless Chromium with its profile (and C{HOME}) in
    C{directory}.

    @return: the process, and a L{Deferred} firing with the URL of its
        browser DevTools WebSocket once it listens (failing after
        L{procs.WAIT_SECONDS}, or if it exits first).
    """
    profile = os.path.join(directory, "profile")
    os.makedirs(profile, exist_ok=True)
    env = {
        "HOME": directory,
        "XDG_CONFIG_HOME": os.path.join(directory, "config"),
        "XDG_CACHE_HOME": os.path.join(directory, "cache"),
    }
    proc = procs.spawn(reactor, chromiumArguments(profile), env=env, cwd=directory)
    listening = proc.waitFor(DEVTOOLS_LISTENING)
    return proc, listening.addCallback(lambda m: m.group(1).decode("ascii"))


def _getJSON(url: str, timeout: float) -> Any:
    # The DevTools server is on loopback: never go through a proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return json.load(response)


def pageTarget(browserURL: str, timeout: float = CALL_TIMEOUT) -> str:
    """
    The DevTools WebSocket URL of the first page Chromium has open.

    @param browserURL: the browser's WebSocket URL (from L{launch}).
    @raise DevToolsError: no page is open.
    """
    host = urlsplit(browserURL).netloc
    targets = _getJSON(f"http://{host}/json/list", timeout)
    for target in targets:
        if target.get("type") == "page":
            return str(target["webSocketDebuggerUrl"])
    raise DevToolsError(f"no page among {targets!r}")


class Page:
    """
    A DevTools session with one page.  Blocking: call it from a thread.
    """

    def __init__(self, url: str, timeout: float = CALL_TIMEOUT) -> None:
        from websockets.sync.client import connect

        self.timeout = timeout
        self._ids = itertools.count(1)
        options: dict[str, Any] = {
            "open_timeout": timeout, "close_timeout": 5, "max_size": None,
        }
        try:
            # DevTools is on loopback: no proxy (websockets >= 15 would
            # use one from the environment).
            self._socket = connect(url, proxy=None, **options)
        except TypeError:
            self._socket = connect(url, **options)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """
        Send one command; return its result, skipping the events that
        arrive meanwhile.

        @raise DevToolsError: Chromium answered with an error, or nothing
            within the timeout.
        """
        callId = next(self._ids)
        self._socket.send(json.dumps({"id": callId, "method": method, "params": params}))
        while True:
            try:
                message = json.loads(self._socket.recv(timeout=self.timeout))
            except TimeoutError:
                raise DevToolsError(f"{method}: no answer within {self.timeout}s")
            if message.get("id") != callId:
                continue
            if "error" in message:
                raise DevToolsError(f"{method}: {message['error']}")
            return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        """
        Evaluate C{expression} in the page (awaiting it if it is a
        promise); return its value, as JSON would carry it.

        @raise JavaScriptError: it threw.
        """
        answer = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True,
            awaitPromise=True,
        )
        details = answer.get("exceptionDetails")
        if details is not None:
            exception = details.get("exception", {})
            raise JavaScriptError(
                exception.get("description") or details.get("text") or repr(details)
            )
        return answer.get("result", {}).get("value")

    def navigate(self, url: str) -> None:
        """
        Load C{url} (without waiting for it to finish loading).

        @raise DevToolsError: the navigation failed at once.
        """
        answer = self.call("Page.navigate", url=url)
        if answer.get("errorText"):
            raise DevToolsError(f"cannot load {url}: {answer['errorText']}")

    def close(self) -> None:
        """
        Close the WebSocket (the page stays open).
        """
        self._socket.close()
