"""
Strategy discovery by name through L{twisted.plugin.getPlugins}.

Built-in strategies are found exactly as a third party's are: module-level
instances in C{twisted/plugins/*.py} that provide both
L{twisted.plugin.IPlugin} and L{IStrategyFactory}.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Mapping

from twisted.plugin import IPlugin, getPlugins

from txlb.interfaces import IStrategyFactory


class StrategyLookupError(ValueError):
    """
    An algorithm name is unknown, or claimed by several plugins.
    """


def normalizeName(name: str) -> str:
    """
    The form names are compared in: lower case, without C{_} or C{-}.

    >>> normalizeName("Round_Robin") == normalizeName("roundrobin")
    True
    """
    return name.lower().replace("_", "").replace("-", "")


def _describe(factory: object) -> str:
    cls = type(factory)
    return f"{cls.__module__}.{cls.__qualname__}"


def strategyRegistry(
    factories: Iterable[IStrategyFactory] | None = None,
) -> Mapping[str, IStrategyFactory]:
    """
    Map each normalized name to its factory.

    @param factories: the factories to index; by default every installed
        plugin that provides both C{IPlugin} and L{IStrategyFactory}.
    @raise StrategyLookupError: two plugins claim one name.
    """
    if factories is None:
        import twisted.plugins

        factories = getPlugins(IStrategyFactory, twisted.plugins)
    registry: dict[str, IStrategyFactory] = {}
    for factory in factories:
        if not (IPlugin.providedBy(factory) and IStrategyFactory.providedBy(factory)):
            continue
        key = normalizeName(factory.name)
        if registry.get(key) is factory:
            # One module reached through two entries of twisted.plugins.__path__.
            continue
        if key in registry:
            raise StrategyLookupError(
                f"two strategy plugins claim the name {factory.name!r}: "
                f"{_describe(registry[key])} and {_describe(factory)}"
            )
        registry[key] = factory
    return registry


def knownNames(registry: Mapping[str, IStrategyFactory]) -> list[str]:
    """
    The declared names of the factories in C{registry}, sorted.
    """
    return sorted(f.name for f in registry.values())


def findStrategy(
    name: str, registry: Mapping[str, IStrategyFactory] | None = None
) -> IStrategyFactory:
    """
    The factory called C{name} (compared with L{normalizeName}).

    @raise StrategyLookupError: no such strategy; the message lists the
        installed ones.
    """
    if registry is None:
        registry = strategyRegistry()
    key = normalizeName(name)
    try:
        return registry[key]
    except KeyError:
        close = difflib.get_close_matches(key, list(registry), n=1)
        hint = f" (did you mean {registry[close[0]].name!r}?)" if close else ""
        raise StrategyLookupError(
            f"unknown algorithm {name!r}{hint}; installed: "
            f"{', '.join(knownNames(registry))}"
        ) from None
