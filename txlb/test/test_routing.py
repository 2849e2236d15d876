"""
Tests for L{txlb.routing}: which pool each request goes to, as tables, and
which routes are refused when the router is built.

A table test runs all its cases and reports every case that failed at once,
each by its label.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.trial.unittest import SynchronousTestCase

from txlb.config import RouteConfig
from txlb.routing import Router, hostKey, normalizePath

Pairs = list[tuple[bytes, bytes]]


def _mismatches(
    cases: Iterable[tuple[Any, ...]], compute: Callable[..., Any]
) -> list[tuple[str, Any, Any]]:
    """
    @param cases: C{(label, expected, *arguments)} rows.
    @param compute: called with a row's arguments.
    @return: C{(label, expected, got)} for every row whose result differs.
    """
    found = []
    for label, expected, *arguments in cases:
        got = compute(*arguments)
        if got != expected:
            found.append((label, expected, got))
    return found


ROUTES = [
    RouteConfig("api-v1", host="api.example.com", pathPrefix="/v1"),
    RouteConfig("api", host="API.example.com"),
    RouteConfig("beta", headers=(("x-env", "beta"),)),
    RouteConfig("wild", host="*.example.com"),
    RouteConfig("static", pathPrefix="/static/"),
    RouteConfig("local6", host="[::1]"),
    RouteConfig("local6-bare", host="::2"),
    RouteConfig(
        "canary",
        host="shop.example.org",
        headers=(("x-canary", "1"), ("x-user", "ann")),
    ),
    RouteConfig("apex", host="example.org."),
]

BETA = [(b"X-Env", b"beta")]

# (label, pool, host, path, headers)
ROUTED: list[tuple[str, str, bytes | None, bytes, Pairs]] = [
    ("exact host and prefix", "api-v1", b"api.example.com", b"/v1/users", []),
    ("the prefix itself", "api-v1", b"api.example.com", b"/v1", []),
    ("the prefix with a slash", "api-v1", b"api.example.com", b"/v1/", []),
    ("the prefix with a query", "api-v1", b"api.example.com", b"/v1?q=1", []),
    ("a query holding a slash", "api", b"api.example.com", b"/v10?x=/v1", []),
    ("not a whole segment", "api", b"api.example.com", b"/v10", []),
    ("a longer segment", "api", b"api.example.com", b"/v1x/y", []),
    ("paths are case-sensitive", "api", b"api.example.com", b"/V1", []),
    ("host case and port", "api-v1", b"Api.Example.COM:8080", b"/v1", []),
    ("host trailing dot", "api-v1", b"api.example.com.", b"/v1", []),
    ("host trailing dot and port", "api", b"api.example.com.:80", b"/", []),
    ("first match wins over a header route", "api", b"api.example.com", b"/", BETA),
    ("header route before a wildcard", "beta", b"x.example.com", b"/", BETA),
    ("header name without case", "beta", b"other.net", b"/", [(b"x-ENV", b"beta")]),
    ("header value exact", "web", b"other.net", b"/", [(b"X-Env", b"Beta")]),
    ("header value trailing space", "beta", b"other.net", b"/", [(b"X-Env", b"beta ")]),
    ("header value prefix only", "web", b"other.net", b"/", [(b"X-Env", b"betamax")]),
    ("wildcard, one label", "wild", b"x.example.com", b"/", []),
    ("wildcard, two labels", "wild", b"a.b.example.com", b"/", []),
    ("wildcard with port and case", "wild", b"X.Example.Com:443", b"/", []),
    ("wildcard not the apex", "web", b"example.com", b"/", []),
    ("wildcard suffix on a label boundary", "web", b"badexample.com", b"/", []),
    ("wildcard needs a label", "web", b".example.com", b"/", []),
    ("wildcard beats a later path route", "wild", b"x.example.com", b"/static/a", []),
    ("path route on any host", "static", b"other.net", b"/static/app.js", []),
    ("configured trailing slash ignored", "static", b"other.net", b"/static", []),
    ("path route segment boundary", "web", b"other.net", b"/staticfiles", []),
    ("exact host before a path route", "api", b"api.example.com", b"/static/a", []),
    ("IPv6 literal with port", "local6", b"[::1]:80", b"/", []),
    ("IPv6 literal without port", "local6", b"[::1]", b"/", []),
    ("IPv6 literal not canonical", "local6", b"[0:0::1]:8080", b"/", []),
    ("IPv6 route written bare", "local6-bare", b"[::2]", b"/", []),
    ("IPv6 literal unrouted", "web", b"[::3]:80", b"/", []),
    ("IPv6 literal unclosed", "web", b"[::1", b"/", []),
    ("IPv4 host", "web", b"127.0.0.1:80", b"/", []),
    (
        "all header conditions",
        "canary",
        b"shop.example.org",
        b"/",
        [(b"X-Canary", b"1"), (b"X-User", b"ann")],
    ),
    (
        "one of two header conditions",
        "web",
        b"shop.example.org",
        b"/",
        [(b"X-Canary", b"1")],
    ),
    (
        "one of several field lines matches",
        "canary",
        b"shop.example.org",
        b"/",
        [(b"X-User", b"ann"), (b"X-Canary", b"1"), (b"x-user", b"bob")],
    ),
    ("route host with trailing dot", "apex", b"example.org", b"/", []),
    ("no Host: hostless routes only", "beta", None, b"/", BETA),
    ("no Host: path route", "static", None, b"/static/x", []),
    ("no Host: default", "web", None, b"/v1", []),
    ("empty Host: default", "web", b"", b"/", []),
    ("dot segments resolved", "api", b"api.example.com", b"/v1/../admin", []),
    ("dot segments inside the prefix", "api-v1", b"api.example.com", b"/v1/./x", []),
    ("escaped unreserved decoded", "api-v1", b"api.example.com", b"/%76%31/x", []),
    ("escaped dot segments", "api", b"api.example.com", b"/v1/%2e%2E/x", []),
    ("escaped slash stays escaped", "api", b"api.example.com", b"/v1%2Fx", []),
    ("no match", "web", b"other.net", b"/", []),
]


class RouterTests(SynchronousTestCase):
    """
    Tests for L{Router.route}.
    """

    def test_routes(self) -> None:
        """
        Each request goes to the pool of the first route whose every
        condition holds, else to the default pool.
        """
        router = Router(ROUTES, "web")
        self.assertEqual([], _mismatches(ROUTED, router.route))

    def test_noRoutes(self) -> None:
        """
        Without routes every request goes to the default pool.
        """
        router = Router([], "web")
        self.assertEqual(
            ["web", "web", "web"],
            [
                router.route(b"api.example.com", b"/v1", BETA),
                router.route(None, b"/", []),
                router.route(b"[::1]", b"/x", []),
            ],
        )

    def test_orderAcrossHostKinds(self) -> None:
        """
        Indexing exact hosts does not reorder routes: a wildcard or hostless
        route listed before an exact one still wins for that host.
        """
        router = Router(
            [
                RouteConfig("first", pathPrefix="/a"),
                RouteConfig("wild", host="*.example.com", pathPrefix="/b"),
                RouteConfig("exact", host="h.example.com"),
                RouteConfig("later", host="*.example.com"),
            ],
            "web",
        )
        cases = [
            ("hostless first", "first", b"h.example.com", b"/a", []),
            ("wildcard next", "wild", b"h.example.com", b"/b", []),
            ("then the exact host", "exact", b"h.example.com", b"/c", []),
            ("other host, wildcard", "later", b"g.example.com", b"/c", []),
            ("other host, path", "first", b"g.example.com", b"/a", []),
        ]
        self.assertEqual([], _mismatches(cases, router.route))

    def test_anyHost(self) -> None:
        """
        C{host = "*"} is the same as no host condition, and matches a request
        without a Host too.
        """
        router = Router([RouteConfig("any", host="*", pathPrefix="/x")], "web")
        self.assertEqual(
            ["any", "any", "web"],
            [
                router.route(b"a.b", b"/x/y", []),
                router.route(None, b"/x", []),
                router.route(b"a.b", b"/y", []),
            ],
        )

    def test_rootPrefix(self) -> None:
        """
        A prefix of C{/} matches every path.
        """
        router = Router([RouteConfig("all", pathPrefix="/")], "web")
        self.assertEqual(
            ["all", "all"],
            [router.route(b"a", b"/", []), router.route(b"a", b"/x?y", [])],
        )

    def test_internationalHost(self) -> None:
        """
        A host name written in Unicode matches its IDNA (punycode) form, as
        clients send it.
        """
        router = Router([RouteConfig("books", host="Bücher.example")], "web")
        self.assertEqual("books", router.route(b"xn--bcher-kva.example", b"/", []))

    def test_encodedPrefix(self) -> None:
        """
        A prefix is matched in the encoded form requests carry it in:
        non-ASCII as UTF-8 escapes, unreserved escapes decoded.
        """
        router = Router(
            [
                RouteConfig("cafe", pathPrefix="/café"),
                RouteConfig("tilde", pathPrefix="/%7Euser"),
            ],
            "web",
        )
        cases = [
            ("UTF-8 escapes", "cafe", b"h", b"/caf%C3%A9/menu", []),
            ("lowercase escapes", "cafe", b"h", b"/caf%c3%a9", []),
            ("decoded tilde", "tilde", b"h", b"/~user/x", []),
            ("escaped tilde", "tilde", b"h", b"/%7euser", []),
        ]
        self.assertEqual([], _mismatches(cases, router.route))

    def test_emptyHeaderValue(self) -> None:
        """
        A header condition with an empty value needs the header present and
        empty.
        """
        router = Router([RouteConfig("e", headers=(("x-flag", ""),))], "web")
        self.assertEqual(
            ["e", "web"],
            [
                router.route(b"h", b"/", [(b"X-Flag", b"")]),
                router.route(b"h", b"/", []),
            ],
        )

    def test_conditionValueTrimmed(self) -> None:
        """
        Whitespace around a configured header value is not part of it, as it
        is not part of a received one.
        """
        router = Router([RouteConfig("t", headers=(("x-tier", " gold\t"),))], "web")
        self.assertEqual(
            ["t", "web"],
            [
                router.route(b"h", b"/", [(b"X-Tier", b"gold")]),
                router.route(b"h", b"/", [(b"X-Tier", b"gol")]),
            ],
        )

    def test_defaultPool(self) -> None:
        """
        The default pool is kept as given.
        """
        self.assertEqual("web", Router(ROUTES, "web").defaultPool)


class RouterConstructionTests(SynchronousTestCase):
    """
    Tests for the routes L{Router} refuses when it is built.
    """

    def test_refused(self) -> None:
        """
        A route no request could match raises C{ValueError}, naming what is
        wrong.
        """
        bad = [
            RouteConfig("p", host="api.example.com:8080"),
            RouteConfig("p", host="a*.example.com"),
            RouteConfig("p", host="api.*"),
            RouteConfig("p", host="*."),
            RouteConfig("p", host="*example.com"),
            RouteConfig("p", host="bad host"),
            RouteConfig("p", host=""),
            RouteConfig("p", host="a..b"),
            RouteConfig("p", host=".a"),
            RouteConfig("p", host="[zz::1]"),
            RouteConfig("p", pathPrefix="v1"),
            RouteConfig("p", pathPrefix="/v1?x"),
            RouteConfig("p", pathPrefix="/v1#x"),
            RouteConfig("p", headers=(("bad name", "1"),)),
            RouteConfig("p", headers=(("", "1"),)),
        ]
        accepted = []
        for route in bad:
            try:
                Router([route], "web")
            except ValueError:
                pass
            else:
                accepted.append(route)
        self.assertEqual([], accepted)


class NormalizationTests(SynchronousTestCase):
    """
    Tests for L{normalizePath} and L{hostKey}.
    """

    def test_normalizePath(self) -> None:
        """
        The matched path drops the query, decodes unreserved escapes,
        upper-cases the others and resolves dot segments.
        """
        cases = [
            ("plain", b"/a/b", b"/a/b"),
            ("query dropped", b"/a", b"/a?b=/c"),
            ("root", b"/", b"/"),
            ("dot", b"/a/b", b"/a/./b"),
            ("dot dot", b"/b", b"/a/../b"),
            ("above the root", b"/b", b"/../../b"),
            ("trailing dot", b"/a/", b"/a/."),
            ("trailing dot dot", b"/", b"/a/.."),
            ("dot file kept", b"/.well-known/x", b"/.well-known/x"),
            ("dots in a name kept", b"/a../b", b"/a../b"),
            ("unreserved decoded", b"/~a-b_c.d", b"/%7Ea%2Db%5Fc%2Ed"),
            ("reserved upper-cased", b"/a%2Fb%3F", b"/a%2fb%3f"),
            ("escaped dot segment", b"/b", b"/a/%2E%2E/b"),
            ("bad escape kept", b"/a%zz", b"/a%zz"),
            ("asterisk form", b"*", b"*"),
            ("empty", b"", b""),
        ]
        self.assertEqual([], _mismatches(cases, normalizePath))

    def test_hostKey(self) -> None:
        """
        The compared host is lowercase, without port or trailing dot, and
        IPv6 literals are canonical.
        """
        cases = [
            ("none", None, None),
            ("case", b"api.example.com", b"API.Example.com"),
            ("port", b"a.b", b"a.b:8080"),
            ("trailing dot", b"a.b", b"a.b."),
            ("IPv6", b"[::1]", b"[0:0:0::1]:80"),
            ("IPv6 upper case", b"[fe80::a]", b"[FE80::A]"),
            ("IPv6 unclosed kept", b"[::1", b"[::1"),
            ("IPv6 invalid kept", b"[zz]", b"[ZZ]"),
            ("empty", b"", b""),
        ]
        self.assertEqual([], _mismatches(cases, hostKey))
