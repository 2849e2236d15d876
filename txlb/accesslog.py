"""
The L7 access log: one JSON object per request, per line.

C{access_log = "-"} sends each record to txlb's own log (namespace
C{txlb.access}); a path appends lines to that file.  Records carry time,
client, method, target, status, bytes in and out, pool, backend, attempts
and duration.

Writing to a file is line-buffered (one C{write} per record) unless the log
is given a clock: then records are buffered and written at most
L{FLUSH_INTERVAL} seconds after they were logged (or once L{BUFFER_SIZE}
bytes are waiting), and on shutdown, reopening and closing.
"""

from __future__ import annotations

import json
import weakref
from typing import IO, Any

from twisted.logger import Logger

#: The most seconds a buffered record waits to be written.
FLUSH_INTERVAL = 1.0

#: The bytes of buffer of a log with a clock.
BUFFER_SIZE = 64 * 1024

# Not a class attribute: a Logger read through an instance takes the class's
# name as its namespace, whatever it was made with.
_log = Logger(namespace="txlb.access")


class AccessLog:
    """
    Writes access-log records.

    @ivar path: the file, or C{"-"} for txlb's log.
    """

    def __init__(self, path: str, opener: Any = open, clock: Any = None) -> None:
        """
        @param opener: opens the file, as C{open} does.
        @param clock: an C{IReactorTime} to buffer records with (see the
            module docstring); a reactor's shutdown then flushes them too.
            C{None}: a C{write} per record.
        """
        self.path = path
        self._opener = opener
        self._clock = clock
        self._file: IO[str] | None = None
        self._flushCall: Any = None
        self._trigger: Any = None
        if path != "-":
            self.reopen()
            addTrigger = getattr(clock, "addSystemEventTrigger", None)
            if addTrigger is not None:
                # Held weakly: a log dropped by a reload is not kept open
                # by the reactor.
                ref = weakref.ref(self)

                def flushAtShutdown() -> None:
                    log = ref()
                    if log is not None:
                        log.flush()

                self._trigger = addTrigger("before", "shutdown", flushAtShutdown)

    def reopen(self) -> None:
        """
        (Re)open the file, e.g. after it was rotated.
        """
        self.flush()
        buffering = 1 if self._clock is None else BUFFER_SIZE
        old, self._file = self._file, self._opener(self.path, "a", buffering=buffering)
        if old is not None:
            old.close()

    def __call__(self, record: dict[str, Any]) -> None:
        """
        Write one record.
        """
        self.writeLine(json.dumps(record, separators=(",", ":"), ensure_ascii=False))

    def writeLine(self, line: str) -> None:
        """
        Write one record already serialized, as one line of JSON without its
        line end.
        """
        if self._file is None:
            _log.info("{line}", line=line)
            return
        self._file.write(line + "\n")
        if self._clock is not None and self._flushCall is None:
            self._flushCall = self._clock.callLater(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """
        Write what is buffered now.
        """
        call, self._flushCall = self._flushCall, None
        if call is not None and call.active():
            call.cancel()
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """
        Close the file, if any (what is buffered is written first).
        """
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        trigger, self._trigger = self._trigger, None
        if trigger is not None:
            self._clock.removeSystemEventTrigger(trigger)
