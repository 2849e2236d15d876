"""
The L7 access log: one JSON object per request, per line.

C{access_log = "-"} sends each record to txlb's own log (namespace
C{txlb.access}); a path appends lines to that file.  Records carry time,
client, method, target, status, bytes in and out, pool, backend, attempts
and duration.
"""

from __future__ import annotations

import json
from typing import IO, Any

from twisted.logger import Logger


class AccessLog:
    """
    Writes access-log records.

    @ivar path: the file, or C{"-"} for txlb's log.
    """

    _log = Logger(namespace="txlb.access")

    def __init__(self, path: str, opener: Any = open) -> None:
        self.path = path
        self._opener = opener
        self._file: IO[str] | None = None
        if path != "-":
            self.reopen()

    def reopen(self) -> None:
        """
        (Re)open the file, e.g. after it was rotated.
        """
        old, self._file = self._file, self._opener(self.path, "a", buffering=1)
        if old is not None:
            old.close()

    def __call__(self, record: dict[str, Any]) -> None:
        """
        Write one record.
        """
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        if self._file is None:
            self._log.info("{line}", line=line)
        else:
            self._file.write(line + "\n")

    def close(self) -> None:
        """
        Close the file, if any.
        """
        if self._file is not None:
            self._file.close()
            self._file = None
