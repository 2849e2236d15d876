"""
What the admin API's runtime changes accept: the checks of their inputs, and
the error (L{ControlError}) that refuses a change, naming the input at fault.
L{txlb.admin.control} makes the changes.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from twisted.internet.endpoints import clientFromString

from txlb.pool import AdminState

#: The states a server may be set to.
STATES = tuple(state.value for state in AdminState)

# A host name: letters, digits, dots, dashes and underscores.
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?\Z")
# The longest server name accepted.
_MAX_NAME = 255


class ControlError(Exception):
    """
    A runtime change that cannot be made; nothing was changed.

    @ivar status: the HTTP status that says why: 400 (bad input), 404
        (unknown pool or server) or 409 (duplicate, conflict).
    @ivar field: the input at fault (as the API's JSON names it), or
        C{None}.
    @ivar message: what is wrong with it.
    """

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(status, field, message)
        self.status = status
        self.field = field
        self.message = message

    def __str__(self) -> str:
        if self.field is None:
            return self.message
        return f"{self.field}: {self.message}"


def checkInteger(field: str, value: Any, low: int, high: int | None = None) -> int:
    """
    C{value} when it is an integer from C{low} to C{high} (no bound when
    C{None}); JSON's C{true} is not an integer here.

    @raise ControlError: 400 naming C{field}.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ControlError(400, field, f"must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"{low}-{high}" if high is not None else f"at least {low}"
        raise ControlError(400, field, f"must be {bounds}, got {value}")
    return value


def checkState(value: Any) -> AdminState:
    """
    The L{AdminState} called C{value}.

    @raise ControlError: 400 naming C{state}.
    """
    if isinstance(value, str):
        try:
            return AdminState(value)
        except ValueError:
            pass
    raise ControlError(
        400, "state", f"must be one of {', '.join(STATES)}, got {value!r}"
    )


def _canonicalHost(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def checkHost(field: str, value: Any) -> str:
    """
    A host name or an IP address (an IPv6 one with or without brackets),
    IP addresses in their canonical form.

    @raise ControlError: 400 naming C{field}.
    """
    if isinstance(value, str):
        host = value.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            if len(host) <= 253 and _HOST_NAME.match(host):
                return host
    raise ControlError(
        400,
        field,
        f"must be a host name or an IP address, without a port, got {value!r}",
    )


def _checkEndpoint(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ControlError(
            400, "endpoint", f"must be a client endpoint string, got {value!r}"
        )
    try:
        # Parsing only: nothing connects, so no reactor is needed.
        clientFromString(object(), value)
    except Exception as e:
        raise ControlError(
            400, "endpoint", f"not a valid client endpoint string ({e}): {value!r}"
        )
    return value


def _checkName(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > _MAX_NAME
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        raise ControlError(
            400, "name", f"must be 1-{_MAX_NAME} printable characters, got {value!r}"
        )
    return value
