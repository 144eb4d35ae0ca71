# Sourced by the bench scripts: release gateways started and stopped by PID. Needs BIN
# (the switchboard binary), WORK (a folder for the logs) and PORT (the last port used).
# shellcheck shell=bash
GW_PIDS=()

# start_gateway BACKPLANE_URL HISTORY EXTRA...: one gateway on the next port, one event
# loop, limits out of the way; waits for /readyz and sets LAST_PID and LAST_PORT (no
# subshell: the port counter and the PID list must survive).
start_gateway() {
    local url=$1 history=$2
    shift 2
    PORT=$((PORT + 1))
    "$BIN" serve --port "$PORT" --backplane "$url" --history "$history" --auth none --gateway-id "gw-$PORT" \
        --log-level warning --event-loops 1 --rate-limit 1000000 --rate-burst 1000000 --max-outbound-bytes 16777216 \
        --drain-grace 0 --drain-window 1 "$@" >"$WORK/gw-$PORT.log" 2>&1 &
    LAST_PID=$!
    LAST_PORT=$PORT
    GW_PIDS+=("$LAST_PID")
    for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.05; done
}

# SIGTERM to every gateway started, SIGKILL to any still there after 10 s.
stop_gateways() {
    for pid in "${GW_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${GW_PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    GW_PIDS=()
}
