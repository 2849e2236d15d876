"""
Print medians over rounds from a run of the shared benchmark harness.

For each test (c50, c200, ...) and pin mode, and each target: requests/s,
p99 latency, proxy CPU per request, and the ratio of its requests/s to
C{direct}, to C{haproxy-tcp} and to the C{tw-l4-fast} canary.  Every ratio
is computed within its round (the harness alternates targets A B A B
because absolute numbers drift), then the median over rounds is taken.

Usage: python3 bench/medians.py RESULTS_DIR [RESULTS_DIR ...]

Stdlib only; reads C{results.jsonl} as the harness writes it, using the
attempt it selected when a run was retried for noise.
"""

import json
import os
import statistics
import sys
from collections import defaultdict

# Ratios printed, as (column title, reference target).
REFERENCES = (
    ("xdirect", "direct"),
    ("xhaproxy", "haproxy-tcp"),
    ("xfast", "tw-l4-fast"),
)

# The L7 run compares with HAProxy in mode http instead (bench/l7.sh sets it).
if os.environ.get("TXLB_BENCH_LAYER") == "l7":
    REFERENCES = (
        ("xdirect", "direct"),
        ("xhaproxy", "haproxy-http"),
        ("xnginx", "nginx-proxy"),
    )


def loadRecords(directories):
    """
    @param directories: result directories of one or more harness runs.
    @return: the selected measurement records; rounds of different runs are
        kept apart.
    """
    records = []
    for directory in directories:
        tag = os.path.basename(os.path.normpath(directory))
        with open(os.path.join(directory, "results.jsonl")) as f:
            for line in f:
                record = json.loads(line)
                if record.get("rss_update") or record.get("selected") is False:
                    continue
                record["round"] = (tag, record["round"])
                records.append(record)
    return records


def median(values):
    """
    @return: the median of the values that are not C{None}, or C{None}.
    """
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def referenceRates(records):
    """
    @return: C{{round: {target: requests/s}}}; C{direct}, measured twice per
        round, is the mean of both.
    """
    perRound = defaultdict(lambda: defaultdict(list))
    for record in records:
        perRound[record["round"]][record["target"]].append(record["rps"])
    return {
        rnd: {target: statistics.mean(rates) for target, rates in targets.items()}
        for rnd, targets in perRound.items()
    }


def summarize(records):
    """
    @return: the lines of one table per (test, pin mode).
    """
    lines = []
    groups = defaultdict(list)
    for record in records:
        groups[(record["test"], record["pin"])].append(record)
    for (test, pin), group in groups.items():
        rates = referenceRates(group)
        rounds = len(rates)
        lines += [
            "",
            f"## {test}, {pin}: medians over {rounds} round(s)",
            "",
            "| target | rps | p99 ms | CPU us/req | "
            + " | ".join(title for title, _ in REFERENCES)
            + " |",
            "|---|---|---|---|" + "---|" * len(REFERENCES),
        ]
        targets = []
        for record in group:
            if record["target"] not in targets:
                targets.append(record["target"])
        for target in targets:
            mine = [r for r in group if r["target"] == target]
            cells = [
                target,
                f"{median([r['rps'] for r in mine]):.0f}",
                _fmt(median([r.get("p99_ms") for r in mine]), "%.2f"),
                _fmt(median([r.get("proxy_cpu_us_per_req") for r in mine]), "%.1f"),
            ]
            for _, reference in REFERENCES:
                ratios = [
                    r["rps"] / rates[r["round"]][reference]
                    for r in mine
                    if rates[r["round"]].get(reference) and target != reference
                ]
                cells.append(_fmt(median(ratios), "%.3f"))
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fmt(value, pattern):
    """
    @return: C{value} formatted with C{pattern}, or C{-} for C{None}.
    """
    return "-" if value is None else pattern % value


def main(argv):
    """
    Print the tables for the result directories named in C{argv}.
    """
    if len(argv) < 2:
        raise SystemExit(__doc__)
    print("\n".join(summarize(loadRecords(argv[1:]))))


if __name__ == "__main__":
    main(sys.argv)
