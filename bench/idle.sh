#!/usr/bin/env bash
# Idle memory per connection: one gateway on the in-memory backplane, N idle WebSockets.
# Usage: bench/idle.sh [CONNECTIONS] [RUNS]   (defaults: 10000 connections, 3 runs)
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${1:-10000}
RUNS=${2:-3}
PORT=${PORT:-18181}
swift build -c release --product switchboard >/dev/null
swift build -c release --product switchboard-bench >/dev/null
BIN=.build/release/switchboard
BENCH=.build/release/switchboard-bench
ulimit -n "$(ulimit -Hn)"
for run in $(seq 1 "$RUNS"); do
    "$BIN" serve --port "$PORT" --backplane memory --auth none --gateway-id bench --log-level error &
    SERVER=$!
    trap 'kill $SERVER 2>/dev/null || true' EXIT
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
    echo "run $run:"
    "$BENCH" idle --gateway "ws://127.0.0.1:$PORT/ws" --users "$CONNECTIONS" --hold 5 --gateway-pid "$SERVER"
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    trap - EXIT
done
