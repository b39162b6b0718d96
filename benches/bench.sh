#!/usr/bin/env bash
# make bench: the release gate against its engine and against what users would build instead,
# on loopback, in one run.
#
#   benches/bench.sh [--duration 5s] [--warmup 1s] [--rounds 5] [--connections "32 64"]
#                    [--threads 1] [--ws N] [--profile ROW] [--callgrind ROW]
#
# Starts, each on free 127.0.0.1 ports and each stopped by PID on exit:
#   - a private redis-server, and `sessiongate echo` (the gateway route's WebSocket upstream);
#   - the upstream of every HTTP row: nginx `return 200` (one worker, no access log), the same
#     fast fixed answer for all, so every row's difference is the proxy's own;
#   - stock Pingora: target/release/examples/stock_proxy (Pingora 0.9.1, threads 1, no work
#     stealing, jemalloc, fat LTO, no logs);
#   - nginx as a plain proxy; nginx + ngx_lua + Redis as a session gate (benches/nginx/gate.lua:
#     HS256 ticket check, one HMGET, two headers); nginx `auth_request` to a second nginx that
#     runs the same Lua check (the forward-auth architecture). Each nginx runs one worker with
#     master_process off (so its PID is the one that works), keep-alive to the upstream, and,
#     where it proxies, a buffered access log (buffer=64k flush=1s), as it would be deployed;
#   - two release gates with deploy/loadtest/sessiongate.yaml (threads: 1, its default access
#     log at info): one with the liveness cache on (store.cache 1s), one with it off (0s).
# Logs in a few users; every row gets the same ticket in `Authorization`, so wrk's work is the
# same. The targets are measured in interleaved rounds at each connection count (the order
# reversed every other round), so a noisy moment on the shared machine hits them all alike.
# For each row: requests/s, p50/p99, and CPU per request of the proxy's own process(es), of
# the upstream and of Redis (utime+stime from /proc/PID/stat over the measured requests); then
# the medians and the ratios the issue sets targets for.
#
# --only "stock public ..." times only those rows (the ratios then print only where both sides
# ran).
#
# --profile TARGET (stock, public, ticket, nocache, nginx, lua, areq) instead profiles that one
# row: wrk -c64 for 12 s while `perf record -e cpu-clock -F 999 --call-graph dwarf` samples its
# process for 8 s (this VM has no hardware counters; DWARF unwinding sees through frames built
# without frame pointers, as the release build's are), then prints the top of `perf report
# --no-children --sort dso,symbol` and keeps perf.data in the work directory it names.
#
# --callgrind TARGET (stock, public, ticket, nocache) instead counts that row's instructions:
# a second instance of its proxy (stock_proxy, or the release gate with the same config, Redis
# and key) is started under `valgrind --tool=callgrind`, warmed with CALLGRIND_WARMUP requests
# (default 1000), its counters zeroed, then sent CALLGRIND_REQUESTS (default 5000) keep-alive
# requests by `h2load --h1 -c 16`, and dumped. Prints instructions per request (every thread of
# the process, the log flusher included) and the functions with the most self cost per request
# (benches/callgrind_top.py); the dump stays in
# the work directory it names. Instruction counts do not depend on the machine's load, so
# before/after figures from a busy machine still compare.
#
# --ws N then restarts the gate and holds N idle authenticated WebSockets through it (two
# ws_load client processes), and reports the gate's RSS per connection. The gate holds two
# sockets per WebSocket, so N is bounded by its open-files limit (just under 10,000 at 20,000).
#
# Needs: target/release/sessiongate and target/release/examples/stock_proxy (cargo build
# --release --locked --bin sessiongate --example stock_proxy), wrk, redis-server, nginx with
# libnginx-mod-http-lua and lua-nginx-redis (make deps installs them), curl, python3; with --ws
# also target/release/examples/ws_load. SESSIONGATE_BIN, STOCK_PROXY and WS_LOAD override the
# binaries; STOCK_ARGS adds arguments to stock_proxy (see examples/stock_proxy.rs).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"

duration=5s
warmup=1s
rounds=5
conns_list="32 64"
threads=1
ws=0
profile=
callgrind=
only=
users=4
while [[ $# -gt 0 ]]; do
    case $1 in
    --duration) duration=$2 ;;
    --warmup) warmup=$2 ;;
    --rounds) rounds=$2 ;;
    --connections) conns_list=$2 ;;
    --threads) threads=$2 ;;
    --ws) ws=$2 ;;
    --profile) profile=$2 ;;
    --callgrind) callgrind=$2 ;;
    --only) only=$2 ;;
    -h | --help)
        sed -n '2,58p' "$0"
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
stock_bin=${STOCK_PROXY:-target/release/examples/stock_proxy}
ws_load=${WS_LOAD:-target/release/examples/ws_load}
nginx_modules=/usr/lib/nginx/modules
die() {
    echo "bench: $*" >&2
    exit 1
}
[[ -x $bin ]] || die "$bin not found: cargo build --release --locked --bin sessiongate"
[[ -x $stock_bin ]] || die "$stock_bin not found: cargo build --release --locked --example stock_proxy"
for tool in wrk redis-server redis-cli curl python3 nginx; do
    command -v "$tool" >/dev/null || die "$tool is required (make deps)"
done
[[ -f $nginx_modules/ngx_http_lua_module.so && -f /usr/share/lua/5.1/nginx/redis.lua ]] ||
    die "nginx's Lua module or lua-nginx-redis is missing (make deps: libnginx-mod-http-lua lua-nginx-redis)"
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

# Thirteen distinct free loopback ports, all bound at once so none is handed out twice.
read -r p_redis p_http p_ws p_gate p_admin p_gate0 p_admin0 p_up p_stock p_nginx p_lua p_areq \
    p_auth < <(free_ports 13)


redis-server --port "$p_redis" --bind 127.0.0.1 --save "" --appendonly no \
    --protected-mode no >"$work/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
wait_for redis-server redis-cli -p "$p_redis" ping

"$bin" echo --http "127.0.0.1:$p_http" --ws "127.0.0.1:$p_ws" >"$work/echo.log" 2>&1 &
pids+=("$!")
wait_for "echo upstream" tcp_open "$p_http"

# One nginx, named $1, serving the http{} body on stdin; its PID goes to nginx_pid.
# master_process off: one process does all the work, so its /proc stat is the whole cost.
start_nginx() {
    local name=$1 dir="$work/nginx-$1"
    mkdir -p "$dir/tmp"
    {
        cat <<CONF
load_module $nginx_modules/ndk_http_module.so;
load_module $nginx_modules/ngx_http_lua_module.so;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    lua_package_path "$root/benches/nginx/?.lua;/usr/share/lua/5.1/?.lua;;";
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    access_log $dir/access.log combined buffer=64k flush=1s;
CONF
        cat
        echo "}"
    } >"$dir/nginx.conf"
    nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' >"$dir/stderr.log" 2>&1 &
    nginx_pid=$!
    pids+=("$nginx_pid")
}
# Keep-alive to an upstream at port $2 under the name $1 (Pingora pools its connections too).
upstream_block() {
    cat <<CONF
    upstream $1 { server 127.0.0.1:$2; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }
    proxy_http_version 1.1;
    proxy_set_header Connection "";
CONF
}

# The upstream of every HTTP row: a fixed answer; /hello echoes the identity it was given, so
# each route can be checked for it before it is timed.
start_nginx upstream <<CONF
    access_log off;
    server {
        listen 127.0.0.1:$p_up;
        location / { default_type text/plain; return 200 "ok\n"; }
        location = /hello { default_type text/plain; return 200 "x-session-id=\$http_x_session_id\n"; }
    }
CONF
up_pid=$nginx_pid
wait_for "upstream nginx" tcp_open "$p_up"

# STOCK_ARGS: extra arguments, e.g. "--like-gate timeouts,xf" to price what the gate adds.
read -r -a stock_args <<<"${STOCK_ARGS:-}"
"$stock_bin" --listen "127.0.0.1:$p_stock" --upstream "127.0.0.1:$p_up" "${stock_args[@]}" >"$work/stock.log" 2>&1 &
stock_pid=$!
pids+=("$stock_pid")

start_nginx proxy <<CONF
$(upstream_block up "$p_up")
    server {
        listen 127.0.0.1:$p_nginx;
        location / { proxy_pass http://up; }
    }
CONF
nginx_proxy_pid=$nginx_pid

SESSIONGATE_BIN=$bin deploy/loadtest/gen_users.sh "$users" "$work/users.yaml" 2>/dev/null
export SESSIONGATE_KEY LT_LISTEN="127.0.0.1:$p_gate" LT_ADMIN="127.0.0.1:$p_admin" \
    LT_REDIS_URL="redis://127.0.0.1:$p_redis/0" LT_ECHO_HTTP="127.0.0.1:$p_up" \
    LT_ECHO_WS="127.0.0.1:$p_ws" LT_USERS_FILE="$work/users.yaml"
SESSIONGATE_KEY=$("$bin" keygen)

# The Lua gate and the auth endpoint check the gate's own tickets with the same key.
lua_init="init_worker_by_lua_block { require(\"gate\").init(\"$SESSIONGATE_KEY\", $p_redis) }"
start_nginx lua-gate <<CONF
$(upstream_block up "$p_up")
    $lua_init
    server {
        listen 127.0.0.1:$p_lua;
        location / { access_by_lua_block { require("gate").access() } proxy_pass http://up; }
    }
CONF
lua_pid=$nginx_pid

start_nginx auth <<CONF
    access_log off;
    $lua_init
    server {
        listen 127.0.0.1:$p_auth;
        location / { content_by_lua_block { require("gate").auth_endpoint() } }
    }
CONF
auth_pid=$nginx_pid
start_nginx auth-request <<CONF
$(upstream_block up "$p_up")
    upstream auth { server 127.0.0.1:$p_auth; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }
    server {
        listen 127.0.0.1:$p_areq;
        location / {
            auth_request /_auth;
            auth_request_set \$sg_sid \$upstream_http_x_session_id;
            auth_request_set \$sg_user \$upstream_http_x_session_user;
            proxy_set_header X-Session-Id \$sg_sid;
            proxy_set_header X-Session-User \$sg_user;
            proxy_pass http://up;
        }
        location = /_auth {
            internal;
            proxy_pass http://auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }
    }
CONF
areq_pid=$nginx_pid

start_gate() {
    "$bin" run -c deploy/loadtest/sessiongate.yaml >>"$work/gate.log" 2>&1 &
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
for port in "$p_stock" "$p_nginx" "$p_lua" "$p_auth" "$p_areq"; do
    wait_for "proxy on port $port" tcp_open "$port"
done

GATE_URL="http://127.0.0.1:$p_gate" deploy/loadtest/login_users.sh "$users" "$work/tickets.txt" >"$work/login.txt"
ticket=$(head -n1 "$work/tickets.txt")
auth="Authorization: Bearer $ticket"

# The Lua gates' session record: status and user of the gate's own record of this session.
sid=$(python3 -c '
import base64, json, sys
p = sys.argv[1].split(".")[1]
print(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))["sid"])
' "$ticket")
skey=$(redis-cli -p "$p_redis" --scan --pattern "lt:s:*:$sid" | head -n1)
[[ -n $skey ]] || die "no session record for $sid in Redis"
mapfile -t rec < <(redis-cli -p "$p_redis" hmget "$skey" status userId)
redis-cli -p "$p_redis" hset "ng:s:$sid" status "${rec[0]}" userId "${rec[1]}" >/dev/null

# name -> the URL timed (every upstream path answers the same fixed "ok"), the PIDs whose CPU is
# the proxy's own, and a label.
targets=(direct stock nginx lua areq public ticket nocache)
declare -A url cpu_pids label
url[direct]="http://127.0.0.1:$p_up/static"
url[stock]="http://127.0.0.1:$p_stock/static"
url[nginx]="http://127.0.0.1:$p_nginx/static"
url[lua]="http://127.0.0.1:$p_lua/static"
url[areq]="http://127.0.0.1:$p_areq/static"
url[public]="http://127.0.0.1:$p_gate/public/static"
url[ticket]="http://127.0.0.1:$p_gate/controller/echo/static"
url[nocache]="http://127.0.0.1:$p_gate0/controller/echo/static"
cpu_pids[direct]=
cpu_pids[stock]=$stock_pid
cpu_pids[nginx]=$nginx_proxy_pid
cpu_pids[lua]=$lua_pid
cpu_pids[areq]="$areq_pid $auth_pid"
cpu_pids[public]=$gate_pid
cpu_pids[ticket]=$gate_pid
cpu_pids[nocache]=$nocache_pid
label[direct]="direct to upstream"
label[stock]="stock Pingora 0.9.1"
label[nginx]="nginx plain proxy"
label[lua]="nginx+Lua+Redis gate"
label[areq]="nginx auth_request+Lua"
label[public]="sessiongate public"
label[ticket]="sessiongate ticket"
label[nocache]="sessiongate ticket, 0s"

# Each row must answer 200 before it is timed (a fast stream of 401s would look like a win), and
# the session-checking ones must have handed the upstream the session id.
for name in "${targets[@]}"; do
    code=$(curl -s -o "$work/probe.txt" -w '%{http_code}' -H "$auth" "${url[$name]}")
    [[ $code == 200 ]] || die "$name: ${url[$name]} answered $code: $(head -c 300 "$work/probe.txt")"
done
for name in lua areq ticket nocache; do
    probe=${url[$name]%/static}/hello
    curl -s -H "$auth" "$probe" | grep -q "x-session-id=$sid" || die "$name: $probe did not pass X-Session-Id"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer x${ticket}" "${url[$name]}")
    [[ $code == 401 ]] || die "$name: a forged ticket answered $code, not 401"
done

if [[ -n $callgrind ]]; then
    command -v valgrind >/dev/null || die "valgrind is required (apt-get install valgrind)"
    command -v h2load >/dev/null || die "h2load is required (apt-get install nghttp2-client)"
    cg_requests=${CALLGRIND_REQUESTS:-5000}
    cg_warmup=${CALLGRIND_WARMUP:-1000}
    read -r p_cg p_cg_admin < <(free_ports 2)
    cg_out="$work/callgrind.out"
    cg_valgrind=(valgrind --tool=callgrind --callgrind-out-file="$cg_out" --dump-instr=no)
    case $callgrind in
    stock)
        "${cg_valgrind[@]}" "$stock_bin" --listen "127.0.0.1:$p_cg" --upstream "127.0.0.1:$p_up" \
            "${stock_args[@]}" >"$work/callgrind-proxy.log" 2>&1 &
        cg_url=${url[stock]/:$p_stock\//:$p_cg/}
        ;;
    public | ticket | nocache)
        cg_cache=1s
        [[ $callgrind == nocache ]] && cg_cache=0s
        # A store timeout the slowed process can keep; it changes no instruction count.
        LT_LISTEN="127.0.0.1:$p_cg" LT_ADMIN="127.0.0.1:$p_cg_admin" LT_STORE_CACHE=$cg_cache LT_STORE_TIMEOUT=2s \
            "${cg_valgrind[@]}" "$bin" run -c deploy/loadtest/sessiongate.yaml >"$work/callgrind-proxy.log" 2>&1 &
        cg_url=${url[$callgrind]/:$p_gate\//:$p_cg/}
        [[ $callgrind == nocache ]] && cg_url=${url[nocache]/:$p_gate0\//:$p_cg/}
        ;;
    *) die "--callgrind: one of stock public ticket nocache" ;;
    esac
    cg_pid=$!
    pids+=("$cg_pid")
    # Everything runs some 50 times slower under valgrind: give it a minute to come up.
    wait_tries=600 wait_for "$callgrind under callgrind" curl -sf -o /dev/null -H "$auth" "$cg_url"
    h2load_run() {
        h2load --h1 -n "$1" -c 16 -H "$auth" "$cg_url" >"$2" 2>&1 || die "h2load failed: $(tail -n 3 "$2")"
        grep -q "status codes: $1 2xx" "$2" || die "h2load: not all answers were 2xx: $(grep -E '^(requests|status codes):' "$2")"
    }
    h2load_run "$cg_warmup" "$work/h2load-warmup.txt"
    callgrind_control --zero "$cg_pid" >/dev/null
    h2load_run "$cg_requests" "$work/h2load-measured.txt"
    callgrind_control --dump=measured "$cg_pid" >/dev/null
    # The dump is written by the process itself, asynchronously: wait for the file with the trigger.
    dump=
    for _ in $(seq 300); do
        dump=$(grep -l '^desc: Trigger: .*measured' "$cg_out"* 2>/dev/null | head -n1) && [[ -n $dump ]] && break
        sleep 0.1
    done
    [[ -n $dump ]] || die "callgrind wrote no dump (see $work/callgrind-proxy.log)"
    ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
    echo "callgrind of $callgrind (${label[$callgrind]}): $cg_requests requests after $cg_warmup warm-up, h2load --h1 -c 16; dump $dump"
    awk -v ir="$ir" -v n="$cg_requests" 'BEGIN { printf "instructions per request: %.0f (%d in all)\n", ir / n, ir }'
    python3 benches/callgrind_top.py "$dump" "$cg_requests" 40
    trap - EXIT
    for pid in "${pids[@]}" "$gate_pid"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    exit 0
fi

if [[ -n $profile ]]; then
    [[ -n ${cpu_pids[$profile]:-} ]] || die "--profile: one of stock public ticket nocache nginx lua areq"
    command -v perf >/dev/null || die "perf is required (apt-get install linux-perf)"
    read -r -a own <<<"${cpu_pids[$profile]}"
    wrk -t"$threads" -c64 -d12s -H "$auth" "${url[$profile]}" >"$work/wrk-profile.txt" &
    wrk_pid=$!
    pids+=("$wrk_pid")
    sleep 2
    perf record -e cpu-clock -F 999 --call-graph dwarf -o "$work/perf.data" -p "${own[0]}" -- sleep 8 2>"$work/perf-record.log"
    wait "$wrk_pid"
    echo "profile of $profile (${label[$profile]}), load average $(cut -d' ' -f1-3 /proc/loadavg); perf.data kept in $work"
    grep -E 'Requests/sec' "$work/wrk-profile.txt"
    perf report -i "$work/perf.data" --no-children --sort dso,symbol -g none --stdio 2>/dev/null |
        grep -E '^ +[0-9]' | sed -E 's/ +- +- *$//' | head -n 45 || true
    if command -v strace >/dev/null; then
        # System calls per request: strace attached over a whole wrk run (strace slows the
        # process, so only the counts mean anything, not the timings).
        strace -c -f -p "${own[0]}" -o "$work/strace.txt" &
        strace_pid=$!
        sleep 1
        wrk -t"$threads" -c64 -d4s -H "$auth" -s deploy/loadtest/summary.lua "${url[$profile]}" >"$work/wrk-strace.txt"
        kill -INT "$strace_pid"
        wait "$strace_pid" || true
        n=$(sed -n 's/^SUMMARY requests=\([0-9]*\).*/\1/p' "$work/wrk-strace.txt")
        echo
        echo "system calls per request under strace ($n requests):"
        awk -v n="$n" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" { printf "  %-16s %6.2f\n", $NF, $4 / n }' \
            "$work/strace.txt" | sort -k2 -gr | head -n 12
    fi
    # Keep the work directory (and perf.data): leave without the cleanup's removal.
    trap - EXIT
    for pid in "${pids[@]}" "$gate_pid"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    exit 0
fi

if [[ -n $only ]]; then
    read -r -a picked <<<"$only"
    for name in "${picked[@]}"; do
        [[ -n ${label[$name]:-} ]] || die "--only: unknown row $name"
    done
    targets=("${picked[@]}")
fi

redis_commands() { redis-cli -p "$p_redis" info stats | awk -F: '/^total_commands_processed:/ { print $2 + 0 }'; }
kib() { awk "/^$2:/ { print \$2 }" "/proc/$1/status"; }
# utime+stime of the given PIDs, in clock ticks (fields 14 and 15, counted after the ")" that
# ends the command name, which may hold spaces).
ticks() {
    local pid t=0 f
    for pid in "$@"; do
        read -r -a f < <(sed 's/.*) //' "/proc/$pid/stat")
        t=$((t + f[11] + f[12]))
    done
    echo "$t"
}
hz=$(getconf CLK_TCK)
per_req_us() { awk -v t="$1" -v n="$2" -v hz="$hz" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }'; }

declare -A rps p50 p99 rss cmds cpu cpu_up cpu_redis errs
# One measured wrk run of target $1 at $2 connections in round $3, after a warm-up that fills
# the proxies' upstream pools and the gate's caches.
# shellcheck disable=SC2034 # the tables are read through median_of's nameref
measure() {
    local name=$1 c=$2 round=$3 k="$1,$2,$3" line kv c0 c1 t0 t1 u0 u1 r0 r1
    local -a own
    read -r -a own <<<"${cpu_pids[$name]}"
    wrk -t"$threads" -c"$c" -d"$warmup" -H "$auth" "${url[$name]}" >/dev/null
    if [[ $name == public || $name == ticket || $name == nocache ]]; then
        # Resets VmHWM to the current RSS, so the peak is this run's own (Linux >= 4.0).
        echo 5 >"/proc/${own[0]}/clear_refs" 2>/dev/null || true
    fi
    c0=$(redis_commands)
    t0=$(ticks "${own[@]}")
    u0=$(ticks "$up_pid")
    r0=$(ticks "$redis_pid")
    wrk -t"$threads" -c"$c" -d"$duration" --latency -H "$auth" \
        -s deploy/loadtest/summary.lua "${url[$name]}" >"$work/wrk-$name-$c-$round.txt"
    t1=$(ticks "${own[@]}")
    u1=$(ticks "$up_pid")
    r1=$(ticks "$redis_pid")
    c1=$(redis_commands)
    line=$(grep '^SUMMARY ' "$work/wrk-$name-$c-$round.txt") || die "wrk printed no summary for $name"
    declare -A s=()
    for kv in ${line#SUMMARY }; do
        s[${kv%%=*}]=${kv#*=}
    done
    local errors=$((s[err_connect] + s[err_read] + s[err_write] + s[err_timeout] + s[err_status]))
    # A failed request is reported, not fatal: on this shared machine a stall past the store's
    # 50 ms timeout is a correct 503 from the no-cache gate, and one such moment should not void
    # a whole run. Every row's count is printed beside its figures.
    errs[$k]=$errors
    ((errors == 0)) || echo "bench: $name at -c$c, round $round: $errors failed requests (see $work/wrk-$name-$c-$round.txt)" >&2
    rps[$k]=${s[rps]}
    p50[$k]=${s[p50_us]}
    p99[$k]=${s[p99_us]}
    cpu[$k]=$(per_req_us "$((t1 - t0))" "${s[requests]}")
    cpu_up[$k]=$(per_req_us "$((u1 - u0))" "${s[requests]}")
    cpu_redis[$k]=$(per_req_us "$((r1 - r0))" "${s[requests]}")
    # The two INFO calls themselves count two commands.
    cmds[$k]=$(awk -v d="$((c1 - c0 - 2))" -v n="${s[requests]}" 'BEGIN { printf "%.3f", d / n }')
    if [[ $name == public || $name == ticket || $name == nocache ]]; then
        rss[$k]=$(kib "${own[0]}" VmHWM)
    else
        rss[$k]=0
    fi
}

ms() { awk -v us="$1" 'BEGIN { printf "%.3f", us / 1000 }'; }
f1() { awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=" ? v >= t : v <= t); print (ok ? "met" : "MISSED") }'; }
# The median of its arguments (the mean of the two middle ones for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m + 0 }'
}
# The median over the rounds of one figure of one target at one connection count:
# median_of rps ticket 64
median_of() {
    local -n table=$1
    local vals=() r
    for ((r = 1; r <= rounds; r++)); do vals+=("${table[$2,$3,$r]}"); done
    median "${vals[@]}"
}

echo
echo "sessiongate bench  $(date -u +%Y-%m-%dT%H:%MZ)  $(git rev-parse --short HEAD 2>/dev/null || echo '?')  $(nproc) cores  load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t$threads, connections: $conns_list; $duration per target after a $warmup warm-up, $rounds interleaved rounds; loopback"
echo "upstream for every row: nginx 'return 200' (one worker); gates: release build, threads: 1, access log at info;"
echo "ticket rows with the liveness cache on (store.cache 1s, pub/sub invalidation) and off (0s: a Redis round trip each)"
echo "cpu = utime+stime per request of the proxy's own process(es) (auth_request: both nginx), of the upstream, of Redis; errors: failed requests over all rounds"

for c in $conns_list; do
    echo
    echo "-- $c connections: requests/s per round"
    printf '%-6s' round
    for name in "${targets[@]}"; do printf ' %9s' "$name"; done
    echo
    for ((r = 1; r <= rounds; r++)); do
        # Odd rounds go in one order, even rounds in the other, so a drift over a round
        # (warming up, a background job) does not always favour the same target.
        order=("${targets[@]}")
        if ((r % 2 == 0)); then
            order=()
            for ((i = ${#targets[@]} - 1; i >= 0; i--)); do order+=("${targets[i]}"); done
        fi
        for name in "${order[@]}"; do
            measure "$name" "$c" "$r"
        done
        printf '%-6s' "$r"
        for name in "${targets[@]}"; do printf ' %9.0f' "${rps[$name,$c,$r]}"; done
        echo
    done
done

declare -A med
for c in $conns_list; do
    echo
    echo "-- $c connections: medians of $rounds rounds (load average now $(cut -d' ' -f1-3 /proc/loadavg))"
    printf '%-24s %10s %8s %8s %9s %9s %9s %9s %10s %7s\n' target requests/s "p50 ms" "p99 ms" "cpu us/req" "up us/req" "redis us" "redis/req" "peak RSS" errors
    for name in "${targets[@]}"; do
        med[rps,$name,$c]=$(median_of rps "$name" "$c")
        med[p99,$name,$c]=$(median_of p99 "$name" "$c")
        med[cpu,$name,$c]=$(median_of cpu "$name" "$c")
        own_cpu=$(f1 "$(median_of cpu "$name" "$c")")
        [[ -n ${cpu_pids[$name]} ]] || own_cpu=-
        peak=-
        [[ ${rss[$name,$c,1]} == 0 ]] || peak=$(awk -v k="$(median_of rss "$name" "$c")" 'BEGIN { printf "%.1f MiB", k / 1024 }')
        failed=0
        for ((r = 1; r <= rounds; r++)); do failed=$((failed + errs[$name,$c,$r])); done
        printf '%-24s %10.0f %8s %8s %9s %9s %9s %9s %10s %7s\n' "${label[$name]}" "${med[rps,$name,$c]}" \
            "$(ms "$(median_of p50 "$name" "$c")")" "$(ms "${med[p99,$name,$c]}")" "$own_cpu" \
            "$(f1 "$(median_of cpu_up "$name" "$c")")" "$(f1 "$(median_of cpu_redis "$name" "$c")")" \
            "$(awk -v v="$(median_of cmds "$name" "$c")" 'BEGIN { printf "%.3f", v }')" "$peak" "$failed"
    done
done

echo
echo "ratios of the medians' requests/s (targets from issue 13); cpu: the same ratio in requests per CPU-second"
# Prints one ratio line: its label, the ratio of two rows' medians, and the verdict when there
# is a target; "-" when one of the rows did not run (--only).
ratio_line() {
    local c=$1 what=$2 a=$3 b=$4 op=${5:-} target=${6:-} v
    if [[ -z ${med[rps,$a,$c]:-} || -z ${med[rps,$b,$c]:-} ]]; then
        printf -- '-c%-3s %-36s %7s\n' "$c" "$what" -
        return
    fi
    v=$(ratio "${med[rps,$a,$c]}" "${med[rps,$b,$c]}")
    # The same comparison in CPU: requests per CPU-second of a over those of b (b's CPU per
    # request over a's), steadier than throughput on a shared, loaded machine. Rows without a
    # process of their own (direct) have none.
    local eff=-
    if [[ -n ${cpu_pids[$a]} && -n ${cpu_pids[$b]} ]]; then
        eff=$(ratio "${med[cpu,$b,$c]}" "${med[cpu,$a,$c]}")
    fi
    if [[ -n $op ]]; then
        printf -- '-c%-3s %-36s %7s   cpu %6s   target %s %s: %s\n' "$c" "$what" "$v" "$eff" "$op" "$target" "$(verdict "$v" "$target" "$op")"
    else
        printf -- '-c%-3s %-36s %7s   cpu %6s\n' "$c" "$what" "$v" "$eff"
    fi
}
for c in $conns_list; do
    ratio_line "$c" "public / stock Pingora" public stock '>=' 0.95
    ratio_line "$c" "ticket / public" ticket public '>=' 0.95
    if [[ -n ${med[p99,ticket,$c]:-} && -n ${med[p99,public,$c]:-} ]]; then
        added=$(awk -v a="${med[p99,ticket,$c]}" -v b="${med[p99,public,$c]}" 'BEGIN { printf "%.3f", (a - b) / 1000 }')
        printf -- '-c%-3s %-36s %7s   target <= 0.3: %s\n' "$c" "p99 added, ticket - public (ms)" "$added" "$(verdict "$added" 0.3 '<=')"
    fi
    ratio_line "$c" "ticket / nginx+Lua+Redis gate" ticket lua '>=' 1.1
    ratio_line "$c" "ticket / nginx auth_request" ticket areq
    ratio_line "$c" "ticket (no cache) / public" nocache public
    ratio_line "$c" "ticket (no cache) / nginx+Lua gate" nocache lua
    ratio_line "$c" "public / nginx plain proxy" public nginx
    ratio_line "$c" "stock Pingora / nginx plain proxy" stock nginx
done

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
