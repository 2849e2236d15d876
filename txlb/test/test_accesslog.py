"""
Tests for L{txlb.accesslog}: the access log's file, buffering and lines.
"""

from __future__ import annotations

import gc
import json
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txlb.accesslog import FLUSH_INTERVAL, AccessLog


class _ReactorClock(Clock):
    """
    A L{Clock} with the system event triggers of a reactor.
    """

    def __init__(self) -> None:
        super().__init__()
        self.triggers: dict[int, tuple[str, str, Any]] = {}

    def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> int:
        handle = len(self.triggers) + 1
        self.triggers[handle] = (phase, event, f)
        return handle

    def removeSystemEventTrigger(self, handle: int) -> None:
        del self.triggers[handle]

    def shutdown(self) -> None:
        """
        Run the "before shutdown" triggers.
        """
        for phase, event, f in list(self.triggers.values()):
            if (phase, event) == ("before", "shutdown"):
                f()


class AccessLogTests(SynchronousTestCase):
    """
    L{AccessLog} writes one line of JSON per record.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()

    def lines(self) -> list[Any]:
        """
        @return: the records in the file so far.
        """
        with open(self.path) as f:
            return [json.loads(line) for line in f.read().splitlines()]

    def test_lineBuffered(self) -> None:
        """
        Without a clock, each record is in the file at once.
        """
        log = AccessLog(self.path)
        self.addCleanup(log.close)
        log({"status": 200, "target": '/"\\é'})
        log.writeLine('{"status":204}')
        self.assertEqual([{"status": 200, "target": '/"\\é'}, {"status": 204}],
                         self.lines())

    def test_bufferedUntilInterval(self) -> None:
        """
        With a clock, records are written within L{FLUSH_INTERVAL}, by one
        timer, which is not left behind.
        """
        clock = Clock()
        log = AccessLog(self.path, clock=clock)
        self.addCleanup(log.close)
        log({"n": 1})
        clock.advance(FLUSH_INTERVAL / 2)
        log({"n": 2})
        self.assertEqual(1, len(clock.getDelayedCalls()))
        clock.advance(FLUSH_INTERVAL / 2)
        self.assertEqual([{"n": 1}, {"n": 2}], self.lines())
        self.assertEqual([], clock.getDelayedCalls())

    def test_closeAndReopenFlush(self) -> None:
        """
        Reopening (after a rotation) and closing write what is buffered and
        cancel the timer.
        """
        clock = Clock()
        log = AccessLog(self.path, clock=clock)
        log({"n": 1})
        log.reopen()
        self.assertEqual([{"n": 1}], self.lines())
        log({"n": 2})
        log.close()
        self.assertEqual([{"n": 1}, {"n": 2}], self.lines())
        self.assertEqual([], clock.getDelayedCalls())

    def test_shutdownFlushes(self) -> None:
        """
        A reactor's shutdown writes what is buffered; a closed log leaves no
        trigger behind.
        """
        clock = _ReactorClock()
        log = AccessLog(self.path, clock=clock)
        log({"n": 1})
        clock.shutdown()
        self.assertEqual([{"n": 1}], self.lines())
        log.close()
        self.assertEqual({}, clock.triggers)

    def test_droppedLogNotKept(self) -> None:
        """
        The shutdown trigger does not keep a log that was dropped (by a
        reload) alive, and does nothing once it is gone.
        """
        clock = _ReactorClock()
        log = AccessLog(self.path, clock=clock)
        log({"n": 1})
        log.flush()
        del log
        gc.collect()
        clock.shutdown()
        self.assertEqual([{"n": 1}], self.lines())

    def test_txlbLog(self) -> None:
        """
        C{"-"} sends each record to txlb's log, namespace C{txlb.access}.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        log = AccessLog("-", clock=Clock())
        log({"status": 200})
        [event] = events
        self.assertEqual("txlb.access", event["log_namespace"])
        self.assertEqual('{"status":200}', event["line"])
