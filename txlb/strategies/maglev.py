"""
C{maglev}: Google's Maglev consistent hashing (Eisenbud et al., NSDI 2016).
"""

from __future__ import annotations

from typing import Any, Sequence

from zope.interface import implementer

from txlb.interfaces import (
    IBackend,
    IChoiceContext,
    IChoiceExplainer,
    IMembershipAware,
    IStrategy,
)
from txlb.strategies.base import (
    Option,
    StrategyFactory,
    affinityKey,
    isCandidate,
    stableHash,
    tableWeight,
    totalWeight,
    walkLimit,
    weightedPick,
)

# A rebuild of the largest table takes about a second for 100 backends, and
# a rebuild blocks the reactor; a larger size is more likely a typo than a
# need (Google's own example uses 65537 entries).
MAXIMUM_TABLE_SIZE = 1_000_003


def isPrime(number: int) -> bool:
    """
    Whether C{number} is prime, by trial division (table sizes are small).
    """
    if number < 2:
        return False
    if number % 2 == 0:
        return number == 2
    divisor = 3
    while divisor * divisor <= number:
        if number % divisor == 0:
            return False
        divisor += 2
    return True


def _tableSize(value: Any) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 3 <= value <= MAXIMUM_TABLE_SIZE
        or not isPrime(value)
    ):
        raise ValueError(f"a prime number from 3 to {MAXIMUM_TABLE_SIZE}")
    return value


def populate(backends: Sequence[IBackend], size: int) -> list[int]:
    """
    Fill a Maglev lookup table.

    Each backend has a preference list of all C{size} slots, the permutation
    C{(offset + j * skip) % size} with C{offset} and C{skip} from two
    independent stable hashes of its name (C{size} is prime, so every
    C{skip} visits every slot).  Backends take turns claiming their next
    preferred free slot until the table is full.  For weights, a backend
    takes a turn in round C{r} only while it holds fewer than
    C{r * weight / max(weights)} slots, so slots are shared in proportion to
    weight.

    @param backends: the pool's backends; their names must be unique.
    @param size: the table size, a prime larger than C{len(backends)}.
    @return: for each slot, the index in C{backends} of its owner; empty when
        C{backends} is.
    """
    count = len(backends)
    if not count:
        return []
    slots = []
    skips = []
    weights = []
    for backend in backends:
        name = backend.name.encode("utf-8")
        slots.append(stableHash(name, b"txlb-maglev-off") % size)
        skips.append(stableHash(name, b"txlb-maglev-skp") % (size - 1) + 1)
        weights.append(tableWeight(backend))
    top = max(weights)
    held = [0] * count
    table = [-1] * size
    filled = 0
    turn = 0
    while True:
        turn += 1
        for index in range(count):
            if held[index] * top >= turn * weights[index]:
                continue
            slot = slots[index]
            skip = skips[index]
            while table[slot] >= 0:
                slot += skip
                if slot >= size:
                    slot -= size
            table[slot] = index
            held[index] += 1
            # Resume after this slot next turn; it is taken now.
            slot += skip
            if slot >= size:
                slot -= size
            slots[index] = slot
            filled += 1
            if filled == size:
                return table


@implementer(IStrategy, IMembershipAware, IChoiceExplainer)
class Maglev:
    """
    Look the key's hash up in a Maglev table of C{tableSize} entries.

    Maglev spreads keys more evenly than a ring of the same memory, and a
    membership change moves slightly more than the 1/N of keys a ring moves
    (some keys of the backends that stay move too).  The table is built in
    C{membershipChanged} only; a pick is a hash and an index.  When the
    entry's backend is unusable the pick walks on to the next entries until
    one's backend is usable: those keys spread over the other backends in
    proportion to their weights, and no other key moves.

    The key is the context's C{hashKey}, else the client's IP address; with
    neither, a random entry is used (a weighted random backend).

    @ivar tableSize: the number of table entries, a prime; keep it above 100
        times the number of backends so that shares stay within about 1% of
        the weights.
    """

    def __init__(self, tableSize: int = 65537) -> None:
        self.tableSize = tableSize
        self._members: tuple[IBackend, ...] = ()
        self._table: list[int] = []
        self._walkLimit = 0

    def membershipChanged(self, backends: Sequence[IBackend]) -> None:
        """
        Rebuild the lookup table for C{backends}.
        """
        self._members = tuple(backends)
        self._table = populate(backends, self.tableSize)
        self._walkLimit = walkLimit(backends, len(self._table))

    def choose(
        self, candidates: Sequence[IBackend], context: IChoiceContext
    ) -> IBackend:
        """
        The key's table entry's backend, or the next usable one.
        """
        key = affinityKey(context, preferHost=False)
        if key is None:
            value = context.random.getrandbits(64)
        else:
            value = stableHash(key)
        table = self._table
        if table:
            members = self._members
            size = len(table)
            slot = value % size
            for _ in range(self._walkLimit):
                position = table[slot]
                backend = members[position]
                if isCandidate(candidates, position, backend):
                    return backend
                slot += 1
                if slot == size:
                    slot = 0
        # No table yet, or (with odds below e**-32) candidates from outside
        # the pool it was told of: hash over the candidates.
        return weightedPick(candidates, value % totalWeight(candidates))

    def explain(
        self,
        chosen: IBackend,
        candidates: Sequence[IBackend],
        context: IChoiceContext,
    ) -> str:
        """
        Whether the key's Maglev table entry is C{chosen}'s.
        """
        key = affinityKey(context, preferHost=False)
        if key is None:
            return "no key: random Maglev table entry"
        table = self._table
        if not table:
            return "key hashed over the candidates"
        owner = self._members[table[stableHash(key) % len(table)]]
        if owner is chosen:
            return "Maglev table entry of the key's hash"
        return (
            f"key's Maglev table entry belongs to {owner.name}, passed over "
            "(unusable or full)"
        )


maglevFactory = StrategyFactory(
    name="maglev",
    description=(
        "Maglev lookup-table consistent hashing keyed by the pool's affinity "
        "key or client IP; weighted, with near-perfect balance."
    ),
    strategyType=Maglev,
    options=(Option("table_size", "tableSize", 65537, _tableSize),),
)
