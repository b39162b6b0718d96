#!/usr/bin/env bash
# Revocation at scale (part of `make bench-ws`): how long from a session's change of status to
# its WebSockets' Close 4401, on two gate nodes sharing one Redis.
#
#   benches/revoke.sh [--scenario revoke|idle] [--sessions 3000] [--tunnels 9000] [--idle 90s]
#
# Starts a private redis-server, `sessiongate echo` and two release gates (A and B) on free
# 127.0.0.1 ports with deploy/loadtest/sessiongate.yaml, logs in --sessions users (one session
# each, through a third gate stopped afterwards), and opens --tunnels WebSockets spread so that every session has tunnels on
# both nodes (two ws_load processes, one per node, half of the tunnels each). Then:
#   revoke  every user is revoked at once through A's admin API (concurrent requests);
#           the change's time is the session's `updatedAt` in Redis;
#   idle    nobody speaks, and every session reaches idle_timeout (--idle, touch_interval 1s);
#           the change's time is its `abandonAt` (lastActiveAt + idle_timeout), the moment the
#           session stopped being active.
# Prints, per node, how many tunnels got Close 4401 and p50/p99/max of close time minus change
# time, and one `REVOKERESULT ...` line for scripts. Target: max <= 1 s on both nodes.
#
# Needs target/release/sessiongate and target/release/examples/ws_load (cargo build --release
# --locked --bin sessiongate --example ws_load), redis-server, redis-cli, curl, python3.
# Every process started here is stopped on exit, by PID; the run is bounded (about 4 minutes).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"

scenario=revoke
sessions=3000
tunnels=9000
idle=90s
while [[ $# -gt 0 ]]; do
    case $1 in
    --scenario) scenario=$2 ;;
    --sessions) sessions=$2 ;;
    --tunnels) tunnels=$2 ;;
    --idle) idle=$2 ;;
    -h | --help)
        sed -n '2,22p' "$0"
        exit 0
        ;;
    *)
        echo "revoke: unknown argument $1 (see --help)" >&2
        exit 64
        ;;
    esac
    shift 2
done
case $scenario in revoke | idle) ;; *)
    echo "revoke: --scenario is revoke or idle" >&2
    exit 64
    ;;
esac

bin=${SESSIONGATE_BIN:-target/release/sessiongate}
ws_load=${WS_LOAD:-target/release/examples/ws_load}
die() {
    echo "revoke: $*" >&2
    exit 1
}
for tool in redis-server redis-cli curl python3; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
[[ -x $bin ]] || die "no $bin: cargo build --release --locked --bin sessiongate"
[[ -x $ws_load ]] || die "no $ws_load: cargo build --release --locked --example ws_load"
per_node=$((tunnels / 2))
((2 * per_node + 64 <= $(ulimit -n))) || die "a gate needs $((2 * per_node + 64)) open files, above ulimit -n $(ulimit -n)"

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r p_redis p_http p_ws p_a p_aa p_b p_ba p_l p_la < <(free_ports 9)

redis-server --port "$p_redis" --bind 127.0.0.1 --save "" --appendonly no \
    --protected-mode no >"$work/redis.log" 2>&1 &
pids+=("$!")
wait_for redis-server redis-cli -p "$p_redis" ping
"$bin" echo --http "127.0.0.1:$p_http" --ws "127.0.0.1:$p_ws" >"$work/echo.log" 2>&1 &
pids+=("$!")
wait_for "echo upstream" tcp_open "$p_ws"

SESSIONGATE_BIN=$bin deploy/loadtest/gen_users.sh "$sessions" "$work/users.yaml" 2>/dev/null
SESSIONGATE_KEY=$("$bin" keygen)
SESSIONGATE_ADMIN_TOKEN=bench-$RANDOM$RANDOM
export SESSIONGATE_KEY SESSIONGATE_ADMIN_TOKEN LT_REDIS_URL="redis://127.0.0.1:$p_redis/0" \
    LT_ECHO_HTTP="127.0.0.1:$p_http" LT_ECHO_WS="127.0.0.1:$p_ws" LT_USERS_FILE="$work/users.yaml" \
    LT_TOUCH_INTERVAL=1s LT_STORE_TIMEOUT=${LT_STORE_TIMEOUT:-1s}
# Logins go through a third gate with the default idle timeout, stopped once they are done:
# they take minutes on a loaded machine, and idleness is judged by whichever gate checks
# with its own idle_timeout, so A and B (started with the short one) count each session's
# idleness from its tunnels' handshakes on.
LT_LISTEN="127.0.0.1:$p_l" LT_ADMIN="127.0.0.1:$p_la" \
    "$bin" run -c deploy/loadtest/sessiongate.yaml >"$work/gate-login.log" 2>&1 &
login_gate=$!
pids+=("$login_gate")
wait_for "login gate" curl -sf "http://127.0.0.1:$p_la/readyz"
echo "logging in $sessions users..."
# A login refused on a loaded machine (a store timeout) leaves its user out; the rest go on.
GATE_URL="http://127.0.0.1:$p_l" LT_PARALLEL=4 deploy/loadtest/login_users.sh "$sessions" \
    "$work/tickets.txt" >"$work/login.txt" 2>&1 || echo "some logins failed: $(grep -c '^FAIL' "$work/login.txt" || true)"
logged_in=$(wc -l <"$work/tickets.txt")
((logged_in > 0)) || die "no login succeeded"
if [[ $scenario == idle ]]; then
    # Fresh activity for every session just before A and B take over: A and B judge
    # idleness by their own, shorter timeout from lastActiveAt on.
    xargs -P 32 -I{} curl -s -o /dev/null -X POST -H "Authorization: Bearer {}" \
        "http://127.0.0.1:$p_l/_session/touch" <"$work/tickets.txt"
fi
kill "$login_gate" 2>/dev/null || true

if [[ $scenario == idle ]]; then export LT_IDLE_TIMEOUT=$idle; fi
for node in a b; do
    if [[ $node == a ]]; then listen=$p_a admin=$p_aa; else listen=$p_b admin=$p_ba; fi
    LT_LISTEN="127.0.0.1:$listen" LT_ADMIN="127.0.0.1:$admin" \
        "$bin" run -c deploy/loadtest/sessiongate.yaml >"$work/gate-$node.log" 2>&1 &
    pids+=("$!")
    eval "pid_$node=$!"
    wait_for "gate $node" curl -sf "http://127.0.0.1:$admin/readyz"
done


# Node A takes tickets from 0 and node B from the middle: with tunnels = 3 x sessions, each
# session has one or two tunnels on each node.
echo "opening $tunnels WebSockets ($per_node per node)..."
for node in a b; do
    if [[ $node == a ]]; then port=$p_a offset=0; else port=$p_b offset=$((logged_in / 2)); fi
    "$ws_load" --url "ws://127.0.0.1:$port/gateway/chat" --tickets "$work/tickets.txt" \
        --connections "$per_node" --round-trips 1 --ticket-offset "$offset" --hold 180 \
        --until-closed --closes "$work/closes-$node.txt" --label "node $node" \
        >"$work/ws-$node.txt" 2>"$work/ws-$node.err" &
    pids+=("$!")
    eval "ws_$node=$!"
done
for node in a b; do
    for _ in $(seq 1200); do
        grep -q '^ready: ' "$work/ws-$node.err" 2>/dev/null && break
        sleep 0.1
    done
    grep '^ready: ' "$work/ws-$node.err" || die "node $node: WebSockets never opened"
done

if [[ $scenario == revoke ]]; then
    echo "revoking all $sessions users at once..."
    seq 1 "$sessions" | sed 's/^/lt-user-/' | xargs -P 64 -I{} curl -s -o /dev/null -X POST \
        -H "Authorization: Bearer $SESSIONGATE_ADMIN_TOKEN" "http://127.0.0.1:$p_aa/admin/users/{}/revoke"
else
    echo "waiting for every session to reach idle_timeout ($idle)..."
fi
# ws_load exits once the gate has closed all its connections (or after its 180 s hold).
for node in a b; do
    eval "wait \$ws_$node" || true
done

# Each closed session's record: status, updatedAt, lastActiveAt (key lt:s:{tag}:sid).
cat "$work"/closes-*.txt | awk '{print $1}' | sort -u >"$work/sids.txt"
python3 - "$work/sids.txt" >"$work/cmds.txt" <<'EOF'
import sys
for sid in open(sys.argv[1]).read().split():
    tag = sid[24:] if len(sid) == 32 else sid
    print(f"HMGET lt:s:{{{tag}}}:{sid} status updatedAt lastActiveAt")
EOF
redis-cli -p "$p_redis" <"$work/cmds.txt" >"$work/records.txt"
idle_ms=$(python3 -c '
import re, sys
s = sys.argv[1]
units = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000}
print(sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", s)))' "${LT_IDLE_TIMEOUT:-30m}")

python3 - "$work" "$scenario" "$idle_ms" "$per_node" <<'EOF'
import sys
work, scenario, idle_ms, per_node = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sids = open(f"{work}/sids.txt").read().split()
lines = open(f"{work}/records.txt").read().split("\n")
change = {}
for i, sid in enumerate(sids):
    status, updated, last = lines[3 * i:3 * i + 3]
    change[sid] = (status, int(updated) if scenario == "revoke" else int(last) + idle_ms)
want = "revoked" if scenario == "revoke" else "abandoned"
results = []
for node in ("a", "b"):
    lat, other, wrong = [], 0, 0
    for line in open(f"{work}/closes-{node}.txt"):
        sid, code, at = line.split()
        if code != "4401":
            other += 1
            continue
        status, at_change = change[sid]
        if status != want:
            wrong += 1
        lat.append(int(at) - at_change)
    lat.sort()
    pick = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else -1
    results.append((node, len(lat), other, wrong, pick(0.5), pick(0.99), lat[-1] if lat else -1))
print(f"revocation benchmark: {scenario}, {len(sids)} sessions, {2 * per_node} tunnels on two nodes")
print(f"  {'node':<6}{'4401 closes':>12}{'other':>8}{'not ' + want:>16}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
for node, n, other, wrong, p50, p99, mx in results:
    print(f"  {node:<6}{n:>12}{other:>8}{wrong:>16}{p50:>9}{p99:>9}{mx:>9}")
    print(f"REVOKERESULT scenario={scenario} node={node} closes={n} expected={per_node} other={other} "
          f"wrong_status={wrong} p50_ms={p50} p99_ms={p99} max_ms={mx}")
EOF
