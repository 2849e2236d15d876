#!/usr/bin/env bash
# txlb's L4 relay beside HAProxy (mode tcp), nginx direct and the stock Twisted
# relays, in one run of the shared harness: pinned (proxy on CPU 0, wrk and
# backends on CPU 1), 4 rounds, c=50 and c=200.  Prints the harness's log, then
# the medians over rounds of requests/s, p99 and the ratios (bench/medians.py).
#
#   bench/l4.sh                          # txlb-l4 beside haproxy-tcp, tw-l4, tw-l4-fast
#   bench/l4.sh --quick                  # smoke run: 1 round of 3 s
#   TXLB_BENCH_ONLY=haproxy-tcp,tw-l4-fast,tw-l4-txlbr bench/l4.sh
#                                        # txlb's reactor under the stock relay
#
# Any further arguments go to the harness (see its --help); a later --only,
# --rounds, --pin ... overrides the one here.
#
# Environment:
#   TXLB_BENCH_HARNESS  the harness's run.sh   (default: ../shared/bench/run.sh
#                                               from the repository root)
#   TXLB_VENV           venv with txlb         (default: .venv in the repository)
#   TXLB_BENCH_ONLY     targets beside direct  (default: see above)
#   TXLB_BENCH_OUT      results directory      (default: /tmp/bench-results/l4-<time>)
#   TXLB_BENCH_BASELINE another txlb source tree (e.g. `git archive HEAD` unpacked):
#                       adds the target txlb-l4-base, the same command with that
#                       tree first on PYTHONPATH, for an A/B within each round
#
# All traffic stays on 127.0.0.1; the harness stops every process it starts.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
harness="${TXLB_BENCH_HARNESS:-$repo/../shared/bench/run.sh}"
venv="${TXLB_VENV:-$repo/.venv}"
only="${TXLB_BENCH_ONLY:-haproxy-tcp,tw-l4,tw-l4-fast,txlb-l4}"
baseline="${TXLB_BENCH_BASELINE:-}"
out="${TXLB_BENCH_OUT:-/tmp/bench-results/l4-$(date +%Y%m%d-%H%M%S)}"

[ -x "$harness" ] || { echo "no harness at $harness (set TXLB_BENCH_HARNESS)" >&2; exit 2; }
[ -x "$venv/bin/twistd" ] || { echo "no twistd in $venv (set TXLB_VENV)" >&2; exit 2; }

base_args=()
if [ -n "$baseline" ]; then
  [ -f "$baseline/txlb/protocols/tcp.py" ] || { echo "no txlb source tree at $baseline" >&2; exit 2; }
  baseline="$(cd "$baseline" && pwd)"
  only="$only,txlb-l4-base"
  base_args=(--target txlb-l4-base=127.0.0.1:19103 --kind txlb-l4-base=l4
    --start "txlb-l4-base=env PYTHONPATH=$baseline $venv/bin/twistd -n --pidfile= txlb --port {port} --backends {backends}")
fi

"$harness" --suite small --pin on --rounds 4 --only "$only" \
  --target txlb-l4=127.0.0.1:19101 --kind txlb-l4=l4 \
  --start "txlb-l4=$venv/bin/twistd -n --pidfile= txlb --port {port} --backends {backends}" \
  --target tw-l4-txlbr=127.0.0.1:19102 --kind tw-l4-txlbr=l4 \
  --start "tw-l4-txlbr=$venv/bin/python $here/tw_l4_txlbreactor.py --bench {bench} --listen {host}:{port} --backends {backends}" \
  ${base_args[@]+"${base_args[@]}"} --outdir "$out" "$@"

python3 "$here/medians.py" "$out"
echo
echo "results: $out (summary.md: the harness's own mean [min-max] tables)"
