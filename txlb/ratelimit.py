"""
Per-client rate limits: a token bucket for each client address, in a table
of bounded size.

A listener asks its L{TokenBucketTable} to L{take <TokenBucketTable.take>}
a token for the client's IP address before it serves a connection (L4) or
a request (L7), and refuses (answering C{429} with C{Retry-After} for L7)
when none is left.
"""

from __future__ import annotations

import collections

import attrs
from twisted.internet.interfaces import IReactorTime

# Bucket arithmetic is in float seconds: a bucket holding this share of a
# token less than one, by rounding errors, still gives the token.
_TOLERANCE = 1e-4


@attrs.define(eq=False)
class TokenBucketTable:
    """
    A token bucket per key (a client's IP address): each holds up to
    C{burst} tokens, refills continuously at C{rate} tokens a second, and
    a new key starts full.

    A bucket is kept as one number: the clock time at which it will be full
    again (the theoretical arrival time of the generic cell rate
    algorithm).  A bucket that is full is the same as no bucket at all, so
    it is dropped: the table is ordered from least to most recently used,
    and every L{take} drops up to two buckets that are full again from its
    front.  Every bucket is full again C{burst / rate} seconds after its
    last use, so nothing outlives that by much while traffic flows;
    L{prune} drops them all at once.  Beyond C{maxClients} buckets the
    least recently used is dropped even when it is not full: that client
    starts again with a full bucket (the limit fails open, for the clients
    that have been quiet the longest, rather than growing without bound).

    Time is C{clock.seconds()}, which for a reactor is the wall clock: when
    it steps back, a bucket's wait is capped at what an empty bucket waits
    (C{1 / rate}), so nobody is locked out for the size of the step.

    @ivar rate: tokens added per second.
    @ivar burst: tokens a bucket holds at most.
    @ivar clock: the L{IReactorTime} giving the time.
    @ivar maxClients: buckets kept at most.
    @ivar allowed: tokens taken, ever.
    @ivar limited: takes refused, ever.
    @ivar evicted: buckets dropped before they were full, for C{maxClients}.
    """

    rate: float
    burst: int
    clock: IReactorTime
    maxClients: int = 100000
    allowed: int = attrs.field(default=0, init=False)
    limited: int = attrs.field(default=0, init=False)
    evicted: int = attrs.field(default=0, init=False)
    # Key -> the time its bucket is full again, in seconds since _origin;
    # least recently used first.
    _full: collections.OrderedDict[str, float] = attrs.field(
        factory=collections.OrderedDict, init=False, repr=False
    )
    # Times are kept relative to this clock time: the reactor's are near
    # 2 ** 31, where a float's resolution is 1/4 us and sums of intervals
    # would drift by that much each.
    _origin: float = attrs.field(init=False, repr=False)
    # Seconds one token takes to come back.
    _interval: float = attrs.field(init=False, repr=False)
    # How far in the future a bucket's full time may be for it to still
    # hold one token: (burst - 1) tokens' worth.
    _slack: float = attrs.field(init=False, repr=False)
    # Rounding errors forgiven, in seconds.
    _tolerance: float = attrs.field(init=False, repr=False)
    # Seconds an empty bucket takes to be full: burst tokens' worth.
    _span: float = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be positive, got {self.rate!r}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst!r}")
        if self.maxClients < 1:
            raise ValueError(f"maxClients must be at least 1, got {self.maxClients!r}")
        self._origin = self.clock.seconds()
        self._interval = 1.0 / self.rate
        self._slack = (self.burst - 1) / self.rate
        self._tolerance = _TOLERANCE / self.rate
        self._span = self.burst / self.rate

    def take(self, key: str) -> float:
        """
        Take one token from C{key}'s bucket, if it has one.

        @param key: the client's IP address.
        @return: C{0.0} when a token was taken (allow); otherwise the
            seconds until the bucket holds one token again (refuse; for
            C{Retry-After}, round up to at least one second).
        """
        now = self.clock.seconds() - self._origin
        table = self._full
        full = table.get(key)
        if full is None:
            if len(table) >= self.maxClients:
                self._makeRoom(now)
            table[key] = now + self._interval
            self.allowed += 1
            wait = 0.0
        else:
            table.move_to_end(key)
            if full < now:
                full = now
            wait = full - now - self._slack
            if wait > self._tolerance:
                if wait > self._interval:
                    # The clock stepped back: wait as for an empty bucket.
                    table[key] = now + self._span
                    wait = self._interval
                self.limited += 1
            else:
                table[key] = full + self._interval
                self.allowed += 1
                wait = 0.0
        # Drop up to two buckets full again from the front, so that the
        # table shrinks while new clients keep coming.  Spelled out: this is
        # the per-request hot path, where a helper call costs a third more.
        if table:
            first = next(iter(table))
            if table[first] <= now:
                del table[first]
                if table:
                    first = next(iter(table))
                    if table[first] <= now:
                        del table[first]
        return wait

    def _makeRoom(self, now: float) -> None:
        """
        Drop least recently used buckets until there is room for one more.
        """
        table = self._full
        while len(table) >= self.maxClients:
            _, full = table.popitem(last=False)
            if full > now:
                self.evicted += 1

    def prune(self) -> int:
        """
        Drop every bucket at the front of the table that is full again:
        after C{burst / rate} seconds without any L{take}, that is all of
        them.

        @return: how many were dropped.
        """
        now = self.clock.seconds() - self._origin
        table = self._full
        dropped = 0
        while table:
            key = next(iter(table))
            if table[key] > now:
                break
            del table[key]
            dropped += 1
        return dropped

    def __len__(self) -> int:
        """
        The buckets kept now.
        """
        return len(self._full)
