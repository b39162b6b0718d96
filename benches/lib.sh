# shellcheck shell=bash
# Helpers shared by the bench and load-test scripts (sourced, never run):
# free loopback ports, readiness polling, a TCP probe. The sourcing script
# defines `die` and may set `wait_tries` (polls of 0.1 s, default 200) and
# `work` (its scratch directory, named when something does not come up).

# N distinct free 127.0.0.1 ports, all bound at once so none is handed out twice.
free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
' "$1"
}

# Polls a condition every 0.1 s until it holds: readiness, never a fixed sleep.
wait_for() {
    local what=$1
    shift
    for _ in $(seq "${wait_tries:-200}"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what did not come up${work:+ (logs in $work)}"
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
