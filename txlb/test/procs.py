"""
Helpers for integration tests: real C{twistd txlb} processes and real
backends on 127.0.0.1.

Every process started here is stopped by the test that started it (by
PID, through the L{IProcessTransport}), and every wait is bounded.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")

# How long a process may take to reach a line we wait for.
WAIT_SECONDS = 30.0

LISTENING = re.compile(rb"listener (\S+) \((L4|L7)\) listening on (\S+):(\d+)")


def sourceTree() -> str:
    """
    The txlb source tree (for files that are not installed, like examples/).
    """
    env = os.environ.get("TXLB_SOURCE")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.dirname(os.path.dirname(here))


def freePort() -> int:
    """
    A port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessError(Exception):
    """
    A process ended, or did not say what we waited for in time.
    """


class WatchedProcess(protocol.ProcessProtocol):
    """
    A child process whose output is kept and can be waited on.

    @ivar output: everything written to stdout and stderr, interleaved.
    @ivar stderr: what was written to stderr alone.
    @ivar ended: fires with the exit code (or -signal) when it ends.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.output = b""
        self.stderr = b""
        self.ended: Deferred[int] = Deferred()
        self.exitCode: int | None = None
        self._waiters: list[tuple[re.Pattern[bytes], Deferred[Any], Any]] = []

    @property
    def pid(self) -> int | None:
        """
        The process id while it runs.
        """
        return self.transport.pid if self.transport is not None else None

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data
        if fd == 2:
            self.stderr += data
        for waiter in self._waiters[:]:
            pattern, d, timer = waiter
            m = pattern.search(self.output)
            if m is not None:
                self._waiters.remove(waiter)
                timer.cancel()
                d.callback(m)

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self.exitCode = 0
        elif reason.check(ProcessTerminated):
            value = reason.value
            self.exitCode = value.exitCode if value.exitCode is not None else -value.signal
        waiters, self._waiters = self._waiters, []
        for pattern, d, timer in waiters:
            timer.cancel()
            d.errback(
                ProcessError(
                    f"process ended ({self.exitCode}) before printing "
                    f"{pattern.pattern!r}; output:\n{self.output.decode(errors='replace')}"
                )
            )
        self.ended.callback(self.exitCode)

    def waitFor(self, pattern: bytes | re.Pattern[bytes],
                timeout: float = WAIT_SECONDS) -> Deferred[re.Match[bytes]]:
        """
        Fire with the first match of C{pattern} in the output so far or to come.
        """
        if isinstance(pattern, bytes):
            pattern = re.compile(pattern)
        m = pattern.search(self.output)
        if m is not None:
            return succeed(m)
        if self.exitCode is not None:
            raise ProcessError(
                f"process already ended; output:\n{self.output.decode(errors='replace')}"
            )
        d: Deferred[re.Match[bytes]] = Deferred()

        def expire() -> None:
            self._waiters[:] = [w for w in self._waiters if w[1] is not d]
            d.errback(
                ProcessError(
                    f"no {pattern.pattern!r} within {timeout}s; output:\n"
                    f"{self.output.decode(errors='replace')}"
                )
            )

        timer = self.reactor.callLater(timeout, expire)
        self._waiters.append((pattern, d, timer))
        return d

    def stop(self, timeout: float = WAIT_SECONDS) -> Deferred[int]:
        """
        SIGTERM the process (if it still runs); SIGKILL it after C{timeout}.
        """
        if self.exitCode is not None:
            return succeed(self.exitCode)
        try:
            self.transport.signalProcess("TERM")
        except Exception:
            pass

        def kill() -> None:
            try:
                self.transport.signalProcess("KILL")
            except Exception:
                pass

        timer = self.reactor.callLater(timeout, kill)

        def ended(code: int) -> int:
            if timer.active():
                timer.cancel()
            return code

        return self.ended.addCallback(ended)


def spawn(reactor: Any, argv: list[str], env: dict[str, str] | None = None,
          cwd: str | None = None) -> WatchedProcess:
    """
    Start C{argv} with the test's environment (plus C{env}).
    """
    proc = WatchedProcess(reactor)
    fullEnv = dict(os.environ)
    fullEnv.update(env or {})
    reactor.spawnProcess(proc, argv[0], argv, env=fullEnv, path=cwd)
    return proc


def spawnTxlb(reactor: Any, *args: str, cwd: str | None = None,
              env: dict[str, str] | None = None) -> WatchedProcess:
    """
    Start C{twistd -n --pidfile= txlb ARGS}.
    """
    return spawn(reactor, [TWISTD, "-n", "--pidfile=", "txlb", *args], env=env, cwd=cwd)


def vmHWM(pid: int) -> int:
    """
    Peak resident memory of process C{pid}, in bytes.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise ProcessError(f"no VmHWM for {pid}")


@implementer(IPushProducer)
class ByteSource:
    """
    Writes C{total} bytes to a transport as fast as it takes them: a push
    producer, so the transport's backpressure holds it back.

    @ivar remaining: bytes still to write.
    """

    def __init__(self, transport: Any, total: int, fill: bytes = b"x",
                 onDone: Any = None) -> None:
        self.transport = transport
        self.remaining = total
        self.chunk = fill * 65536
        self.paused = False
        self.onDone = onDone

    def start(self) -> None:
        """
        Register with the transport and write until paused or done.
        """
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True
        self.remaining = 0

    def resumeProducing(self) -> None:
        self.paused = False
        chunk = self.chunk
        write = self.transport.write
        while not self.paused and self.remaining > 0:
            n = min(self.remaining, len(chunk))
            self.remaining -= n
            write(chunk if n == len(chunk) else chunk[:n])
        if self.remaining == 0 and not self.paused:
            self.transport.unregisterProducer()
            if self.onDone is not None:
                onDone, self.onDone = self.onDone, None
                onDone()
