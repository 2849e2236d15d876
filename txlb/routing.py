"""
L7 routing: from a request's host, path and headers to a pool name.

A listener's routes are tried in order and the first whose every condition
matches names the pool; when none matches, the listener's default pool is
used.  The conditions:

  - B{host}, compared without letter case, without the port of the Host
    header and without a trailing dot (C{Host: Api.Example.com.:8080}
    matches C{api.example.com}).  C{*.example.com} matches one or more
    labels before C{.example.com} (C{a.example.com}, C{a.b.example.com})
    but not C{example.com} itself, as in nginx, Envoy and TLS certificates;
    write a second route for the bare domain.  C{*} alone means any host.
    IPv6 literals are compared in canonical form, with or without brackets
    in the config (C{::1} and C{[::1]} both match C{Host: [0:0::1]:80}).
    A route host cannot carry a port (it could never match).
  - B{path prefix}, matched on whole segments: C{/v1} matches C{/v1},
    C{/v1/x} and C{/v1?q} but not C{/v10}.  nginx and Envoy's C{prefix}
    compare plain strings, so C{/v1} there also sends C{/v10} and
    C{/v1-internal} to the API pool; segment matching routes what the
    operator meant, and a trailing slash in the config changes nothing
    (C{/v1/} is the same as C{/v1}).  The query string is ignored.  For
    matching only (the request is forwarded as received), the path is
    normalized as RFC 3986 says a backend may: percent-encoded unreserved
    characters are decoded and dot segments removed, so C{/v1/../admin}
    and C{/%76%31/x} are routed where the backend will serve them.  Letter
    case and C{;} parameters are kept: paths are case-sensitive.
  - B{headers}: every named header (name without letter case) must have a
    field line whose value, without surrounding whitespace, equals the
    configured one exactly.

L{Router} compiles the routes once.  Routes with an exact host are indexed
by host, so a request pays for a dict lookup and then only for the routes
that could match its host, still in config order.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import TYPE_CHECKING, Sequence
from urllib.parse import quote

if TYPE_CHECKING:
    from txlb.config import RouteConfig

Headers = Sequence[tuple[bytes, bytes]]

_UNRESERVED = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
)
_HOST_CHARS = set(b"abcdefghijklmnopqrstuvwxyz0123456789-._~")
_badHeaderName = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]").search
_percent = re.compile(rb"%([0-9A-Fa-f]{2})")
# RFC 3986 pchar and "/", and "%" so an already encoded prefix stays as is.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_WS = b" \t"


def _decodeUnreserved(match: re.Match[bytes]) -> bytes:
    byte = int(match.group(1), 16)
    if byte in _UNRESERVED:
        return bytes((byte,))
    return match.group(0).upper()


def _removeDotSegments(path: bytes) -> bytes:
    """
    @return: C{path} (absolute) without C{.} and C{..} segments, as RFC 3986
        section 5.2.4 resolves them.
    """
    kept: list[bytes] = []
    segments = path.split(b"/")[1:]
    for segment in segments:
        if segment == b".":
            continue
        if segment == b"..":
            if kept:
                kept.pop()
            continue
        kept.append(segment)
    if segments[-1] in (b".", b".."):
        kept.append(b"")
    return b"/" + b"/".join(kept)


def normalizePath(target: bytes) -> bytes:
    """
    The path a route's prefix is matched against.

    @param target: an origin-form request target (C{/path?query}).
    @return: the path without its query, percent-encoded unreserved
        characters decoded (other escapes upper-cased), dot segments
        removed.  A target that does not start with C{/} is returned
        without its query only.
    """
    path = target.partition(b"?")[0]
    if not path.startswith(b"/"):
        return path
    if b"%" in path:
        path = _percent.sub(_decodeUnreserved, path)
    if b"/." in path:
        path = _removeDotSegments(path)
    return path


@functools.lru_cache(maxsize=256)
def _canonicalIPv6(literal: bytes) -> bytes | None:
    try:
        return ipaddress.IPv6Address(literal.decode("ascii")).compressed.encode()
    except (ValueError, UnicodeDecodeError):
        return None


def hostKey(host: bytes | None) -> bytes | None:
    """
    The form of a Host value that routes compare.

    @param host: a Host header value, or C{None}.
    @return: C{host} lowercased, without port or trailing dot, an IPv6
        literal in canonical bracketed form; C{None} for C{None}.
    """
    if host is None:
        return None
    host = host.lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        canonical = _canonicalIPv6(host[1:end]) if end > 0 else None
        if canonical is None:
            return host
        return b"[" + canonical + b"]"
    host = host.partition(b":")[0]
    if host.endswith(b"."):
        host = host[:-1]
    return host


def _compileHost(host: str) -> tuple[bytes | None, bytes | None]:
    """
    @return: C{(exact, suffix)}: the host to compare for an exact route, or
        the C{.domain} suffix for a wildcard; both C{None} for any host.
    @raise ValueError: C{host} cannot be matched by any Host header.
    """
    text = host.strip().lower()
    if text == "*":
        return None, None
    wildcard = text.startswith("*.")
    if wildcard:
        text = text[2:]
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text and not wildcard:
        canonical = _canonicalIPv6(text.encode("ascii", "replace"))
        if canonical is None:
            raise ValueError(
                f"route host {host!r}: not a host name or IPv6 address"
                " (a route host has no port)"
            )
        return b"[" + canonical + b"]", None
    try:
        encoded = text.encode("idna") if not text.isascii() else text.encode()
    except UnicodeError:
        raise ValueError(f"route host {host!r}: not a valid host name")
    encoded = encoded.removesuffix(b".")
    if not encoded or not set(encoded) <= _HOST_CHARS or b".." in encoded:
        raise ValueError(f"route host {host!r}: not a valid host name")
    if encoded.startswith(b"."):
        raise ValueError(f"route host {host!r}: not a valid host name")
    if wildcard:
        return None, b"." + encoded
    return encoded, None


def _compilePrefix(prefix: str) -> bytes | None:
    """
    @return: the normalized prefix without trailing slashes, or C{None}
        when it matches every path.
    @raise ValueError: it does not start with C{/}, or holds C{?} or C{#}.
    """
    if not prefix.startswith("/") or "?" in prefix or "#" in prefix:
        raise ValueError(f"path prefix {prefix!r}: must be a path starting with /")
    compiled = normalizePath(quote(prefix, safe=_PATH_SAFE).encode("ascii"))
    return compiled.rstrip(b"/") or None


class _Route:
    """
    One compiled route.

    @ivar suffix: the wildcard C{.domain} the host must end with, or C{None}.
    @ivar prefix: the path prefix, or C{None}.
    @ivar headers: C{(lowercase name, value)} conditions.
    """

    __slots__ = ("pool", "exact", "suffix", "prefix", "headers")

    def __init__(
        self,
        pool: str,
        exact: bytes | None,
        suffix: bytes | None,
        prefix: bytes | None,
        headers: tuple[tuple[bytes, bytes], ...],
    ) -> None:
        self.pool = pool
        self.exact = exact
        self.suffix = suffix
        self.prefix = prefix
        self.headers = headers

    def forHost(self) -> _Route:
        """
        @return: this route with its host condition dropped, for a list only
            consulted for hosts that satisfy it.
        """
        return _Route(self.pool, None, None, self.prefix, self.headers)

    def wildcardMatches(self, host: bytes) -> bool:
        """
        @return: C{host} ends with this route's suffix after at least one
            more character.
        """
        suffix = self.suffix
        assert suffix is not None
        return len(host) > len(suffix) and host.endswith(suffix)


def _compileRoute(route: RouteConfig) -> _Route:
    exact = suffix = None
    if route.host is not None:
        exact, suffix = _compileHost(route.host)
    prefix = None if route.pathPrefix is None else _compilePrefix(route.pathPrefix)
    conditions = []
    for name, value in route.headers:
        encoded = name.strip().lower().encode("ascii", "replace")
        if not encoded or _badHeaderName(encoded):
            raise ValueError(f"header condition {name!r}: not a header name")
        conditions.append((encoded, value.strip(" \t").encode("utf-8")))
    return _Route(route.pool, exact, suffix, prefix, tuple(conditions))


class Router:
    """
    Chooses a pool for each request of one listener.

    @ivar defaultPool: the pool used when no route matches.
    """

    def __init__(self, routes: Sequence[RouteConfig], defaultPool: str) -> None:
        """
        @param routes: the listener's routes, first match wins.
        @param defaultPool: the pool when none matches.
        @raise ValueError: a route has a host, path prefix or header name no
            request could match.
        """
        self.defaultPool = defaultPool
        compiled = [_compileRoute(route) for route in routes]
        # No routes: every request goes to the default pool, unexamined.
        self._trivial = not compiled
        self._headerNames = frozenset(
            name for route in compiled for name, _ in route.headers
        )
        # For a host no exact route names: routes without a host condition
        # and wildcards (checked per request), in order.
        self._anyHost = tuple(route for route in compiled if route.exact is None)
        # No Host at all: only the routes without a host condition.
        self._noHost = tuple(
            route for route in compiled if route.exact is None and route.suffix is None
        )
        # For each host an exact route names: every route that matches that
        # host, in order, with the host condition already settled.
        self._byHost: dict[bytes, tuple[_Route, ...]] = {}
        for host in {route.exact for route in compiled if route.exact is not None}:
            self._byHost[host] = tuple(
                route.forHost()
                for route in compiled
                if route.exact == host
                or (route.exact is None and route.suffix is None)
                or (route.suffix is not None and route.wildcardMatches(host))
            )

    def route(self, host: bytes | None, path: bytes, headers: Headers) -> str:
        """
        @param host: the request's Host value as received (with any port),
            or C{None} when it had none.
        @param path: the origin-form request target, query included.
        @param headers: the request's header lines as received.
        @return: the pool of the first route that matches, else
            L{defaultPool}.
        """
        if self._trivial:
            return self.defaultPool
        key = hostKey(host)
        if key is None:
            candidates = self._noHost
        else:
            candidates = self._byHost.get(key, self._anyHost)
        normalized: bytes | None = None
        values: dict[bytes, list[bytes]] | None = None
        for route in candidates:
            if route.suffix is not None and not (
                key is not None and route.wildcardMatches(key)
            ):
                continue
            prefix = route.prefix
            if prefix is not None:
                if normalized is None:
                    normalized = normalizePath(path)
                if not normalized.startswith(prefix) or (
                    len(normalized) > len(prefix) and normalized[len(prefix)] != 0x2F
                ):
                    continue
            if route.headers:
                if values is None:
                    values = self._headerValues(headers)
                if not all(
                    value in values.get(name, ()) for name, value in route.headers
                ):
                    continue
            return route.pool
        return self.defaultPool

    def _headerValues(self, headers: Headers) -> dict[bytes, list[bytes]]:
        """
        @return: the values of the headers some route looks at, by lowercase
            name, surrounding whitespace removed.
        """
        wanted = self._headerNames
        found: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            lowered = name.lower()
            if lowered in wanted:
                found.setdefault(lowered, []).append(value.strip(_WS))
        return found
