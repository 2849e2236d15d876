"""
Reading the C{[admin]} table of lb.toml.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import TYPE_CHECKING

from txlb._configvalues import AdminConfig, serverEndpointString

if TYPE_CHECKING:
    from txlb._configread import _Reader

ADMIN_KEYS = ("address", "port", "token", "token_file", "open_reads", "allowed_hosts")
DEFAULT_ADMIN_PORT = 9090
_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\.?$")
# A bearer token shorter than this is too easy to guess.
MIN_TOKEN_LENGTH = 16


def readAdmin(r: _Reader | None) -> AdminConfig | None:
    """
    The C{[admin]} table: the admin service runs when it is present.

    @raise ConfigError: a value is bad, the token file cannot be read, or
        the admin would listen beyond loopback without a token.
    """
    if r is None:
        return None
    address = r.string("address", "127.0.0.1")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise r.error("address", f"must be an IP address, got {address!r}")
    port = r.integer("port", DEFAULT_ADMIN_PORT, low=0, high=65535)
    token = r.string("token")
    tokenFile = r.string("token_file")
    if token is not None and tokenFile is not None:
        raise r.error("token_file", "give token or token_file, not both")
    if tokenFile is not None:
        path = tokenFile
        if not os.path.isabs(path) and os.path.isabs(r.source):
            path = os.path.join(os.path.dirname(r.source), path)
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise r.error("token_file", f"cannot read {path}: {e.strerror or e}")
        except UnicodeDecodeError:
            raise r.error("token_file", f"{path} is not UTF-8 text")
        where = "token_file"
    else:
        where = "token"
    if token is not None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise r.error(where, f"must be at least {MIN_TOKEN_LENGTH} characters")
        if any(not 0x21 <= ord(c) <= 0x7E for c in token):
            raise r.error(where, "must be printable ASCII, without spaces")
    openReads = r.raw("open_reads", True)
    if not isinstance(openReads, bool):
        raise r.error("open_reads", f"must be true or false, got {openReads!r}")
    hosts = r.raw("allowed_hosts", [])
    if not isinstance(hosts, list) or not all(
        isinstance(h, str) and _HOST_NAME.match(h) for h in hosts
    ):
        raise r.error(
            "allowed_hosts", f"must be an array of host names, got {hosts!r}"
        )
    r.finish(ADMIN_KEYS)
    if token is None and not ip.is_loopback:
        raise r.error(
            "address",
            f"{address} is not a loopback address: the admin API needs token or "
            "token_file there",
        )
    if token is None and not openReads:
        raise r.error("open_reads", "false needs token or token_file")
    return AdminConfig(
        endpoint=serverEndpointString(address, port, 50),
        address=address,
        port=port,
        token=token,
        openReads=openReads,
        allowedHosts=tuple(h.lower().rstrip(".") for h in hosts),
    )
