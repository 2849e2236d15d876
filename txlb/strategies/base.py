"""
What the built-in strategies share: their factory, option checking, hashing.

Each built-in strategy module defines one L{StrategyFactory} instance; the
plugin module C{twisted/plugins/txlb_strategies.py} re-exports them, so the
built-ins are discovered exactly as a third party's strategy is.
"""

from __future__ import annotations

import difflib
import hashlib
from typing import Any, Callable, Mapping, Sequence

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from txlb.interfaces import IBackend, IStrategy, IStrategyFactory

_MASK64 = (1 << 64) - 1


@attrs.frozen
class Option:
    """
    One entry a strategy accepts in its C{algorithm_options} table.

    @ivar name: the snake_case key in lb.toml.
    @ivar argument: the keyword argument of the strategy's constructor that
        receives the checked value.
    @ivar default: the value used when the key is absent.
    @ivar check: takes the configured value and returns the value to use;
        raises C{ValueError} with a reason (completing "must be ...") when
        the value is unacceptable.
    """

    name: str
    argument: str
    default: Any
    check: Callable[[Any], Any]


@implementer(IPlugin, IStrategyFactory)
@attrs.frozen
class StrategyFactory:
    """
    A named, stateless L{IStrategyFactory} for the built-in strategies.

    @ivar name: the algorithm name used in lb.toml.
    @ivar description: one line for --help and the docs.
    @ivar strategyType: called with the checked options as keyword
        arguments, returns a new L{IStrategy}.
    @ivar options: the options the strategy accepts.
    """

    name: str
    description: str
    strategyType: Callable[..., IStrategy]
    options: Sequence[Option] = ()

    def build(self, options: Mapping[str, Any]) -> IStrategy:
        """
        Check C{options} and make a strategy for one pool.

        @param options: the pool's C{algorithm_options} table.
        @return: a new strategy.
        @raise ValueError: an option is unknown or has a bad value; the
            message names the option (and, when unknown, the known ones).
        """
        return self.strategyType(**checkOptions(self.options, options))


def checkOptions(
    accepted: Sequence[Option], options: Mapping[str, Any]
) -> dict[str, Any]:
    """
    Check a C{algorithm_options} table against what a strategy accepts.

    Messages do not repeat the algorithm's name: the configuration loader
    prefixes it, with the file and key.

    @param accepted: the options the strategy accepts.
    @param options: the configured table.
    @return: keyword arguments for the strategy's constructor, defaults
        filled in.
    @raise ValueError: C{options} is not a mapping, has a key not in
        C{accepted}, or a value its option's check rejects.
    """
    if not isinstance(options, Mapping):
        raise ValueError(
            f"algorithm_options must be a table, not {type(options).__name__}"
        )
    byName = {option.name: option for option in accepted}
    for key in options:
        if key not in byName:
            known = ", ".join(sorted(byName)) or "none"
            close = difflib.get_close_matches(str(key), byName, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown option {key!r}{hint}; known options: {known}")
    arguments = {}
    for option in accepted:
        if option.name in options:
            value = options[option.name]
            try:
                arguments[option.argument] = option.check(value)
            except ValueError as e:
                raise ValueError(
                    f"option {option.name!r} must be {e}, not {value!r}"
                ) from None
        else:
            arguments[option.argument] = option.default
    return arguments


def integerAtLeast(minimum: int) -> Callable[[Any], int]:
    """
    An option check accepting an integer no smaller than C{minimum}.

    Booleans are rejected even though Python counts them as integers: C{true}
    in lb.toml is never a count.
    """

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value

    return check


def numberAbove(bound: float) -> Callable[[Any], float]:
    """
    An option check accepting an integer or a float strictly above C{bound}.
    """

    def check(value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not value > bound
        ):
            raise ValueError(f"a number > {bound}")
        return float(value)

    return check


def boolean(value: Any) -> bool:
    """
    An option check accepting only C{true} or C{false}.
    """
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def stableHash(data: bytes, person: bytes = b"") -> int:
    """
    A 64-bit hash of C{data} that is the same in every process and release.

    Python's C{hash()} is salted per process, so two txlb instances (or one
    restarted) would disagree about where a client goes.  BLAKE2b is fast,
    well mixed (similar IP addresses land far apart) and in the standard
    library.

    @param person: a personalization string of at most 16 bytes, to derive
        independent hashes of one input.
    """
    return int.from_bytes(
        hashlib.blake2b(data, digest_size=8, person=person).digest(), "little"
    )


def rehash(value: int) -> int:
    """
    The next value in a deterministic, well-mixed 64-bit sequence.

    One step of SplitMix64: cheap, stable, and (unlike a bare linear
    congruential step, whose value modulo a small number depends on the
    previous one's) as good as a new hash for choosing among a few slots.
    """
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def affinityKey(context: Any, preferHost: bool) -> bytes | None:
    """
    The bytes a hashing strategy places a connection by.

    @param context: the L{txlb.interfaces.IChoiceContext}.
    @param preferHost: use C{clientHost} first and C{hashKey} as the
        fallback (source-IP hashing); otherwise the other way round.
    @return: the key, or C{None} when the context has neither.
    """
    host = context.clientHost
    key = context.hashKey
    if host is not None and (preferHost or key is None):
        return host.encode("utf-8")
    return key


def isCandidate(
    candidates: Sequence[IBackend], position: int, backend: IBackend
) -> bool:
    """
    Whether C{backend}, at C{position} in the pool, is among C{candidates}.

    Candidates keep pool order, so while nothing before C{backend} is
    unusable it sits at the same index in both: checking that first makes the
    usual case one identity test instead of a scan.
    """
    if position < len(candidates) and candidates[position] is backend:
        return True
    for candidate in candidates:
        if candidate is backend:
            return True
    return False


def weightedPick(candidates: Sequence[IBackend], ticket: float) -> IBackend:
    """
    The candidate owning C{ticket} when each holds C{weight} tickets in turn.

    @param ticket: a number in C{[0, sum of weights)} (see L{drawTicket}).
    """
    for candidate in candidates:
        ticket -= candidate.weight
        if ticket < 0:
            return candidate
    return candidates[-1]


def tableWeight(backend: IBackend) -> int:
    """
    The weight a table-driven strategy (a hash ring, a Maglev table) lays
    out for C{backend}: its configured weight, never the ramped one of slow
    start (a table rebuilt mid-ramp would remap keys for nothing).
    """
    configured = getattr(backend, "configuredWeight", None)
    if isinstance(configured, int):
        return configured
    return int(backend.weight)


def drawTicket(random: Any, total: float) -> float:
    """
    A ticket for L{weightedPick} in C{[0, total)}: an integer when the
    weights are (as outside slow start), so that seeded draws are the same
    as always.
    """
    if isinstance(total, int):
        return random.randrange(total)
    return random.random() * total


def totalWeight(candidates: Sequence[IBackend]) -> float:
    """
    The sum of the candidates' weights.
    """
    total = 0
    for candidate in candidates:
        total += candidate.weight
    return total


def walkLimit(backends: Sequence[IBackend], entries: int) -> int:
    """
    How far a table-driven strategy walks looking for a usable backend.

    The entries of a Maglev table or a hash ring after any point belong to
    backends in proportion to weight, so each is usable with probability at
    least C{min(weight) / sum(weights)} while any backend is.  Walking 32
    times the inverse of that fails to find a usable one with probability
    below e**-32; giving up there (and hashing over the candidates instead)
    bounds the cost of a pick even when the candidates are not the backends
    the strategy was told about.

    @param entries: the size of the table or ring: never walk further.
    """
    if not backends:
        return 0
    weights = [tableWeight(backend) for backend in backends]
    return min(entries, 32 * -(-sum(weights) // max(min(weights), 1)))
