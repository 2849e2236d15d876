"""
Turn trial's closing summary into one line, C{trial: N passed, M failed, K
skipped}, and an exit status: non-zero when M > 0, or when no summary was
found, or trial itself failed.

trial ends with C{PASSED (successes=12, skips=1)} or
C{FAILED (skips=1, failures=2, errors=1, successes=9)}; expectedFailures and
unexpectedSuccesses may appear too.
"""

import re
import sys

SUMMARY = re.compile(r"^(PASSED|FAILED) \((.*)\)\s*$")


def main(path, status):
    counts = None
    with open(path, errors="replace") as f:
        for line in f:
            m = SUMMARY.match(line.strip())
            if m:
                counts = dict(
                    (k.strip(), int(v))
                    for k, v in (p.split("=") for p in m.group(2).split(",") if "=" in p)
                )
    if counts is None:
        print("trial: 0 passed, 1 failed, 0 skipped")
        print("(no trial summary found; the test command failed before finishing)")
        return 1
    passed = counts.get("successes", 0) + counts.get("expectedFailures", 0)
    failed = (
        counts.get("failures", 0)
        + counts.get("errors", 0)
        + counts.get("unexpectedSuccesses", 0)
    )
    skipped = counts.get("skips", 0)
    print(f"trial: {passed} passed, {failed} failed, {skipped} skipped")
    if failed or int(status) != 0:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
