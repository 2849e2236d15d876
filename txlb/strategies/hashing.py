"""
Affinity by hashing: C{ip_hashing} (source IP) and C{consistent_hash} (a ring).

Both hash with L{stableHash}, so every txlb process, restarted or not, sends
a given key to the same backend.  Both learn the pool from
C{membershipChanged} and keep their table across health changes: a key whose
backend is unusable goes elsewhere only while it is unusable, and keys whose
backend is fine do not move at all.
"""

from __future__ import annotations

import bisect
import math
from typing import Sequence

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
    drawTicket,
    integerAtLeast,
    isCandidate,
    numberAbove,
    rehash,
    stableHash,
    tableWeight,
    totalWeight,
    walkLimit,
    weightedPick,
)

# How many times ip_hashing re-probes the pool for a usable backend before
# falling back to hashing over the candidates (nginx's ip_hash tries 20).
_PROBES = 20


@implementer(IStrategy, IMembershipAware, IChoiceExplainer)
class SourceIPHash:
    """
    The same client address goes to the same backend while the pool's
    membership stays the same.

    The key is the client's IP address (C{context.clientHost}), or the
    context's C{hashKey} for a client without one (a UNIX socket).  The key's
    hash picks one of C{sum(weights)} slots over the whole pool, usable or
    not, each backend holding C{weight} slots.

    When the backend so chosen is not usable, the hash is stepped
    (L{rehash}) and the pool probed again, up to 20 times, then the key is
    hashed over the candidates alone.  Either way the choice depends only on
    the key and on which backends are usable, so the clients of an unusable
    backend are spread over the others (and come back when it does) while
    every other client stays where it was.

    Adding or removing a backend moves most clients (the slot count
    changes); use C{consistent_hash} or C{maglev} where that matters.  A
    context with neither a client address nor a key gets a weighted random
    backend.
    """

    def __init__(self) -> None:
        self._members: tuple[IBackend, ...] = ()
        # _bounds[i] is the first slot after member i's slots.
        self._bounds: list[int] = []
        self._slots = 0

    def membershipChanged(self, backends: Sequence[IBackend]) -> None:
        """
        Lay out the pool's slots, C{weight} for each backend.
        """
        bounds = []
        slots = 0
        for backend in backends:
            slots += tableWeight(backend)
            bounds.append(slots)
        self._members = tuple(backends)
        self._bounds = bounds
        self._slots = slots

    def choose(
        self, candidates: Sequence[IBackend], context: IChoiceContext
    ) -> IBackend:
        """
        The key's backend, or where its clients go while it is unusable.
        """
        key = affinityKey(context, preferHost=True)
        if key is None:
            return weightedPick(
                candidates, drawTicket(context.random, totalWeight(candidates))
            )
        value = stableHash(key)
        if self._slots:
            members = self._members
            bounds = self._bounds
            for _ in range(_PROBES):
                position = bisect.bisect_right(bounds, value % self._slots)
                backend = members[position]
                if isCandidate(candidates, position, backend):
                    return backend
                value = rehash(value)
        return weightedPick(candidates, value % totalWeight(candidates))

    def explain(
        self,
        chosen: IBackend,
        candidates: Sequence[IBackend],
        context: IChoiceContext,
    ) -> str:
        """
        Whether the key's own slot is C{chosen}'s.
        """
        key = affinityKey(context, preferHost=True)
        if key is None:
            return "no client address or key: weighted random draw"
        if not self._slots:
            return "key hashed over the candidates"
        position = bisect.bisect_right(self._bounds, stableHash(key) % self._slots)
        return _owned("slot", self._members[position], chosen)


def _owned(where: str, owner: IBackend, chosen: IBackend) -> str:
    """
    The reason of a table-driven pick whose key's C{where} (slot, ring point,
    table entry) belongs to C{owner}.
    """
    if owner is chosen:
        return f"key hash owns this server's {where}"
    return f"key's {where} belongs to {owner.name}, passed over (unusable or full)"


def _buildRing(
    backends: Sequence[IBackend], virtualNodes: int
) -> tuple[list[int], list[int]]:
    """
    The points of a hash ring and, for each, the index of its backend.

    @param virtualNodes: points per unit of weight, after dividing every
        weight by their greatest common divisor (weights 200:100 get as many
        points as 2:1).
    """
    unit = 0
    for backend in backends:
        unit = math.gcd(unit, tableWeight(backend))
    placed = []
    for index, backend in enumerate(backends):
        name = backend.name.encode("utf-8")
        for replica in range(virtualNodes * tableWeight(backend) // unit):
            point = stableHash(b"%s#%d" % (name, replica), b"txlb-ring")
            # Ties (vanishingly rare) are broken by name, never by order.
            placed.append((point, name, index))
    placed.sort()
    return [p[0] for p in placed], [p[2] for p in placed]


@implementer(IStrategy, IMembershipAware, IChoiceExplainer)
class ConsistentHash:
    """
    A hash ring with virtual nodes: a key goes to the first backend at or
    after the key's hash, walking clockwise.

    Each backend has C{virtualNodes} points per unit of weight, so its share
    of keys follows its weight, and removing one of N backends moves only
    the keys that were on it (about 1/N of them).  The ring is built in
    C{membershipChanged}, never on a pick; a pick walks on from the key's
    point to the first usable backend, so the keys of an unusable backend
    are spread over its ring successors and no other key moves.

    The key is the context's C{hashKey} (a header, cookie or path chosen by
    the pool) or else the client's IP address; with neither, the pick starts
    from a random point (a weighted random backend).

    With C{boundedLoad} set to a factor C{c} > 1 (consistent hashing with
    bounded loads, Mirrokni et al. 2016), a backend already holding at
    least C{ceil(c * (total + 1) * weight / totalWeight)} connections, where
    C{total} counts every candidate's C{activeConnections}, is passed over
    for the next one on the ring: no backend gets more than C{c} times its
    fair share, at the cost of some affinity under skewed load.  Since the
    capacities add up to at least C{total + 1}, some candidate always has
    room.

    @ivar virtualNodes: ring points per unit of weight.
    @ivar boundedLoad: the load bound factor, or C{None} for none.
    """

    def __init__(self, virtualNodes: int = 160, boundedLoad: float | None = None):
        self.virtualNodes = virtualNodes
        self.boundedLoad = boundedLoad
        self._members: tuple[IBackend, ...] = ()
        self._points: list[int] = []
        self._owners: list[int] = []
        self._walkLimit = 0

    def membershipChanged(self, backends: Sequence[IBackend]) -> None:
        """
        Build the ring for C{backends}, weighted as they are now.
        """
        self._members = tuple(backends)
        self._points, self._owners = _buildRing(backends, self.virtualNodes)
        self._walkLimit = walkLimit(backends, len(self._points))

    def choose(
        self, candidates: Sequence[IBackend], context: IChoiceContext
    ) -> IBackend:
        """
        The first usable backend clockwise from the key's point.
        """
        key = affinityKey(context, preferHost=False)
        if key is None:
            value = context.random.getrandbits(64)
        else:
            value = stableHash(key)
        points = self._points
        if not points:
            return weightedPick(candidates, value % totalWeight(candidates))
        bound = self.boundedLoad
        if bound is not None:
            total = 0
            for candidate in candidates:
                total += candidate.activeConnections
            # Capacity per unit of weight; a backend is full when
            # activeConnections >= ceil(perWeight * weight).
            perWeight = bound * (total + 1) / totalWeight(candidates)
        members = self._members
        owners = self._owners
        count = len(points)
        start = bisect.bisect_left(points, value)
        for step in range(self._walkLimit):
            index = start + step
            if index >= count:
                index -= count
            position = owners[index]
            backend = members[position]
            if isCandidate(candidates, position, backend):
                if bound is None or backend.activeConnections < math.ceil(
                    perWeight * backend.weight
                ):
                    return backend
        # Reached (with odds below e**-32) when candidates are not members of
        # the pool this strategy was told about: hash over the candidates.
        return weightedPick(candidates, value % totalWeight(candidates))

    def explain(
        self,
        chosen: IBackend,
        candidates: Sequence[IBackend],
        context: IChoiceContext,
    ) -> str:
        """
        Whether the key's ring point is C{chosen}'s.
        """
        key = affinityKey(context, preferHost=False)
        if key is None:
            return "no key: random ring point"
        points = self._points
        if not points:
            return "key hashed over the candidates"
        index = bisect.bisect_left(points, stableHash(key))
        owner = self._members[self._owners[index % len(points)]]
        return _owned("ring point", owner, chosen)


ipHashingFactory = StrategyFactory(
    name="ip_hashing",
    description=(
        "The same client IP goes to the same backend while the pool's "
        "membership is unchanged."
    ),
    strategyType=SourceIPHash,
)

consistentHashFactory = StrategyFactory(
    name="consistent_hash",
    description=(
        "Hash ring with virtual nodes keyed by the pool's affinity key or "
        "client IP; adding or removing a backend moves about 1/N of keys."
    ),
    strategyType=ConsistentHash,
    options=(
        Option("virtual_nodes", "virtualNodes", 160, integerAtLeast(1)),
        Option("bounded_load", "boundedLoad", None, numberAbove(1.0)),
    ),
)
