#!/usr/bin/env bash
# txlb's L7 proxy beside HAProxy (mode http, 1 thread, keep-alive, http-reuse),
# nginx proxy_pass (1 worker, upstream keepalive) and stock twisted.web's
# ReverseProxyResource, in one run of the shared harness: pinned (proxy on
# CPU 0, wrk and backends on CPU 1), 4 rounds, c=50 and c=200 keep-alive.
# txlb runs as a production setup would: strict parsing and request counters
# on; the access log off (target txlb-l7) and on, to a file (txlb-l7-log).
#
#   bench/l7.sh                 # the full comparison (about 15 minutes)
#   bench/l7.sh --quick         # smoke run: 1 round of 3 s
#   TXLB_BENCH_ONLY=haproxy-http,txlb-l7 bench/l7.sh
#
# Environment: TXLB_BENCH_HARNESS, TXLB_VENV, TXLB_BENCH_ONLY, TXLB_BENCH_OUT
# as for bench/l4.sh.  All traffic stays on 127.0.0.1; the harness stops every
# process it starts, by PID.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
harness="${TXLB_BENCH_HARNESS:-$repo/../shared/bench/run.sh}"
venv="${TXLB_VENV:-$repo/.venv}"
only="${TXLB_BENCH_ONLY:-haproxy-http,nginx-proxy,tw-l7,txlb-l7,txlb-l7-log}"
out="${TXLB_BENCH_OUT:-/tmp/bench-results/l7-$(date +%Y%m%d-%H%M%S)}"

[ -x "$harness" ] || { echo "no harness at $harness (set TXLB_BENCH_HARNESS)" >&2; exit 2; }
[ -x "$venv/bin/twistd" ] || { echo "no twistd in $venv (set TXLB_VENV)" >&2; exit 2; }

mkdir -p "$out"
log="$out/access.log"
txlb="$venv/bin/twistd -n --pidfile= txlb --layer L7 --port {port} --backends {backends}"

# An access-logging run needs a config file: the flags cannot set access_log.
conf="$out/l7-log.toml"
cat > "$conf" <<TOML
[load_balancer]
address = "127.0.0.1"
port = 19112
layer = "L7"
access_log = "$log"
TOML

"$harness" --suite small --pin on --rounds 4 --only "$only" \
  --target txlb-l7=127.0.0.1:19111 --kind txlb-l7=l7 \
  --start "txlb-l7=$txlb" \
  --target txlb-l7-log=127.0.0.1:19112 --kind txlb-l7-log=l7 \
  --start "txlb-l7-log=$venv/bin/twistd -n --pidfile= txlb --config $conf --backends {backends}" \
  --outdir "$out" "$@"

TXLB_BENCH_LAYER=l7 python3 "$here/medians.py" "$out"
rm -f "$log"
echo
echo "results: $out (summary.md: the harness's own mean [min-max] tables)"
