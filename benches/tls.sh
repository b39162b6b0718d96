#!/usr/bin/env bash
# make bench, second part: the gate's plain and TLS listeners side by side, on loopback, in
# one run (benches/bench.sh is the first part: the gate against its engine and nginx).
#
#   benches/tls.sh [--duration 5s] [--warmup 1s] [--rounds 4] [--connections 64] [--threads 2] [--ws N]
#
# Starts a private redis-server, `sessiongate echo` (the upstream) and two release gates, each
# on free 127.0.0.1 ports, with deploy/loadtest/sessiongate.yaml (threads: 1, touch_interval
# 30s, a public route and a ticket-checked route to the same upstream): one with the liveness
# cache on (store.cache 1s), one with it off (0s). Logs in a few users, then runs wrk against,
# in turn: the upstream directly, the gate's public route, its ticket route, and the ticket
# route of the gate without cache, all at the upstream's fixed-answer path `/static`. The four
# targets are measured in interleaved rounds (the order reversed every other round), so a noisy
# moment on a shared machine hits them all alike; it prints each round's ratios and the median
# of the rounds: requests/s, p50/p99 latency, the gate's peak RSS.
#
# The gate also has a TLS listener (a throwaway self-signed certificate from
# deploy/tls/make-self-signed.sh): after the main table, interleaved rounds time its ticket route
# over HTTP/1.1 keep-alive (wrk) and HTTP/2 (h2load, one stream per connection, so the
# concurrency is wrk's), next to the plain listener of the same gate, and new connections per
# second on the public route with `Connection: close`, plain (TCP connects) and TLS (full
# handshakes: wrk resumes no sessions).
#
# --ws N then restarts the gate and holds N idle authenticated WebSockets through it (two
# ws_load client processes), and reports the gate's RSS per connection. The gate holds two
# sockets per WebSocket, so N is bounded by its open-files limit (just under 10,000 at 20,000).
#
# Needs: target/release/sessiongate (cargo build --release --locked), wrk (with TLS), h2load
# (nghttp2-client), openssl, redis-server, curl, python3; with --ws also target/release/examples/ws_load
# (cargo build --release --locked --example ws_load).
# SESSIONGATE_BIN and WS_LOAD override the binaries. Every process started here is stopped on
# exit, by PID.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"

duration=5s
warmup=1s
rounds=4
connections=64
threads=2
ws=0
users=4
while [[ $# -gt 0 ]]; do
    case $1 in
    --duration) duration=$2 ;;
    --warmup) warmup=$2 ;;
    --rounds) rounds=$2 ;;
    --connections) connections=$2 ;;
    --threads) threads=$2 ;;
    --ws) ws=$2 ;;
    -h | --help)
        sed -n '2,20p' "$0"
        exit 0
        ;;
    *)
        echo "bench: unknown argument $1 (see --help)" >&2
        exit 64
        ;;
    esac
    shift 2
done

bin=${SESSIONGATE_BIN:-target/release/sessiongate}
ws_load=${WS_LOAD:-target/release/examples/ws_load}
die() {
    echo "bench: $*" >&2
    exit 1
}
[[ -x $bin ]] || die "$bin not found: cargo build --release --locked"
for tool in wrk h2load openssl redis-server redis-cli curl python3; do
    command -v "$tool" >/dev/null || die "$tool is required (apt-get install wrk nghttp2-client openssl redis-server curl python3)"
done
if ((ws > 0)); then
    [[ -x $ws_load ]] || die "$ws_load not found: cargo build --release --locked --example ws_load"
fi

# Sockets for the WebSocket check: the soft limit up to the hard one, where allowed. The gate
# holds two per WebSocket (client and upstream side) plus a few dozen of its own; refuse a count
# that cannot fit before anything starts.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if ((ws > 0 && 2 * ws + 64 > $(ulimit -n))); then
    die "--ws $ws needs about $((2 * ws + 64)) open files in the gate, above ulimit -n $(ulimit -n); the most that fits is about $((($(ulimit -n) - 64) / 2)) (try --ws 9000)"
fi

work=$(mktemp -d -t sessiongate-bench.XXXXXX)
pids=()
gate_pid=
cleanup() {
    local rc=$? pid
    [[ -n $gate_pid ]] && pids+=("$gate_pid")
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if ((rc == 0)); then
        rm -rf "$work"
    else
        echo "bench: failed; logs kept in $work" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Eight distinct free loopback ports, all bound at once so none is handed out twice.
read -r p_redis p_http p_ws p_gate p_admin p_gate0 p_admin0 p_tls < <(free_ports 8)


redis-server --port "$p_redis" --bind 127.0.0.1 --save "" --appendonly no \
    --protected-mode no >"$work/redis.log" 2>&1 &
pids+=("$!")
wait_for redis-server redis-cli -p "$p_redis" ping

"$bin" echo --http "127.0.0.1:$p_http" --ws "127.0.0.1:$p_ws" >"$work/echo.log" 2>&1 &
pids+=("$!")
wait_for "echo upstream" tcp_open "$p_http"

SESSIONGATE_BIN=$bin deploy/loadtest/gen_users.sh "$users" "$work/users.yaml" 2>/dev/null
export SESSIONGATE_KEY LT_LISTEN="127.0.0.1:$p_gate" LT_ADMIN="127.0.0.1:$p_admin" \
    LT_REDIS_URL="redis://127.0.0.1:$p_redis/0" LT_ECHO_HTTP="127.0.0.1:$p_http" \
    LT_ECHO_WS="127.0.0.1:$p_ws" LT_USERS_FILE="$work/users.yaml"
SESSIONGATE_KEY=$("$bin" keygen)

# The measured gate: the load-test config plus a TLS listener.
deploy/tls/make-self-signed.sh "$work/tls" >/dev/null
{
    cat deploy/loadtest/sessiongate.yaml
    printf 'tls:\n  listen: ["127.0.0.1:%s"]\n  certificates:\n    - {cert_file: %s, key_file: %s}\n' \
        "$p_tls" "$work/tls/tls.crt" "$work/tls/tls.key"
} >"$work/gate.yaml"
start_gate() {
    "$bin" run -c "$work/gate.yaml" >>"$work/gate.log" 2>&1 &
    gate_pid=$!
    wait_for gate curl -sf "http://127.0.0.1:$p_admin/readyz"
}
stop_gate() {
    kill -TERM "$gate_pid" 2>/dev/null || true
    wait "$gate_pid" 2>/dev/null || true
    gate_pid=
}
start_gate
# The same gate with the liveness cache off: one Redis round trip (EVALSHA) per request.
LT_STORE_CACHE=0s LT_LISTEN="127.0.0.1:$p_gate0" LT_ADMIN="127.0.0.1:$p_admin0" \
    "$bin" run -c deploy/loadtest/sessiongate.yaml >>"$work/gate-nocache.log" 2>&1 &
nocache_pid=$!
pids+=("$nocache_pid")
wait_for "gate (no cache)" curl -sf "http://127.0.0.1:$p_admin0/readyz"

GATE_URL="http://127.0.0.1:$p_gate" deploy/loadtest/login_users.sh "$users" "$work/tickets.txt" >"$work/login.txt"
ticket=$(head -n1 "$work/tickets.txt")
auth="Authorization: Bearer $ticket"

# The timed path is the echo upstream's `/static`: a fixed answer whatever the headers, so the
# upstream's work does not grow with the identity headers the ticket route injects (the JSON
# picture at any other path costs the shared CPU about 10 % more on the ticket route).
direct_url="http://127.0.0.1:$p_http/static"
public_url="http://127.0.0.1:$p_gate/public/static"
ticket_url="http://127.0.0.1:$p_gate/controller/echo/static"
nocache_url="http://127.0.0.1:$p_gate0/controller/echo/static"

# Each route must answer 200 before it is timed: a fast stream of 401s would look like a win.
for url in "$direct_url" "$public_url" "$nocache_url" "$ticket_url"; do
    code=$(curl -s -o "$work/probe.json" -w '%{http_code}' -H "$auth" "$url")
    [[ $code == 200 ]] || die "$url answered $code: $(head -c 300 "$work/probe.json")"
done
curl -s -o "$work/probe.json" -H "$auth" "http://127.0.0.1:$p_gate/controller/echo/hello"
grep -qi '"x-session-id"' "$work/probe.json" || die "the ticket route did not inject X-Session-Id"

redis_commands() { redis-cli -p "$p_redis" info stats | awk -F: '/^total_commands_processed:/ { print $2 + 0 }'; }
kib() { awk "/^$2:/ { print \$2 }" "/proc/$1/status"; }

declare -A rps p50 p99 rss cmds
# One measured wrk run of target $1 in round $3, after a warm-up that fills the gate's upstream
# pool and session cache. The same Authorization header goes to every target so wrk's work is
# identical.
# shellcheck disable=SC2034 # the tables are read through median_of's nameref
measure() {
    local name=$1 url=$2 round=$3 pid=$4 hdr=${5:-$auth} line kv c0 c1
    wrk -t"$threads" -c"$connections" -d"$warmup" -H "$hdr" "$url" >/dev/null
    if [[ -n $pid ]]; then
        # Resets VmHWM to the current RSS, so the peak is this run's own (Linux >= 4.0).
        echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
    fi
    c0=$(redis_commands)
    wrk -t"$threads" -c"$connections" -d"$duration" --latency -H "$hdr" \
        -s deploy/loadtest/summary.lua "$url" >"$work/wrk-$name-$round.txt"
    c1=$(redis_commands)
    line=$(grep '^SUMMARY ' "$work/wrk-$name-$round.txt") || die "wrk printed no summary for $name"
    declare -A s=()
    for kv in ${line#SUMMARY }; do
        s[${kv%%=*}]=${kv#*=}
    done
    local errors=$((s[err_connect] + s[err_read] + s[err_write] + s[err_timeout] + s[err_status]))
    ((errors == 0)) || die "$name: $errors failed requests (see $work/wrk-$name-$round.txt)"
    rps[$name,$round]=${s[rps]}
    p50[$name,$round]=${s[p50_us]}
    p99[$name,$round]=${s[p99_us]}
    # The INFO call itself counts one command.
    cmds[$name,$round]=$(awk -v d="$((c1 - c0 - 1))" -v n="${s[requests]}" 'BEGIN { printf "%.4f", d / n }')
    if [[ -n $pid ]]; then
        rss[$name,$round]=$(kib "$pid" VmHWM)
    else
        rss[$name,$round]=0
    fi
}

# The same figures as measure's, from h2load over HTTP/2 (TLS, ALPN h2): requests/s from its
# summary, p50/p99 from its per-request log (microseconds, third column).
# shellcheck disable=SC2034 # the tables are read through median_of's nameref
measure_h2() {
    local name=$1 url=$2 round=$3 out log failed
    out="$work/h2load-$name-$round.txt" log="$work/h2load-$name-$round.log"
    h2load -c "$connections" -t "$threads" -m 1 --warm-up-time="$warmup" -D "$duration" \
        -H "$auth" --log-file="$log" "$url" >"$out" 2>&1 || die "h2load failed for $name (see $out)"
    grep -qi 'application protocol: h2' "$out" || die "$name: h2load did not negotiate h2 (see $out)"
    failed=$(awk '/^requests:/ { print $10 + $12 + $14 }' "$out")
    ((failed == 0)) || die "$name: $failed failed requests (see $out)"
    awk '$2 != 200 { bad++ } END { exit bad > 0 }' "$log" || die "$name: answers other than 200 (see $log)"
    rps[$name,$round]=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$out")
    p50[$name,$round]=$(cut -f3 "$log" | sort -n | awk '{ v[NR] = $1 } END { print v[int(NR * 0.50) + 1] }')
    p99[$name,$round]=$(cut -f3 "$log" | sort -n | awk '{ v[NR] = $1 } END { i = int(NR * 0.99) + 1; if (i > NR) i = NR; print v[i] }')
    rss[$name,$round]=0
    cmds[$name,$round]=0
}

ms() { awk -v us="$1" 'BEGIN { printf "%.3f ms", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=" ? v >= t : v < t); print (ok ? "met" : "MISSED") }'; }
# The median of its arguments (the mean of the two middle ones for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m + 0 }'
}
# The median over the rounds of one figure of one target: median_of rps ticket
median_of() {
    local -n table=$1
    local vals=() r
    for ((r = 1; r <= rounds; r++)); do vals+=("${table[$2,$r]}"); done
    median "${vals[@]}"
}

echo
echo "sessiongate bench  $(date -u +%Y-%m-%dT%H:%MZ)  $(git rev-parse --short HEAD 2>/dev/null || echo '?')  $(nproc) cores"
echo "wrk $threads threads, $connections connections, $duration per target after a $warmup warm-up, $rounds interleaved rounds; loopback"
echo "gate: release build, threads: 1, touch_interval 30s; ticket route with the liveness cache on (store.cache 1s,"
echo "pub/sub invalidation) and off (store.cache 0s: one Redis round trip per request)"
echo
printf '%-6s %10s %10s %10s %10s %14s %14s %16s\n' round direct public ticket nocache ticket/public nocache/public "p99 added (ms)"
ratios_tp=() ratios_np=() added=()
for ((r = 1; r <= rounds; r++)); do
    # Odd rounds go in one order, even rounds in the other, so a drift over a round
    # (warming up, a background job) does not always favour the same target.
    order=(direct public ticket nocache)
    ((r % 2 == 0)) && order=(nocache ticket public direct)
    for name in "${order[@]}"; do
        case $name in
        direct) measure direct "$direct_url" "$r" "" ;;
        public) measure public "$public_url" "$r" "$gate_pid" ;;
        ticket) measure ticket "$ticket_url" "$r" "$gate_pid" ;;
        nocache) measure nocache "$nocache_url" "$r" "$nocache_pid" ;;
        esac
    done
    ratios_tp+=("$(ratio "${rps[ticket,$r]}" "${rps[public,$r]}")")
    ratios_np+=("$(ratio "${rps[nocache,$r]}" "${rps[public,$r]}")")
    added+=("$(awk -v a="${p99[ticket,$r]}" -v b="${p99[direct,$r]}" 'BEGIN { printf "%.3f", (a - b) / 1000 }')")
    printf '%-6s %10.0f %10.0f %10.0f %10.0f %14s %14s %16s\n' "$r" "${rps[direct,$r]}" "${rps[public,$r]}" \
        "${rps[ticket,$r]}" "${rps[nocache,$r]}" "${ratios_tp[-1]}" "${ratios_np[-1]}" "${added[-1]}"
done

echo
echo "median of $rounds rounds"
printf '%-22s %12s %11s %11s %16s %12s\n' target requests/s p50 p99 "gate peak RSS" "redis cmd/req"
for name in direct public ticket nocache; do
    case $name in
    direct) label="direct to upstream" ;;
    public) label="gate, public route" ;;
    ticket) label="gate, ticket route" ;;
    nocache) label="gate, ticket, no cache" ;;
    esac
    peak=-
    [[ $name == direct ]] || peak=$(awk -v k="$(median_of rss "$name")" 'BEGIN { printf "%.1f MiB", k / 1024 }')
    printf '%-22s %12s %11s %11s %16s %12s\n' "$label" "$(median_of rps "$name")" "$(ms "$(median_of p50 "$name")")" \
        "$(ms "$(median_of p99 "$name")")" "$peak" "$(median_of cmds "$name")"
done
ticket_public=$(median "${ratios_tp[@]}")
nocache_public=$(median "${ratios_np[@]}")
public_direct=$(ratio "$(median_of rps public)" "$(median_of rps direct)")
added_p99=$(median "${added[@]}")
echo
printf '%-38s %s\n' "ticket / public throughput" "$ticket_public   (median of rounds; target >= 0.85: $(verdict "$ticket_public" 0.85 '>='))"
printf '%-38s %s\n' "ticket (no cache) / public throughput" "$nocache_public   (median of rounds; target >= 0.85: $(verdict "$nocache_public" 0.85 '>='))"
printf '%-38s %s\n' "public / direct throughput" "$public_direct"
printf '%-38s %s\n' "p99 added latency (ticket - direct)" "$added_p99 ms   (median of rounds; target < 1 ms: $(verdict "$added_p99" 1 '<'))"

tls_ticket_url="https://127.0.0.1:$p_tls/controller/echo/static"
tls_public_url="https://127.0.0.1:$p_tls/public/static"
code=$(curl -sk -o "$work/probe.json" -w '%{http_code}' -H "$auth" "$tls_ticket_url")
[[ $code == 200 ]] || die "$tls_ticket_url answered $code: $(head -c 300 "$work/probe.json")"
echo
echo "TLS on the same gate: ticket route over plain HTTP/1.1, TLS HTTP/1.1 and TLS HTTP/2 (keep-alive);"
echo "new connections per second on the public route (Connection: close), plain and TLS (a full handshake each)"
printf '%-6s %10s %10s %10s %12s %12s %12s %14s\n' round plain tls-h1 tls-h2 tls-h1/plain tls-h2/plain "plain conn/s" "TLS handsh./s"
tls_h1_ratio=() tls_h2_ratio=()
for ((r = 1; r <= rounds; r++)); do
    order=(plain tls_h1 tls_h2 conn_plain conn_tls)
    ((r % 2 == 0)) && order=(conn_tls conn_plain tls_h2 tls_h1 plain)
    for name in "${order[@]}"; do
        case $name in
        plain) measure plain "$ticket_url" "$r" "$gate_pid" ;;
        tls_h1) measure tls_h1 "$tls_ticket_url" "$r" "$gate_pid" ;;
        tls_h2) measure_h2 tls_h2 "$tls_ticket_url" "$r" ;;
        conn_plain) measure conn_plain "$public_url" "$r" "$gate_pid" "Connection: close" ;;
        conn_tls) measure conn_tls "$tls_public_url" "$r" "$gate_pid" "Connection: close" ;;
        esac
    done
    tls_h1_ratio+=("$(ratio "${rps[tls_h1,$r]}" "${rps[plain,$r]}")")
    tls_h2_ratio+=("$(ratio "${rps[tls_h2,$r]}" "${rps[plain,$r]}")")
    printf '%-6s %10.0f %10.0f %10.0f %12s %12s %12.0f %14.0f\n' "$r" "${rps[plain,$r]}" "${rps[tls_h1,$r]}" \
        "${rps[tls_h2,$r]}" "${tls_h1_ratio[-1]}" "${tls_h2_ratio[-1]}" "${rps[conn_plain,$r]}" "${rps[conn_tls,$r]}"
done
echo
echo "median of $rounds rounds"
printf '%-30s %12s %11s %11s\n' target requests/s p50 p99
for name in plain tls_h1 tls_h2 conn_plain conn_tls; do
    case $name in
    plain) label="ticket, plain HTTP/1.1" ;;
    tls_h1) label="ticket, TLS HTTP/1.1" ;;
    tls_h2) label="ticket, TLS HTTP/2" ;;
    conn_plain) label="public, new TCP conn each" ;;
    conn_tls) label="public, new TLS conn each" ;;
    esac
    printf '%-30s %12s %11s %11s\n' "$label" "$(median_of rps "$name")" "$(ms "$(median_of p50 "$name")")" \
        "$(ms "$(median_of p99 "$name")")"
done
printf '%-38s %s\n' "TLS HTTP/1.1 / plain throughput" "$(median "${tls_h1_ratio[@]}")   (median of rounds)"
printf '%-38s %s\n' "TLS HTTP/2 / plain throughput" "$(median "${tls_h2_ratio[@]}")   (median of rounds)"
printf '%-38s %s\n' "TLS handshakes per second" "$(median_of rps conn_tls)   (median of rounds, new connection per request)"

if ((ws > 0)); then
    # A fresh gate, so the figure is the WebSockets' own and not the HTTP runs' leftovers.
    stop_gate
    start_gate
    echo
    echo "WebSocket memory check: $ws idle authenticated connections, 2 client processes"
    GATE_PID=$gate_pid WS_URL="ws://127.0.0.1:$p_gate/gateway/chat" ROUND_TRIPS=1 PROCESSES=2 \
        IDLE=5 WS_LOAD=$ws_load deploy/loadtest/run_ws.sh "$ws" "$work/tickets.txt" >"$work/ws.txt" 2>&1 ||
        {
            cat "$work/ws.txt"
            die "WebSocket check failed"
        }
    line=$(grep '^WSRESULT ' "$work/ws.txt") || die "run_ws.sh printed no result"
    # run_ws.sh's own table (round trips, RTT, RSS samples), then the figures against the target.
    sed -n '/^websocket load summary/,$p' "$work/ws.txt" | grep -v '^WSRESULT '
    echo
    declare -A w=()
    for kv in ${line#WSRESULT }; do
        w[${kv%%=*}]=${kv#*=}
    done
    per=$(awk -v a="${w[rss_idle_kib]}" -v b="${w[rss_before_kib]}" -v n="${w[opened]}" 'BEGIN { printf "%.1f", (a - b) / n }')
    at10k=$(awk -v b="${w[rss_before_kib]}" -v p="$per" 'BEGIN { printf "%.1f", (b + 10000 * p) / 1024 }')
    printf '%-36s %s\n' "connections open / failed" "${w[opened]} / ${w[failed]}"
    printf '%-36s %s\n' "gate RSS before" "$(awk -v k="${w[rss_before_kib]}" 'BEGIN { printf "%.1f MiB", k / 1024 }')"
    printf '%-36s %s\n' "gate RSS with all open, idle 5 s" "$(awk -v k="${w[rss_idle_kib]}" 'BEGIN { printf "%.1f MiB", k / 1024 }')"
    printf '%-36s %s\n' "gate RSS per WebSocket" "$per KiB"
    printf '%-36s %s\n' "gate RSS at 10,000 (extrapolated)" "$at10k MiB   (target < 200 MiB: $(verdict "$at10k" 200 '<'))"
fi
