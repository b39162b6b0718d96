#!/usr/bin/env bash
# Opens N authenticated WebSockets through a running gate with examples/ws_load.rs, spread over
# several client processes, runs echo round trips on each, and prints a summary table; with
# GATE_PID, also the gate's RSS before and while every connection is open.
#
#   deploy/loadtest/run_ws.sh N [TICKETS_FILE]
#
# Environment:
#   WS_URL       gateway route             (default ws://127.0.0.1:6090/gateway/chat)
#   ROUND_TRIPS  echo round trips per connection (default 10)
#   PROCESSES    client processes          (default one per 5,000 connections)
#   GATE_PID     the gate's PID, for RSS from /proc/PID/status (optional)
#   IDLE         seconds to keep every connection open and idle before the second RSS
#                sample (default 5)
#   WS_LOAD      the tool (default target/release/examples/ws_load;
#                build it with: cargo build --release --example ws_load)
#
# Open files are capped per process (20,000 on the project's machines, `ulimit -Hn`). Each
# client connection holds one socket; the gate holds two per proxied WebSocket (client side and
# upstream side), so one gate process tops out just under 10,000 WebSockets there.
set -euo pipefail

usage() {
    echo "usage: $0 N [TICKETS_FILE]" >&2
    exit 64
}
[[ $# -ge 1 && $# -le 2 ]] || usage
total=$1
tickets=${2:-tickets.txt}
[[ $total =~ ^[1-9][0-9]*$ ]] || usage
url=${WS_URL:-ws://127.0.0.1:6090/gateway/chat}
round_trips=${ROUND_TRIPS:-10}
processes=${PROCESSES:-$(((total + 4999) / 5000))}
gate_pid=${GATE_PID:-}
idle=${IDLE:-5}
ws_load=${WS_LOAD:-target/release/examples/ws_load}

case $url in
ws://127.* | ws://localhost[:/]*) ;;
*)
    echo "$0: WS_URL must be a loopback address, got $url" >&2
    exit 64
    ;;
esac
[[ -x $ws_load ]] || {
    echo "$0: $ws_load not found: cargo build --release --example ws_load (or set WS_LOAD)" >&2
    exit 1
}
[[ -s $tickets ]] || {
    echo "$0: no tickets in $tickets: run deploy/loadtest/login_users.sh first" >&2
    exit 1
}
[[ $processes =~ ^[1-9][0-9]*$ ]] || {
    echo "$0: PROCESSES must be a positive number" >&2
    exit 64
}

# Raise the soft open-files limit to the hard one; where even that is below what one client
# process needs, say so now rather than as a wall of EMFILE failures later.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
per_process=$(((total + processes - 1) / processes))
if ((per_process + 100 > $(ulimit -n))); then
    echo "$0: $per_process connections per process exceed ulimit -n $(ulimit -n): raise PROCESSES" >&2
    exit 1
fi

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

work=$(mktemp -d)
pids=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

rss_before=
[[ -n $gate_pid ]] && rss_before=$(rss_kib "$gate_pid")

# The clients hold their connections (--hold) until told to stop, so the gate's memory can be
# read while all of them, from every process, are open at once.
remaining=$total
for ((i = 0; i < processes; i++)); do
    n=$((remaining < per_process ? remaining : per_process))
    ((n > 0)) || break
    remaining=$((remaining - n))
    "$ws_load" --url "$url" --tickets "$tickets" --connections "$n" --round-trips "$round_trips" \
        --hold 3600 --ticket-offset "$((i * per_process))" --label "ws_load[$i]" \
        >"$work/$i.out" 2>"$work/$i.err" &
    pids+=("$!")
done

# Wait until every client reports `ready:` (all its connections opened and round trips done),
# or has exited. Bounded: 10 minutes at most.
deadline=$((SECONDS + 600))
for i in "${!pids[@]}"; do
    until grep -q '^ready:' "$work/$i.err" 2>/dev/null || ! kill -0 "${pids[$i]}" 2>/dev/null; do
        if ((SECONDS > deadline)); then
            echo "$0: client $i not ready after 600 s" >&2
            exit 1
        fi
        sleep 0.2
    done
done

rss_open=
rss_idle=
if [[ -n $gate_pid ]]; then
    rss_open=$(rss_kib "$gate_pid")
fi
sleep "$idle"
if [[ -n $gate_pid ]]; then
    rss_idle=$(rss_kib "$gate_pid")
    hwm=$(hwm_kib "$gate_pid")
fi

# SIGTERM ends each client's hold: it closes its connections cleanly and prints its table.
for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=1
done
pids=()

opened=0 failed=0 closed=0 rt_ok=0 rt_failed=0 worst_p99=0 p50s=""
for i in $(seq 0 $((processes - 1))); do
    [[ -f $work/$i.out ]] || continue
    grep -v '^RESULT ' "$work/$i.out" || true
    if ! grep -q '^RESULT ' "$work/$i.out"; then
        echo "client $i printed no result:" >&2
        cat "$work/$i.err" >&2
        status=1
        continue
    fi
    declare -A r=()
    read -ra fields <<<"$(grep '^RESULT ' "$work/$i.out" | cut -d' ' -f2-)"
    for kv in "${fields[@]}"; do
        r[${kv%%=*}]=${kv#*=}
    done
    opened=$((opened + r[opened]))
    failed=$((failed + r[failed]))
    closed=$((closed + r[closed_early]))
    rt_ok=$((rt_ok + r[rt_ok]))
    rt_failed=$((rt_failed + r[rt_failed]))
    if [[ ${r[p99_us]} != - ]] && ((r[p99_us] > worst_p99)); then
        worst_p99=${r[p99_us]}
    fi
    [[ ${r[p50_us]} != - ]] && p50s+="${p50s:+ / }$(awk -v u="${r[p50_us]}" 'BEGIN { printf "%.3f", u / 1000 }')"
    unset r
done

printf '\nwebsocket load summary (%d client processes)\n' "$processes"
row() { printf '  %-34s %s\n' "$1" "$2"; }
row "url" "$url"
row "connections requested" "$total"
row "connections opened" "$opened"
row "connections failed" "$failed"
row "closed by the gate while idle" "$closed"
row "round trips ok / failed" "$rt_ok / $rt_failed"
row "rtt p50 per process" "${p50s:--} ms"
row "rtt p99 (worst process)" "$(awk -v u="$worst_p99" 'BEGIN { printf "%.3f ms", u / 1000 }')"
if [[ -n $gate_pid && -n $rss_before && -n $rss_idle ]]; then
    row "gate VmRSS before" "$(mib "$rss_before")"
    row "gate VmRSS, all open" "$(mib "$rss_open")"
    row "gate VmRSS, after ${idle}s idle" "$(mib "$rss_idle")"
    row "gate VmHWM" "$(mib "$hwm")"
    if ((opened > 0)); then
        row "gate RSS per connection" "$(awk -v a="$rss_idle" -v b="$rss_before" -v n="$opened" \
            'BEGIN { printf "%.1f KiB", (a - b) / n }')"
    fi
    echo "WSRESULT opened=$opened failed=$failed closed_early=$closed rss_before_kib=$rss_before rss_open_kib=$rss_open rss_idle_kib=$rss_idle hwm_kib=$hwm"
fi
((failed == 0 && closed == 0 && rt_failed == 0 && opened == total)) || status=1
exit "$status"
