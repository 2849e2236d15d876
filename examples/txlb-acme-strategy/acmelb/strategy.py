"""
C{acme_fastest}: send each connection to the backend answering fastest.
"""

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from txlb.interfaces import IStrategy, IStrategyFactory


@implementer(IStrategy)
@attrs.frozen
class Fastest:
    """
    The candidate with the lowest latency, an unmeasured one first; with
    probability C{explore}, a random one, to keep every latency fresh.
    """

    explore: float

    def choose(self, candidates, context):
        """
        Pick a backend; randomness comes from C{context.random} only.
        """
        if context.random.random() < self.explore:
            return context.random.choice(candidates)
        return min(candidates, key=lambda b: -1 if b.latency is None else b.latency)


@implementer(IPlugin, IStrategyFactory)
@attrs.frozen
class FastestFactory:
    """
    Builds L{Fastest}; the plugin is an instance of this, not the class.
    """

    name = "acme_fastest"
    description = "The backend with the lowest latency, exploring now and then."

    def build(self, options):
        """
        @raise ValueError: an unknown option, or a bad C{explore}.
        """
        options = dict(options)
        explore = options.pop("explore", 0.05)
        if options:
            raise ValueError(f"unknown option {min(options)!r}; known: explore")
        if isinstance(explore, bool) or not isinstance(explore, (int, float)):
            raise ValueError(f"option 'explore' must be a number, not {explore!r}")
        if not 0 <= explore <= 1:
            raise ValueError(f"option 'explore' must be from 0 to 1, not {explore}")
        return Fastest(float(explore))
