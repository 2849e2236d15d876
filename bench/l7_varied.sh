#!/bin/bash
# HAProxy (mode http) and txlb's L7 proxy with heads that never repeat:
# wrk -c50 with the same head every time (as l7.sh) and with
# bench/varied.lua, 3 rounds, pinned as l7.sh pins (the proxy on CPU 0, wrk
# and the nginx backends on CPU 1), on the shared harness's configurations.
# Prints per run: requests/s, p99 and the proxy's CPU µs per request (from
# /proc/PID/stat).  Needs what ../shared/bench/setup.sh installs; the ports
# of l7.sh (18081-18083, 19001, 19111) must be free.
#
#   bench/l7_varied.sh                       # 3 rounds, about 4 minutes
#   TXLB_BENCH_ROUNDS=1 bench/l7_varied.sh
set -u
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
conf="${TXLB_BENCH_CONF:-$PWD/../shared/bench/conf}"
venv="${TXLB_VENV:-$PWD/.venv}"
mkdir -p /tmp/bench-backend/www /tmp/bench-haproxy-http
B=127.0.0.1:18081,127.0.0.1:18082,127.0.0.1:18083
HZ=$(getconf CLK_TCK)
taskset -c 1 nginx -c $conf/nginx-backend.conf & np=$!
sleep 1
cpu() { awk -v hz=$HZ '{print ($14+$15)/hz}' /proc/$1/stat; }
run() { # name port pid
  for mode in same varied; do
    script=""; [ $mode = varied ] && script="-s bench/varied.lua"
    taskset -c 1 wrk -t1 -c50 -d3s $script http://127.0.0.1:$2/ >/dev/null
    c0=$(cpu $3)
    out=$(taskset -c 1 wrk -t1 -c50 -d10s --latency $script http://127.0.0.1:$2/)
    c1=$(cpu $3)
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    bad=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
    us=$(awk -v a=$c0 -v b=$c1 -v n=$n 'BEGIN {printf "%.1f", (b-a)*1e6/n}')
    echo "$1 $mode rps=$rps p99=$p99 cpu_us_per_req=$us $bad"
  done
}
for round in $(seq "${TXLB_BENCH_ROUNDS:-3}"); do
  taskset -c 0 haproxy -f $conf/haproxy-http.cfg & hp=$!
  sleep 1; run haproxy-http 19001 $hp; kill $hp 2>/dev/null; wait $hp 2>/dev/null
  taskset -c 0 $venv/bin/twistd -n --pidfile= txlb --layer L7 --port 19111 --backends $B >/dev/null 2>&1 & tp=$!
  sleep 3; run txlb-l7 19111 $tp; kill $tp 2>/dev/null; wait $tp 2>/dev/null
done
kill $np 2>/dev/null; wait $np 2>/dev/null
