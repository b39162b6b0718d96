#!/usr/bin/env bash
# Ticket flood (`make bench-tickets`): one gate, 1,000,000 requests each with a distinct valid
# ticket of one live session, to show the verified-ticket cache bounded by bytes
# (tickets.cache_max_bytes) rather than by count: the gate's RSS stays flat past the budget,
# and per-window p99 latency shows no cliff when eviction starts.
#
#   benches/flood.sh [--requests 1000000] [--cache 32MiB] [--connections 32]
#
# Needs target/release/sessiongate and target/release/examples/ticket_flood (cargo build
# --release --locked --bin sessiongate --example ticket_flood), redis-server, curl, python3.
# Every process started here is stopped on exit, by PID. Bounded: one pass of the requests.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"
requests=1000000
cache=32MiB
connections=32
while [[ $# -gt 0 ]]; do
    case $1 in
    --requests) requests=$2 ;;
    --cache) cache=$2 ;;
    --connections) connections=$2 ;;
    -h | --help)
        sed -n '2,12p' "$0"
        exit 0
        ;;
    *)
        echo "flood: unknown argument $1 (see --help)" >&2
        exit 64
        ;;
    esac
    shift 2
done
bin=${SESSIONGATE_BIN:-target/release/sessiongate}
flood=${TICKET_FLOOD:-target/release/examples/ticket_flood}
die() {
    echo "flood: $*" >&2
    exit 1
}
[[ -x $bin ]] || die "no $bin: cargo build --release --locked --bin sessiongate"
[[ -x $flood ]] || die "no $flood: cargo build --release --locked --example ticket_flood"

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
read -r p_redis p_http p_ws p_gate p_admin < <(free_ports 5)
redis-server --port "$p_redis" --bind 127.0.0.1 --save "" --appendonly no \
    --protected-mode no >"$work/redis.log" 2>&1 &
pids+=("$!")
wait_for redis-server redis-cli -p "$p_redis" ping
"$bin" echo --http "127.0.0.1:$p_http" --ws "127.0.0.1:$p_ws" >"$work/echo.log" 2>&1 &
pids+=("$!")
wait_for "echo upstream" tcp_open "$p_http"
SESSIONGATE_BIN=$bin deploy/loadtest/gen_users.sh 1 "$work/users.yaml" 2>/dev/null
SESSIONGATE_KEY=$("$bin" keygen)
export SESSIONGATE_KEY LT_LISTEN="127.0.0.1:$p_gate" LT_ADMIN="127.0.0.1:$p_admin" \
    LT_REDIS_URL="redis://127.0.0.1:$p_redis/0" LT_ECHO_HTTP="127.0.0.1:$p_http" \
    LT_ECHO_WS="127.0.0.1:$p_ws" LT_USERS_FILE="$work/users.yaml" LT_TICKET_CACHE=$cache
SESSIONGATE_LOG=warn "$bin" run -c deploy/loadtest/sessiongate.yaml >"$work/gate.log" 2>&1 &
gate_pid=$!
pids+=("$gate_pid")
wait_for gate curl -sf "http://127.0.0.1:$p_admin/readyz"
GATE_URL="http://127.0.0.1:$p_gate" deploy/loadtest/login_users.sh 1 "$work/ticket.txt" >/dev/null
echo "ticket flood: $requests distinct tickets, tickets.cache_max_bytes $cache, $connections connections"
"$flood" --url "http://127.0.0.1:$p_gate/controller/echo/static" --ticket "$(head -n1 "$work/ticket.txt")" \
    --requests "$requests" --connections "$connections" --gate-pid "$gate_pid"
