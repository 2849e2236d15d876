"""
What L{l4_pathcost} and L{l7_pathcost} both use: a stand-in socket and a
stand-in epoll that cost next to nothing, and the timing of a run.
"""

from __future__ import annotations

import time
from functools import partial
from itertools import cycle


class StandInSocket:
    """
    A socket whose C{recv} returns C{payload} (or each of a list of payloads
    in turn, round and round) and whose C{send} takes all it is given (or
    records it, with C{sent}), both cheap.
    """

    def __init__(self, real, payload: bytes | list[bytes], bufferSize: int,
                 sent=None) -> None:
        if isinstance(payload, list) and len(payload) == 1:
            payload = payload[0]
        if isinstance(payload, bytes):
            self.recv = {bufferSize: payload}.get
        else:
            # next(payloads, bufferSize): the next one, in C, as cheap as
            # dict.get (a cycle never runs out, so the default is unused).
            self.recv = partial(next, cycle(payload))
        if sent is None:
            self.send = len
        else:

            def send(data: bytes) -> int:
                sent.append(data)
                return len(data)

            self.send = send
        self.fileno = real.fileno


class StandInPoller:
    """
    An epoll that reports the same events at every poll.
    """

    def __init__(self, events: list[tuple[int, int]]) -> None:
        self._events = events

    def poll(self, timeout: float, maxEvents: int) -> list[tuple[int, int]]:
        return self._events


def best(run, requests: int) -> float:
    """
    @return: the fewest nanoseconds per request over five runs of C{run}.
    """
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best / requests * 1e9
