#!/usr/bin/env bash
# make bench-login: a flood of bad logins against the release gate, and what it costs the rest.
#
#   benches/login_flood.sh [--connections 1000] [--duration 20s] [--delay-ms 0]
#                          [--workers 2] [--queue 32]
#
# Starts a private redis-server, `sessiongate echo` and a release gate on free 127.0.0.1 ports
# with deploy/loadtest/sessiongate.yaml (a users file with real argon2id parameters, the
# production default m=19456,t=2,p=1; login.hashing from --workers/--queue). First times the
# public route alone (wrk, 16 connections, 10 s), then opens --connections connections that
# each send bad logins back to back (every one a new username, so no rate limit refuses it and
# each asks for a password check; --delay-ms paces them) and, while that flood runs, times the
# public route again. Prints the flood's answers (401: hashed and refused, 429: refused because
# the hashing pool and its queue were full), the gate's peak RSS during the flood and the public
# route's p50/p99 with and without the flood, against the targets (RSS < 200 MiB, p99 < 10 ms).
#
# Needs: target/release/sessiongate (cargo build --release --locked), wrk, redis-server,
# redis-cli, curl, python3. SESSIONGATE_BIN overrides the binary. Every process started here is
# stopped on exit, by PID.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"

connections=1000
duration=20s
delay_ms=0
workers=2
queue=32
while [[ $# -gt 0 ]]; do
    case $1 in
    --connections) connections=$2 ;;
    --duration) duration=$2 ;;
    --delay-ms) delay_ms=$2 ;;
    --workers) workers=$2 ;;
    --queue) queue=$2 ;;
    -h | --help)
        sed -n '2,20p' "$0"
        exit 0
        ;;
    *)
        echo "login_flood: unknown argument $1 (see --help)" >&2
        exit 64
        ;;
    esac
    shift 2
done

bin=${SESSIONGATE_BIN:-target/release/sessiongate}
die() {
    echo "login_flood: $*" >&2
    exit 1
}
[[ -x $bin ]] || die "$bin not found: cargo build --release --locked"
for tool in wrk redis-server redis-cli curl python3; do
    command -v "$tool" >/dev/null || die "$tool is required (apt-get install wrk redis-server curl python3)"
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
((connections + 256 < $(ulimit -n))) || die "--connections $connections does not fit under ulimit -n $(ulimit -n)"

work=$(mktemp -d -t sessiongate-flood.XXXXXX)
pids=()
cleanup() {
    local rc=$? pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if ((rc == 0)); then
        rm -rf "$work"
    else
        echo "login_flood: failed; logs kept in $work" >&2
    fi
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
    LT_ECHO_WS="127.0.0.1:$p_ws" LT_USERS_FILE="$work/users.yaml" \
    LT_HASH_WORKERS=$workers LT_HASH_QUEUE=$queue
# Logging as shipped (info): the access log writes one line per flood request, which is part of
# what a flood costs.
"$bin" run -c deploy/loadtest/sessiongate.yaml >"$work/gate.log" 2>&1 &
gate_pid=$!
pids+=("$gate_pid")
wait_for gate curl -sf "http://127.0.0.1:$p_admin/readyz"

public_url="http://127.0.0.1:$p_gate/public/static"
code=$(curl -s -o /dev/null -w '%{http_code}' "$public_url")
[[ $code == 200 ]] || die "the public route answered $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'content-type: application/json' \
    -d '{"username":"lt-user-1","password":"wrong"}' "http://127.0.0.1:$p_gate/_session/login")
[[ $code == 401 ]] || die "a bad login answered $code"

kib() { awk "/^$2:/ { print \$2 }" "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
ms() { awk -v us="$1" 'BEGIN { printf "%.3f ms", us / 1000 }'; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v < t ? "met" : "MISSED") }'; }
# `key=value` pairs of a wrk summary line into the associative array named $2.
# shellcheck disable=SC2034 # written through the nameref
parse() {
    local -n into=$2
    local kv
    for kv in ${1#* }; do
        into[${kv%%=*}]=${kv#*=}
    done
}
public_run() {
    wrk -t1 -c16 -d10s --latency -s deploy/loadtest/summary.lua "$public_url" >"$work/public-$1.txt"
    grep '^SUMMARY ' "$work/public-$1.txt" || die "wrk printed no summary for the public route"
}

declare -A base=() flood=() during=()
parse "$(public_run alone)" base
rss_before=$(kib "$gate_pid" VmRSS)

# Resets VmHWM to the current RSS, so the peak read afterwards is the flood's own.
echo 5 >"/proc/$gate_pid/clear_refs" 2>/dev/null || true
FLOOD_DELAY_MS=$delay_ms wrk -t1 -c"$connections" -d"$duration" --timeout 10s \
    -s benches/login_flood.lua "http://127.0.0.1:$p_gate/" >"$work/flood.txt" 2>&1 &
flood_pid=$!
pids+=("$flood_pid")
# Let every connection open and the pool fill before the public route is timed.
wait_for "the flood" bash -c "ss -Htn state established '( dport = :$p_gate )' | wc -l | awk '{ exit !(\$1 >= $connections) }'"
parse "$(public_run flood)" during
rss_peak_mid=$(kib "$gate_pid" VmHWM)
wait "$flood_pid" || die "the flood's wrk failed: $(cat "$work/flood.txt")"
rss_peak=$(kib "$gate_pid" VmHWM)
line=$(grep '^FLOOD ' "$work/flood.txt") || die "the flood printed no summary: $(cat "$work/flood.txt")"
parse "$line" flood

echo
echo "sessiongate login flood  $(date -u +%Y-%m-%dT%H:%MZ)  $(git rev-parse --short HEAD 2>/dev/null || echo '?')  $(nproc) cores"
echo "gate: release build, threads: 1, login.hashing {workers: $workers, queue: $queue}, argon2id m=19456,t=2,p=1"
echo "flood: $connections connections of back-to-back bad logins for $duration (delay ${delay_ms} ms), each a new username"
echo
printf '%-40s %s\n' "flood logins answered" "${flood[requests]}"
printf '%-40s %s\n' "  401 bad_credentials (hashed)" "${flood[s401]:-0}"
printf '%-40s %s\n' "  429 rate_limited (pool full)" "${flood[s429]:-0}"
other=$((flood[requests] - ${flood[s401]:-0} - ${flood[s429]:-0}))
printf '%-40s %s\n' "  anything else" "$other"
printf '%-40s %s\n' "gate RSS before the flood" "$(mib "$rss_before")"
printf '%-40s %s\n' "gate peak RSS during the flood" "$(mib "$rss_peak")   (target < 200 MiB: $(verdict "$rss_peak" 204800))"
printf '%-40s %s\n' "  (peak while the public route was timed)" "$(mib "$rss_peak_mid")"
printf '%-40s %s\n' "public route alone: req/s, p50, p99" "${base[rps]}, $(ms "${base[p50_us]}"), $(ms "${base[p99_us]}")"
printf '%-40s %s\n' "public route during the flood" "${during[rps]}, $(ms "${during[p50_us]}"), $(ms "${during[p99_us]}")   (p99 target < 10 ms: $(verdict "${during[p99_us]}" 10000))"
errors=$((during[err_connect] + during[err_read] + during[err_write] + during[err_timeout] + during[err_status]))
printf '%-40s %s\n' "public route errors during the flood" "$errors"
