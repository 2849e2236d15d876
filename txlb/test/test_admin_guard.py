"""
Tests for L{txlb.admin.guard}: Host, Origin, token, content type and body
checks, on bare requests.
"""

from __future__ import annotations

import io

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from txlb.admin.guard import MAX_BODY, Guard, Refused, readJSON
from txlb.config import AdminConfig
from txlb.test.test_config import SERVER, ConfigTestMixin

TOKEN = "0123456789abcdef-token"


def request(method: bytes = b"PATCH", **headers: bytes) -> DummyRequest:
    """
    A request with C{headers} (underscores for dashes) and a JSON type.
    """
    r = DummyRequest([b"api"])
    r.method = method
    r.requestHeaders.setRawHeaders(b"host", [b"127.0.0.1:9090"])
    r.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
    r.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + TOKEN.encode()])
    for name, value in headers.items():
        r.requestHeaders.setRawHeaders(name.replace("_", "-").encode(), [value])
    return r


def guard(**kw: object) -> Guard:
    values: dict = {
        "endpoint": "tcp:9090", "address": "127.0.0.1", "port": 9090, "token": TOKEN,
    }
    values.update(kw)
    return Guard(AdminConfig(**values))


class GuardTests(SynchronousTestCase):
    def assertRefused(self, status: int, check, r) -> None:
        e = self.assertRaises(Refused, check, r)
        self.assertEqual(e.status, status)

    def test_sameOriginAccepted(self) -> None:
        guard().checkWrite(request(origin=b"http://127.0.0.1:9090"))

    def test_otherPortOfLocalhostRefused(self) -> None:
        """
        A page served from another port of the same machine is another
        origin.
        """
        self.assertRefused(403, guard().checkWrite, request(origin=b"http://127.0.0.1:3000"))
        self.assertRefused(403, guard().checkWrite, request(origin=b"https://127.0.0.1:9090"))
        self.assertRefused(403, guard().checkWrite, request(origin=b"null"))

    def test_lowercaseMethodStillNeedsJSON(self) -> None:
        self.assertRefused(
            415, guard().checkWrite, request(method=b"patch", content_type=b"text/plain")
        )

    def test_hostWithTrailingDotAndCase(self) -> None:
        guard().checkRead(request(host=b"LOCALHOST.:9090"))

    def test_dnsNameRefusedUnlessAllowed(self) -> None:
        """
        A DNS name is not this service (a rebound name would be) unless
        listed in C{allowed_hosts}.
        """
        self.assertRefused(421, guard().checkRead, request(host=b"lb1.example.com:9090"))
        guard(allowedHosts=("lb1.example.com",)).checkRead(
            request(host=b"lb1.example.com:9090")
        )

    def test_wrongToken(self) -> None:
        self.assertRefused(401, guard().checkWrite, request(authorization=b"Bearer nope"))
        self.assertRefused(401, guard().checkWrite, request(authorization=b"Basic " + TOKEN.encode()))

    def test_bodyTooLarge(self) -> None:
        r = request()
        r.content = io.BytesIO(b"{" + b" " * MAX_BODY + b"}")
        e = self.assertRaises(Refused, readJSON, r)
        self.assertEqual(e.status, 413)

    def test_deeplyNestedBody(self) -> None:
        """
        JSON nested past Python's recursion limit is a 400, not a crash.
        """
        r = request()
        r.content = io.BytesIO(b"[" * 20000 + b"]" * 20000)
        e = self.assertRaises(Refused, readJSON, r)
        self.assertEqual(e.status, 400)


class TokenConfigTests(ConfigTestMixin, SynchronousTestCase):
    def test_nonASCIIToken(self) -> None:
        self.assertErrorTable(
            [
                (
                    '[admin]\ntoken = "0123456789abcdéf"\n' + SERVER,
                    "admin.token: must be printable ASCII, without spaces",
                ),
                (
                    "[admin]\nallowed_hosts = [\"bad host\"]\n" + SERVER,
                    "admin.allowed_hosts: must be an array of host names, got ['bad host']",
                ),
            ]
        )
