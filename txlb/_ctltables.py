"""
How C{txlbctl} prints the admin API's answers: aligned plain-text tables.

Every C{render*} function takes an answer as L{txlb.admin.api} sends it and
returns the lines to print.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def formatTable(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                right: Iterable[int] = ()) -> list[str]:
    """
    Lines of an aligned table: C{headers}, then one line per row.

    Cells are separated by two spaces; C{None} shows as C{-}, booleans as
    C{yes}/C{no}.

    @param right: indexes of the columns to align right (numbers).
    """
    right = set(right)
    table = [list(headers)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return [
        "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in table
    ]


def _state(server: dict[str, Any]) -> str:
    # A server being removed drains first: say where that leads.
    return "removing" if server.get("removing") else str(server.get("state", "-"))


def _health(server: dict[str, Any]) -> str:
    notes = []
    if server.get("ejected"):
        notes.append("ejected")
    breaker = server.get("breaker")
    if isinstance(breaker, dict) and breaker.get("state") not in (None, "closed"):
        notes.append(f"breaker {breaker['state']}")
    health = str(server.get("health", "-"))
    return f"{health} ({', '.join(notes)})" if notes else health


def _errors(server: dict[str, Any]) -> int:
    responses = server.get("responses") or {}
    return int(responses.get("5xx", 0) or 0) + int(server.get("failures", 0) or 0)


def renderPools(pools: Sequence[dict[str, Any]]) -> list[str]:
    """
    The C{list} table: a title line and a server table per pool.
    """
    if not pools:
        return ["no pools"]
    lines: list[str] = []
    for pool in pools:
        if lines:
            lines.append("")
        servers = pool.get("servers", [])
        title = (
            f"pool {pool['name']} ({pool.get('algorithm')}): "
            f"{pool.get('healthy_servers', 0)} of {len(servers)} servers healthy"
        )
        if pool.get("panic"):
            title += ", PANIC (no server usable)"
        if pool.get("queued"):
            title += f", {pool['queued']} queued"
        lines.append(title)
        if not servers:
            lines.append("  no servers")
            continue
        lines.extend(
            formatTable(
                ["NAME", "ADDRESS", "STATE", "HEALTH", "WEIGHT", "IN FLIGHT",
                 "P50 MS", "P99 MS", "ERRORS"],
                [
                    [
                        s.get("name"),
                        s.get("address"),
                        _state(s),
                        _health(s),
                        f"{cell(s.get('effective_weight'))}/{cell(s.get('weight'))}",
                        s.get("connections"),
                        s.get("p50_ms"),
                        s.get("p99_ms"),
                        _errors(s),
                    ]
                    for s in servers
                ],
                right=(4, 5, 6, 7, 8),
            )
        )
    return lines


def renderStats(detail: dict[str, Any]) -> list[str]:
    """
    The C{stats} tables: client and server totals, then each server.
    """
    lines = formatTable(
        ["", "SUCCESS", "FAILED"],
        [
            [side, detail.get(side, {}).get("success"), detail.get(side, {}).get("failed")]
            for side in ("client", "server")
        ],
        right=(1, 2),
    )
    servers = detail.get("servers") or []
    if servers:
        lines.append("")
        lines.extend(
            formatTable(
                ["POOL", "SERVER", "SUCCESS", "FAILED", "HEALTHY", "IN FLIGHT"],
                [
                    [s.get("pool"), s.get("address"), s.get("success"), s.get("failed"),
                     s.get("healthy"), s.get("connections")]
                    for s in servers
                ],
                right=(2, 3, 5),
            )
        )
    return lines


def renderHealth(health: dict[str, Any]) -> list[str]:
    """
    The C{health} summary and table.
    """
    lines = [
        f"status: {health.get('status')}, {health.get('healthy_backends')} of "
        f"{health.get('total_backends')} servers healthy"
    ]
    backends = health.get("backends") or []
    if backends:
        lines.extend(
            formatTable(
                ["POOL", "SERVER", "HEALTHY", "IN FLIGHT", "RESPONSE MS"],
                [
                    [b.get("pool"), b.get("address"), b.get("healthy"),
                     b.get("connections"), b.get("response_time_ms")]
                    for b in backends
                ],
                right=(3, 4),
            )
        )
    return lines


def renderListeners(answer: Any) -> list[str]:
    """
    The C{listeners} table.
    """
    listeners = answer.get("listeners", []) if isinstance(answer, dict) else answer
    if not listeners:
        return ["no listeners"]
    return formatTable(
        ["NAME", "LAYER", "ADDRESS", "POOL", "IN FLIGHT", "ACCEPTED", "SHED"],
        [
            [x.get("name"), x.get("layer"), x.get("address") or x.get("endpoint"),
             x.get("pool"), x.get("connections"), x.get("accepted"), x.get("shed")]
            for x in listeners
        ],
        right=(4, 5, 6),
    )


def _timestamp(at: Any) -> str:
    if not isinstance(at, (int, float)):
        return cell(at)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _candidate(candidate: Any) -> str:
    if isinstance(candidate, dict):
        name = candidate.get("name", "?")
        load = candidate.get("connections", candidate.get("in_flight"))
        weight = candidate.get("effective_weight", candidate.get("weight"))
    elif isinstance(candidate, (list, tuple)) and candidate:
        name, load, weight = (list(candidate) + [None, None])[:3]
    else:
        return cell(candidate)
    return f"{name} ({cell(load)} in flight, weight {cell(weight)})"


def renderDecisions(pool: str, answer: Any) -> list[str]:
    """
    The C{decisions} list: each recorded pick, its reason and candidates.
    """
    decisions = answer.get("decisions", []) if isinstance(answer, dict) else answer
    if not decisions:
        return [f"pool {pool}: no decisions recorded yet"]
    lines = []
    for d in decisions:
        client = d.get("client") or "unknown client"
        chosen = d.get("chosen") or "no server"
        lines.append(f"{_timestamp(d.get('at'))}  {client} -> {chosen}: {d.get('reason')}")
        candidates = d.get("candidates") or []
        if candidates:
            lines.append("  candidates: " + ", ".join(map(_candidate, candidates)))
    return lines
