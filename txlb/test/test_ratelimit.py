"""
Tests for L{txlb.ratelimit}: per-client token buckets in a bounded table.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txlb.ratelimit import TokenBucketTable


def address(i: int) -> str:
    """
    A distinct IPv4 address string for each C{i} below 2 ** 24.
    """
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


class TokenBucketTableTests(SynchronousTestCase):
    """
    L{TokenBucketTable} allows a burst, then the rate, per key.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.table = TokenBucketTable(rate=10, burst=20, clock=self.clock)

    def takeAll(self, key: str, count: int) -> list[float]:
        """
        Take C{count} times for C{key} at the current time.
        """
        return [self.table.take(key) for _ in range(count)]

    def test_newKeyHasAFullBurst(self):
        """
        A new key may take C{burst} tokens at once, and no more.
        """
        self.assertEqual(self.takeAll("a", 20), [0.0] * 20)
        self.assertGreater(self.table.take("a"), 0)
        self.assertEqual((self.table.allowed, self.table.limited), (20, 1))

    def test_refillsAtRate(self):
        """
        Once empty, a bucket gives one token each C{1 / rate} seconds.
        """
        self.takeAll("a", 20)
        for _ in range(5):
            self.clock.advance(0.1)
            self.assertEqual(self.table.take("a"), 0.0)
            self.assertGreater(self.table.take("a"), 0)

    def test_refillsContinuously(self):
        """
        Tokens come back in proportion to the time passed, up to C{burst}.
        """
        self.takeAll("a", 20)
        self.clock.advance(0.55)
        self.assertEqual(self.takeAll("a", 5), [0.0] * 5)
        self.assertGreater(self.table.take("a"), 0)
        self.clock.advance(100)
        self.assertEqual(self.takeAll("a", 20), [0.0] * 20)
        self.assertGreater(self.table.take("a"), 0)

    def test_retryAfter(self):
        """
        A refusal says how long until one token is back: C{1 / rate} for an
        empty bucket, less as time passes, and waiting that long is enough.
        """
        self.takeAll("a", 20)
        self.assertAlmostEqual(self.table.take("a"), 0.1)
        self.clock.advance(0.04)
        wait = self.table.take("a")
        self.assertAlmostEqual(wait, 0.06)
        self.clock.advance(wait)
        self.assertEqual(self.table.take("a"), 0.0)

    def test_retryAfterSlowRate(self):
        """
        At half a token a second, an empty bucket waits two seconds.
        """
        table = TokenBucketTable(rate=0.5, burst=1, clock=self.clock)
        self.assertEqual(table.take("a"), 0.0)
        self.assertAlmostEqual(table.take("a"), 2.0)
        self.clock.advance(1.5)
        self.assertAlmostEqual(table.take("a"), 0.5)
        self.clock.advance(0.5)
        self.assertEqual(table.take("a"), 0.0)

    def test_refusalTakesNothing(self):
        """
        Refused takes do not push the next token further away.
        """
        self.takeAll("a", 20)
        self.takeAll("a", 100)
        self.clock.advance(0.1)
        self.assertEqual(self.table.take("a"), 0.0)

    def test_keysAreIsolated(self):
        """
        Emptying one key's bucket leaves every other key's full.
        """
        self.takeAll("a", 25)
        self.assertEqual(self.takeAll("b", 20), [0.0] * 20)
        self.assertGreater(self.table.take("b"), 0)

    def test_clockSteppingBack(self):
        """
        When the clock steps back, a client waits at most as long as with an
        empty bucket, not the size of the step.
        """
        self.takeAll("a", 20)
        self.clock.rightNow -= 3600
        self.assertAlmostEqual(self.table.take("a"), 0.1)
        self.clock.advance(0.1)
        self.assertEqual(self.table.take("a"), 0.0)

    def test_wallClockTimes(self):
        """
        At the reactor's wall-clock times, where a float resolves only a
        quarter of a microsecond, a full burst and then one token every
        C{1 / rate} seconds for hours are all allowed, and no more.
        """
        start = 1_700_000_000.123
        self.clock.rightNow = start
        table = TokenBucketTable(rate=10, burst=20, clock=self.clock)
        self.assertEqual([table.take("a") for _ in range(20)], [0.0] * 20)
        for i in range(1, 100001):
            # Each reading rounded once, as the reactor's are (advance()
            # would add the rounding error of 0.1 at every step).
            self.clock.rightNow = start + i / 10
            self.assertEqual(table.take("a"), 0.0)
            self.assertGreater(table.take("a"), 0)
        self.assertEqual((table.allowed, table.limited), (100020, 100000))

    def test_badArguments(self):
        """
        The rate must be positive, the burst and size at least 1.
        """
        for kw in (
            dict(rate=0, burst=1),
            dict(rate=-1, burst=1),
            dict(rate=1, burst=0),
            dict(rate=1, burst=1, maxClients=0),
        ):
            self.assertRaises(ValueError, TokenBucketTable, clock=self.clock, **kw)


class TokenBucketTableSizeTests(SynchronousTestCase):
    """
    The table of L{TokenBucketTable} stays bounded: full buckets are
    dropped, and beyond C{maxClients} the least recently used go.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)

    def test_fullBucketsDropped(self):
        """
        A bucket full again (C{burst / rate} seconds after its last use) is
        dropped by later takes, oldest first.
        """
        table = TokenBucketTable(rate=10, burst=20, clock=self.clock)
        table.take("a")
        self.clock.advance(0.05)
        table.take("b")
        self.assertEqual(len(table), 2)
        # "a" took one token, back 0.1 s later; "b" is not full yet.
        self.clock.advance(0.06)
        table.take("b")
        self.assertEqual(len(table), 1)
        self.clock.advance(1)
        table.take("c")
        self.assertEqual(len(table), 1)

    def test_emptiedBucketKeptUntilFull(self):
        """
        A bucket that is not full again is kept, however old.
        """
        table = TokenBucketTable(rate=10, burst=20, clock=self.clock)
        for _ in range(20):
            table.take("a")
        self.clock.advance(1.99)
        table.take("b")
        self.assertEqual(len(table), 2)
        self.clock.advance(0.02)
        table.take("b")
        self.assertEqual(len(table), 1)

    def test_prune(self):
        """
        prune drops every bucket that is full again at once.
        """
        table = TokenBucketTable(rate=10, burst=20, clock=self.clock)
        for i in range(50):
            table.take(address(i))
        self.assertEqual(table.prune(), 0)
        self.clock.advance(0.1)
        self.assertEqual(table.prune(), 50)
        self.assertEqual(len(table), 0)

    def test_leastRecentlyUsedEvictedBeyondMaximum(self):
        """
        Beyond C{maxClients} the least recently used bucket is dropped, even
        though not full; its client starts again with a full bucket.
        """
        table = TokenBucketTable(rate=1, burst=2, clock=self.clock, maxClients=3)
        for key in "abc":
            table.take(key)
            table.take(key)
        table.take("a")  # refused, but "a" is now the most recently used
        table.take("d")
        self.assertEqual(len(table), 3)
        self.assertEqual(table.evicted, 1)
        self.assertGreater(table.take("a"), 0)
        self.assertGreater(table.take("c"), 0)
        self.assertEqual(table.take("b"), 0.0)
        self.assertEqual(table.take("b"), 0.0)

    def test_aMillionClients(self):
        """
        A million distinct addresses, a thousand every 50 ms, never hold more
        than C{maxClients} buckets; after C{burst / rate} seconds of quiet
        they are all dropped, and each has a full bucket again.
        """
        table = TokenBucketTable(
            rate=10, burst=20, clock=self.clock, maxClients=100000
        )
        take = table.take
        largest = 0
        for start in range(0, 1000000, 1000):
            for i in range(start, start + 1000):
                take(address(i))
            largest = max(largest, len(table))
            self.clock.advance(0.05)
        self.assertEqual(table.allowed, 1000000)
        # A bucket is full 0.1 s after its one take: only the last three
        # batches are still kept, and the table never held much more.
        self.assertLessEqual(largest, 100000)
        self.assertLessEqual(len(table), 4000)
        self.clock.advance(2)
        take("192.0.2.1")
        take("192.0.2.2")
        self.assertLessEqual(len(table), 4000)
        table.prune()
        self.assertEqual(len(table), 2)
        self.assertEqual(take(address(999999)), 0.0)

    def test_aMillionClientsAtTheCap(self):
        """
        A million distinct addresses that each empty their bucket keep the
        table at C{maxClients}, evicting the least recently used.
        """
        table = TokenBucketTable(rate=1, burst=1, clock=self.clock, maxClients=100000)
        take = table.take
        for start in range(0, 1000000, 10000):
            for i in range(start, start + 10000):
                take(address(i))
            self.assertLessEqual(len(table), 100000)
            self.clock.advance(0.01)
        self.assertEqual(len(table), 100000)
        self.assertEqual(table.evicted, 900000)
        # The newest client is still limited; the oldest starts again full.
        self.assertGreater(take(address(999999)), 0)
        self.assertEqual(take(address(0)), 0.0)
