"""
Tests for the C{[admin]} table of lb.toml (L{txlb._configadmin}).
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from txlb.config import AdminConfig, parseConfig
from txlb.test.test_config import SERVER, ConfigTestMixin, parse

TOKEN = "s3cret-token-0123456789"


class AdminConfigTests(ConfigTestMixin, SynchronousTestCase):
    """
    C{[admin]} turns the admin service on, on loopback by default.
    """

    def test_absentMeansOff(self) -> None:
        self.assertIsNone(parse(SERVER).admin)

    def test_defaults(self) -> None:
        """
        An empty table: 127.0.0.1:9090, no token, reads open.
        """
        admin = parse("[admin]\n" + SERVER).admin
        self.assertEqual(
            admin,
            AdminConfig(
                endpoint="tcp:port=9090:interface=127.0.0.1:backlog=50",
                address="127.0.0.1",
                port=9090,
                token=None,
                openReads=True,
            ),
        )

    def test_tokenNotInRepr(self) -> None:
        """
        The token never shows in a repr (logs, tracebacks).
        """
        admin = parse(f'[admin]\ntoken = "{TOKEN}"\n' + SERVER).admin
        self.assertEqual(admin.token, TOKEN)
        self.assertNotIn(TOKEN, repr(admin))

    def test_tokenFileRelativeToConfig(self) -> None:
        """
        C{token_file} is read (stripped) relative to the configuration
        file's directory.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "admin.token"), "w") as f:
            f.write(TOKEN + "\n")
        source = os.path.abspath(os.path.join(directory, "lb.toml"))
        import tomllib

        config = parseConfig(
            tomllib.loads('[admin]\naddress = "0.0.0.0"\ntoken_file = "admin.token"\n' + SERVER),
            source,
        )
        self.assertEqual(config.admin.token, TOKEN)
        self.assertEqual(config.admin.address, "0.0.0.0")

    def test_errors(self) -> None:
        self.assertErrorTable(
            [
                (
                    '[admin]\naddress = "0.0.0.0"\n' + SERVER,
                    "admin.address: 0.0.0.0 is not a loopback address: the admin API "
                    "needs token or token_file there",
                ),
                (
                    '[admin]\naddress = "localhost"\n' + SERVER,
                    "admin.address: must be an IP address, got 'localhost'",
                ),
                (
                    '[admin]\ntoken = "short"\n' + SERVER,
                    "admin.token: must be at least 16 characters",
                ),
                (
                    f'[admin]\ntoken = "{TOKEN}"\ntoken_file = "x"\n' + SERVER,
                    "admin.token_file: give token or token_file, not both",
                ),
                (
                    '[admin]\ntoken_file = "/nonexistent/txlb.token"\n' + SERVER,
                    "admin.token_file: cannot read /nonexistent/txlb.token: "
                    "No such file or directory",
                ),
                (
                    "[admin]\nopen_reads = false\n" + SERVER,
                    "admin.open_reads: false needs token or token_file",
                ),
                (
                    "[admin]\nport = 70000\n" + SERVER,
                    "admin.port: must be 0-65535, got 70000",
                ),
                (
                    "[admin]\nprot = 9000\n" + SERVER,
                    "admin.prot: unknown key; did you mean 'port'?",
                ),
            ]
        )

    def test_loopbackIPv6(self) -> None:
        """
        ::1 is loopback too.
        """
        admin = parse('[admin]\naddress = "::1"\n' + SERVER).admin
        self.assertEqual(admin.endpoint, "tcp6:port=9090:interface=\\:\\:1:backlog=50")
