"""
txlb's built-in load-balancing strategies, as plugins.

Each name imported here is an instance providing both
L{twisted.plugin.IPlugin} and L{txlb.interfaces.IStrategyFactory}, found by
L{txlb.plugin} through C{getPlugins} exactly as a third-party strategy is.
Bind each instance once (getPlugins would report an alias as a second plugin
of the same name) and nothing else that provides C{IPlugin}.
"""

from txlb.strategies.hashing import consistentHashFactory, ipHashingFactory
from txlb.strategies.leastconn import leastConnectionsFactory
from txlb.strategies.maglev import maglevFactory
from txlb.strategies.p2c import powerOfTwoFactory
from txlb.strategies.randomized import randomFactory
from txlb.strategies.roundrobin import roundRobinFactory
from txlb.strategies.weighted import weightedRoundRobinFactory

__all__ = [
    "consistentHashFactory",
    "ipHashingFactory",
    "leastConnectionsFactory",
    "maglevFactory",
    "powerOfTwoFactory",
    "randomFactory",
    "roundRobinFactory",
    "weightedRoundRobinFactory",
]
