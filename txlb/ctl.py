"""
The C{txlbctl} console command: a client for a running txlb's admin API.

C{txlbctl list} shows every pool and server; C{add}, C{drain}, C{enable},
C{disable}, C{remove}, C{weight} and C{strategy} change them; C{stats},
C{health}, C{decisions} and C{listeners} show the rest.  Answers print as
aligned tables, or with C{--json} as the API's JSON.

The admin address comes from C{--url}, else C{TXLB_ADMIN_URL}, else
C{http://127.0.0.1:9090}; the token from C{--token} or C{--token-file},
else C{TXLB_ADMIN_TOKEN} or C{TXLB_ADMIN_TOKEN_FILE}.

Exit status: 0 done; 1 the API refused (C{txlbctl: error: STATUS MESSAGE});
2 bad usage; 3 the admin API cannot be reached.

It is a command line tool that makes one request and ends, so it uses the
standard library's blocking HTTP client rather than the reactor.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, NoReturn, Sequence, TextIO

from txlb import __version__
from txlb._ctltables import (
    cell,
    renderDecisions,
    renderHealth,
    renderListeners,
    renderPools,
    renderStats,
)

DEFAULT_URL = "http://127.0.0.1:9090"
TIMEOUT = 10.0

OK, API_ERROR, USAGE, UNREACHABLE = 0, 1, 2, 3


class APIError(Exception):
    """
    The admin API answered with an error.

    @ivar status: the HTTP status.
    @ivar message: its C{"error"}, or the HTTP reason when it sent none.
    @ivar field: the request field it blames, if it named one.
    """

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(status, message, field)
        self.status = status
        self.message = message
        self.field = field

    def __str__(self) -> str:
        text = f"{self.status} {self.message}"
        if self.field and not self.message.startswith(f"{self.field}:"):
            # txlb's own messages start with the field already.
            text += f" (field: {self.field})"
        return text


class Unreachable(Exception):
    """
    No answer from the admin API: refused, timed out, unknown host...

    @ivar url: the admin URL.
    @ivar reason: why, in a few words.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot reach the admin API at {self.url}: {self.reason}"


def describeReason(reason: object, timeout: float = TIMEOUT) -> str:
    """
    A few words on why a connection failed: C{"connection refused"}...
    """
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "the connection closed without an answer"
    if isinstance(reason, ConnectionResetError):
        return "connection reset"
    if isinstance(reason, http.client.HTTPException):
        return f"not an HTTP answer ({type(reason).__name__})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[:1].lower() + reason.strerror[1:]
    return str(reason) or type(reason).__name__


def quote(segment: str) -> str:
    """
    C{segment} percent-encoded as one path segment: C{[::1]:80} becomes
    C{%5B%3A%3A1%5D%3A80}.
    """
    return urllib.parse.quote(segment, safe="")


class Client:
    """
    Makes requests to one admin API.

    @ivar url: its base URL, without a trailing slash.
    @ivar token: the bearer token sent with every request, or C{None}.
    @ivar opener: an object with C{open(request, timeout=...)}, like a
        L{urllib.request.OpenerDirector}: it returns a response or raises
        L{urllib.error.HTTPError} or L{urllib.error.URLError}.
    """

    def __init__(self, url: str, token: str | None, opener: Any,
                 timeout: float = TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.opener = opener
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """
        Make one request and return its decoded JSON answer (C{None} for an
        empty one).

        @param path: the path, its segments already quoted.
        @param body: sent as JSON when not C{None}.
        @raise APIError: the answer's status is not 2xx.
        @raise Unreachable: no answer.
        """
        headers = {"Accept": "application/json", "User-Agent": f"txlbctl/{__version__}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.url + path, data=data, headers=headers, method=method
        )
        try:
            response = self.opener.open(request, timeout=self.timeout)
            try:
                status = response.status
                reason = response.reason
                payload = response.read()
            finally:
                response.close()
        except urllib.error.HTTPError as e:
            try:
                status, reason, payload = e.code, e.reason, e.read()
            except (OSError, http.client.HTTPException) as why:
                raise Unreachable(self.url, describeReason(why, self.timeout))
            finally:
                e.close()
        except urllib.error.URLError as e:
            raise Unreachable(self.url, describeReason(e.reason, self.timeout))
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(self.url, describeReason(e, self.timeout))
        return self._decode(status, reason, payload)

    def _decode(self, status: int, reason: str, payload: bytes) -> Any:
        try:
            value = json.loads(payload.decode("utf-8")) if payload.strip() else None
        except (UnicodeDecodeError, ValueError):
            if 200 <= status < 300:
                raise APIError(status, "the answer is not JSON")
            value = None
        if 200 <= status < 300:
            return value
        if isinstance(value, dict) and isinstance(value.get("error"), str):
            field = value.get("field")
            raise APIError(status, value["error"], field if isinstance(field, str) else None)
        raise APIError(status, reason or http.client.responses.get(status, "error"))


def _serverPath(pool: str, server: str | None = None) -> str:
    path = f"/api/v1/pools/{quote(pool)}/servers"
    return path if server is None else f"{path}/{quote(server)}"


# Each command: (client, args) -> (the JSON answer, the lines to print).
Command = Callable[[Client, argparse.Namespace], "tuple[Any, list[str]]"]


def _list(client: Client, args: argparse.Namespace) -> tuple[Any, list[str]]:
    if args.pool is None:
        answer = client.request("GET", "/api/v1/pools")
        return answer, renderPools(
            answer.get("pools", []) if isinstance(answer, dict) else []
        )
    answer = client.request("GET", f"/api/v1/pools/{quote(args.pool)}")
    return answer, renderPools([answer])


def _add(client: Client, args: argparse.Namespace) -> tuple[Any, list[str]]:
    address, port = args.address
    body: dict[str, Any] = {"address": address, "port": port}
    for key in ("name", "weight", "max_connections"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    answer = client.request("POST", _serverPath(args.pool), body)
    server = answer if isinstance(answer, dict) else {}
    name = server.get("name", args.name or f"{address}:{port}")
    return answer, [
        f"pool {args.pool}: added server {name} at "
        f"{server.get('address', f'{address}:{port}')}, weight "
        f"{cell(server.get('weight', args.weight))}, health {cell(server.get('health'))}"
    ]


def _setState(state: str) -> Command:
    def setState(client: Client, args: argparse.Namespace) -> tuple[Any, list[str]]:
        answer = client.request(
            "PATCH", _serverPath(args.pool, args.server), {"state": state}
        )
        now = answer.get("state", state) if isinstance(answer, dict) else state
        return answer, [f"pool {args.pool}: server {args.server} is {now}"]

    return setState


def _remove(client: Client, args: argparse.Namespace) -> tuple[Any, list[str]]:
    answer = client.request("DELETE", _serverPath(args.pool, args.server))
    return answer, [
        f"pool {args.pool}: server {args.server} is draining and will be removed"
    ]


def _weight(client: Client, args: argparse.Namespace) -> tuple[Any, list[str]]:
    answer = client.request(
        "PATCH", _serverPath(args.pool, args.server), {"weight": args.weight}
    )
    weight = answer.get("weight", args.weight) if isinstance(answer, dict) else args.weight
    return answer, [f"pool {args.pool}: server {args.server} has weight {weight}"]


def _strategy(client: Client, args: argparse.Namespace) -> tuple[Any, list[str]]:
    options = dict(args.options)
    answer = client.request(
        "PATCH",
        f"/api/v1/pools/{quote(args.pool)}",
        {"algorithm": args.algorithm, "options": options},
    )
    algorithm = (
        answer.get("algorithm", args.algorithm) if isinstance(answer, dict) else args.algorithm
    )
    shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in options.items())
    return answer, [
        f"pool {args.pool}: algorithm {algorithm}" + (f" ({shown})" if shown else "")
    ]


def _stats(client: Client, args: argparse.Namespace) -> tuple[Any, list[str]]:
    answer = client.request("GET", "/stats/detail")
    return answer, renderStats(answer)


def _healthCommand(client: Client, args: argparse.Namespace) -> tuple[Any, list[str]]:
    answer = client.request("GET", "/lb-health")
    return answer, renderHealth(answer)


def _decisions(client: Client, args: argparse.Namespace) -> tuple[Any, list[str]]:
    answer = client.request("GET", f"/api/v1/pools/{quote(args.pool)}/decisions")
    return answer, renderDecisions(args.pool, answer)


def _listeners(client: Client, args: argparse.Namespace) -> tuple[Any, list[str]]:
    answer = client.request("GET", "/api/v1/listeners")
    return answer, renderListeners(answer)


def hostPort(text: str) -> tuple[str, int]:
    """
    Parse C{ADDRESS:PORT}, an IPv6 address in brackets: C{[::1]:80}.

    @raise argparse.ArgumentTypeError: it is not of that form.
    """
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        sep, port = rest[:1], rest[1:]
        if not closed or sep != ":":
            raise argparse.ArgumentTypeError(f"{text!r} is not [ADDRESS]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"{text!r} is not ADDRESS:PORT")
        if ":" in host:
            raise argparse.ArgumentTypeError(
                f"{text!r}: write an IPv6 address in brackets, as [::1]:80"
            )
    if not host:
        raise argparse.ArgumentTypeError(f"{text!r} has no address")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be 1 to 65535")
    return host, int(port)


def option(text: str) -> tuple[str, Any]:
    """
    Parse C{KEY=VALUE}: the value as JSON when it is JSON (C{3},
    C{true}, C{["a"]}), else as a string.

    @raise argparse.ArgumentTypeError: there is no C{=} or no key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def adminURL(text: str) -> str:
    """
    Check an admin URL: C{http://} or C{https://} with a host.

    @raise argparse.ArgumentTypeError: it is not.
    """
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an http:// or https:// URL"
        )
    return text.rstrip("/")


def positive(text: str) -> int:
    """
    Parse a non-negative integer.

    @raise argparse.ArgumentTypeError: it is not one.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class _Parser(argparse.ArgumentParser):
    """
    An argument parser that writes to the given streams and raises
    L{_Exit} rather than ending the process.
    """

    def __init__(self, *args: Any, streams: tuple[TextIO, TextIO], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams = streams

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            out, err = self.streams
            (out if file is None or file is sys.stdout else err).write(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self.streams[1].write(message)
        raise _Exit(status)


def _globalOptions(parser: argparse.ArgumentParser, here: bool) -> None:
    """
    Add the options every command takes: before the command (C{here}),
    with their defaults, and after it, where they override those.
    """
    suppress: Any = argparse.SUPPRESS

    def given(value: Any) -> Any:
        return value if here else suppress

    def explain(text: str) -> str:
        # Listed once, in txlbctl --help.
        return text if here else suppress

    parser.add_argument(
        "--url", type=adminURL,
        default=given(os.environ.get("TXLB_ADMIN_URL") or DEFAULT_URL),
        help=explain(f"the admin API (default: $TXLB_ADMIN_URL or {DEFAULT_URL})"),
    )
    # (A group of suppressed options trips argparse's usage formatter; main
    # refuses both anyway.)
    token = parser.add_mutually_exclusive_group() if here else parser
    token.add_argument("--token", default=given(None),
                       help=explain("the bearer token (default: $TXLB_ADMIN_TOKEN)"))
    token.add_argument(
        "--token-file", dest="tokenFile", metavar="PATH", default=given(None),
        help=explain("read the token from PATH (default: $TXLB_ADMIN_TOKEN_FILE)"),
    )
    parser.add_argument(
        "--json", action="store_true", default=given(False),
        help=explain("print the API's JSON answer instead of a table"),
    )


def buildParser(streams: tuple[TextIO, TextIO]) -> _Parser:
    """
    The C{txlbctl} argument parser; each command's function is its
    C{run} default.
    """
    parser = _Parser(
        prog="txlbctl", streams=streams,
        description="Drive a running txlb through its admin API.",
    )
    parser.add_argument("--version", action="version", version=f"txlbctl {__version__}")
    _globalOptions(parser, here=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, run: Command, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text, streams=streams)
        _globalOptions(sub, here=False)
        sub.set_defaults(run=run)
        return sub

    def poolServer(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("pool", metavar="POOL")
        sub.add_argument("server", metavar="SERVER", help="the server's name")

    command("list", _list, "list pools and their servers").add_argument(
        "pool", metavar="POOL", nargs="?", help="only this pool"
    )
    add = command("add", _add, "add a server to a pool")
    add.add_argument("pool", metavar="POOL")
    add.add_argument("address", metavar="ADDRESS:PORT", type=hostPort,
                     help="where it listens; IPv6 in brackets: [::1]:80")
    add.add_argument("--weight", type=positive, metavar="N")
    add.add_argument("--name", help="its name (default: ADDRESS:PORT)")
    add.add_argument("--max-connections", dest="max_connections", type=positive,
                     metavar="N")
    poolServer(command("drain", _setState("draining"),
                       "let a server finish what it has and take nothing new"))
    poolServer(command("enable", _setState("active"), "send a server traffic again"))
    poolServer(command("disable", _setState("disabled"), "take a server out at once"))
    poolServer(command("remove", _remove, "drain a server, then remove it"))
    weight = command("weight", _weight, "set a server's weight")
    poolServer(weight)
    weight.add_argument("weight", metavar="N", type=positive)
    strategy = command("strategy", _strategy, "swap a pool's load-balancing algorithm")
    strategy.add_argument("pool", metavar="POOL")
    strategy.add_argument("algorithm", metavar="ALGORITHM")
    strategy.add_argument(
        "-o", "--option", dest="options", metavar="KEY=VALUE", type=option,
        action="append", default=[],
        help="an algorithm option; VALUE is read as JSON when it is JSON",
    )
    command("stats", _stats, "success and failure counts, in total and per server")
    command("health", _healthCommand, "whether each server is healthy")
    command("decisions", _decisions, "a pool's recent routing decisions and why").add_argument(
        "pool", metavar="POOL"
    )
    command("listeners", _listeners, "the listeners and their counters")
    return parser


def _readToken(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the token file {path}: {describeReason(e)}")
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token


def findToken(args: argparse.Namespace) -> str | None:
    """
    The token: C{--token}, C{--token-file}, C{$TXLB_ADMIN_TOKEN},
    C{$TXLB_ADMIN_TOKEN_FILE}, the first given; else C{None}.

    @raise ValueError: a token file cannot be read or is empty, or the
        token cannot go in a header.
    """
    token = None
    if args.token:
        token = str(args.token)
    elif args.tokenFile:
        token = _readToken(args.tokenFile)
    elif os.environ.get("TXLB_ADMIN_TOKEN"):
        token = os.environ["TXLB_ADMIN_TOKEN"]
    elif os.environ.get("TXLB_ADMIN_TOKEN_FILE"):
        token = _readToken(os.environ["TXLB_ADMIN_TOKEN_FILE"])
    if token is not None and not (token.isprintable() and token.isascii()):
        # It goes in a header line: printable ASCII only (txlb's tokens are).
        raise ValueError("the token must be printable ASCII")
    return token


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """
    Refuse redirects: following one would send the token elsewhere.
    """

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> None:
        return None


def defaultOpener() -> urllib.request.OpenerDirector:
    """
    An opener that never uses an HTTP proxy from the environment (it would
    see the token) and never follows a redirect.
    """
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None, opener: Any = None) -> int:
    """
    Run the C{txlbctl} command.

    @param opener: makes the HTTP requests (see L{Client}); by default a
        L{urllib.request.OpenerDirector}.
    @return: the exit status.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = buildParser((out, err))
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(err)
            return USAGE
        if args.token and args.tokenFile:
            parser.error("give --token or --token-file, not both")
        try:
            token = findToken(args)
        except ValueError as e:
            parser.error(str(e))
    except _Exit as e:
        return e.status
    client = Client(args.url, token, opener or defaultOpener())
    try:
        answer, lines = args.run(client, args)
    except APIError as e:
        print(f"txlbctl: error: {e}", file=err)
        return API_ERROR
    except Unreachable as e:
        print(f"txlbctl: error: {e}", file=err)
        return UNREACHABLE
    if args.json:
        if answer is not None:
            print(json.dumps(answer, indent=2), file=out)
    else:
        for line in lines:
            print(line, file=out)
    return OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
