#!/usr/bin/env bash
# Drives wrk against an authenticated route of a running gate, rotating tickets per request
# (tickets.lua), and prints a summary table.
#
#   deploy/loadtest/run_http.sh [TICKETS_FILE] [URL]
#
# TICKETS_FILE defaults to tickets.txt (login_users.sh writes it); URL to the load-test
# config's ticket-checked route, http://127.0.0.1:6090/controller/echo/hello.
# Environment: DURATION (10s), CONNECTIONS (64), THREADS (2), WARMUP (2s; 0 for none).
# Exits 1 if any request failed or answered outside 2xx/3xx.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tickets=${1:-tickets.txt}
url=${2:-http://127.0.0.1:6090/controller/echo/hello}
duration=${DURATION:-10s}
connections=${CONNECTIONS:-64}
threads=${THREADS:-2}
warmup=${WARMUP:-2s}

case $url in
http://127.* | http://localhost[:/]*) ;;
*)
    echo "$0: URL must be a loopback address, got $url" >&2
    exit 64
    ;;
esac
command -v wrk >/dev/null || {
    echo "$0: wrk is required (apt-get install wrk)" >&2
    exit 1
}
[[ -s $tickets ]] || {
    echo "$0: no tickets in $tickets: run deploy/loadtest/login_users.sh first" >&2
    exit 1
}

# wrk prints its own (human) report too; keep it for whoever wants more than the table.
out=$(mktemp)
trap 'rm -f "$out"' EXIT

if [[ $warmup != 0 ]]; then
    # Fills the gate's upstream pool and session cache before anything is measured.
    wrk -t"$threads" -c"$connections" -d"$warmup" -s "$here/tickets.lua" "$url" -- "$tickets" >/dev/null
fi
wrk -t"$threads" -c"$connections" -d"$duration" --latency -s "$here/tickets.lua" "$url" -- "$tickets" | tee "$out" >&2

line=$(grep '^SUMMARY ' "$out" || true)
[[ -n $line ]] || {
    echo "$0: wrk printed no SUMMARY line" >&2
    exit 1
}
# SUMMARY key=value pairs -> the array s, read without eval.
declare -A s
for kv in ${line#SUMMARY }; do
    s[${kv%%=*}]=${kv#*=}
done
ms() { awk -v us="$1" 'BEGIN { printf "%.3f ms", us / 1000 }'; }
errors=$((s[err_connect] + s[err_read] + s[err_write] + s[err_timeout]))

printf '\nhttp load summary\n'
printf '  %-22s %s\n' \
    "url" "$url" \
    "tickets (sessions)" "$(grep -c . "$tickets")" \
    "wrk" "$threads threads, $connections connections, $duration" \
    "requests" "${s[requests]}" \
    "requests/s" "${s[rps]}" \
    "latency p50" "$(ms "${s[p50_us]}")" \
    "latency p90" "$(ms "${s[p90_us]}")" \
    "latency p99" "$(ms "${s[p99_us]}")" \
    "latency max" "$(ms "${s[max_us]}")" \
    "non-2xx/3xx answers" "${s[err_status]}" \
    "socket errors" "$errors"
[[ ${s[err_status]} -eq 0 && $errors -eq 0 ]]
