#!/usr/bin/env bash
# Logs in N users against a running gate and saves their tickets, one per line.
#
#   deploy/loadtest/login_users.sh N [TICKETS_FILE]
#
# Environment:
#   GATE_URL     the gate's base URL             (default http://127.0.0.1:6090)
#   LT_PASSWORD  the users' shared password      (default loadtest, as gen_users.sh writes)
#   LT_PARALLEL  logins in flight at once        (default 4)
#
# Users are lt-user-1 .. lt-user-N, as deploy/loadtest/gen_users.sh makes them; the gate's
# users file must hold at least N of them. Prints a summary table; exits 1 if any login failed.
set -euo pipefail

usage() {
    echo "usage: $0 N [TICKETS_FILE]" >&2
    exit 64
}

[[ $# -ge 1 && $# -le 2 ]] || usage
count=$1
out=${2:-tickets.txt}
[[ $count =~ ^[1-9][0-9]*$ ]] || usage
gate=${GATE_URL:-http://127.0.0.1:6090}
password=${LT_PASSWORD:-loadtest}
parallel=${LT_PARALLEL:-4}

case $gate in
http://127.* | http://localhost[:/]* | http://localhost) ;;
*)
    # Load goes to this machine's own loopback only.
    echo "$0: GATE_URL must be a loopback address, got $gate" >&2
    exit 64
    ;;
esac

for tool in curl xargs; do
    command -v "$tool" >/dev/null || {
        echo "$0: $tool is required" >&2
        exit 1
    }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One login: prints the ticket on success, or "FAIL <status>" so failures are counted, not lost.
login_one() {
    local user=$1 body status ticket
    body=$(printf '{"username":"%s","password":"%s"}' "$user" "$LT_PASSWORD_JSON")
    status=$(curl -sS -o "$LT_WORK/$user.json" -w '%{http_code}' \
        -X POST "$GATE_URL/_session/login" \
        -H 'content-type: application/json' --data-binary "$body" || true)
    # A ticket is base64url segments joined by dots: no quotes to escape.
    ticket=$(sed -nE 's/.*"ticket":"([^"]+)".*/\1/p' "$LT_WORK/$user.json" 2>/dev/null || true)
    if [[ $status == 201 && -n $ticket ]]; then
        echo "$ticket"
    else
        echo "FAIL $user ${status:-000} $(head -c 200 "$LT_WORK/$user.json" 2>/dev/null || true)"
    fi
}
export -f login_one
export GATE_URL=$gate LT_WORK=$work
# JSON string escaping for the only characters a shell-supplied password is likely to carry.
LT_PASSWORD_JSON=$(printf '%s' "$password" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')
export LT_PASSWORD_JSON

start=$(date +%s.%N)
# shellcheck disable=SC2016 # $1 is for the child bash, not this one.
seq 1 "$count" | sed 's/^/lt-user-/' |
    xargs -P "$parallel" -I{} bash -c 'login_one "$1"' _ {} >"$work/results"
end=$(date +%s.%N)

grep -v '^FAIL ' "$work/results" >"$out" || true
ok=$(wc -l <"$out")
failed=$(grep -c '^FAIL ' "$work/results" || true)
elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
rate=$(awk -v n="$ok" -v t="$elapsed" 'BEGIN { printf "%.1f", (t > 0 ? n / t : 0) }')

printf 'login summary\n'
printf '  %-20s %s\n' "gate" "$gate" "users requested" "$count" "logged in" "$ok" \
    "failed" "$failed" "elapsed" "${elapsed} s" "logins/s" "$rate" "tickets file" "$out"
if [[ $failed -gt 0 ]]; then
    echo "first failures:" >&2
    grep '^FAIL ' "$work/results" | head -3 >&2
    exit 1
fi
