#!/usr/bin/env bash
# Connection storm on the RabbitMQ backplane: one gateway, N WebSockets opened 200 at a
# time; each counts once its welcome arrived, i.e. once its user.<id> binding is in place.
# Also the backplane-level binding churn (switchboard-bench bindings), pipelined and sequential.
# Usage: bench/storm-rabbitmq.sh [CONNECTIONS] [RUNS]   (defaults 10000, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${1:-10000}
RUNS=${2:-3}
PORT=${PORT:-18182}
./scripts/install-deps.sh
swift build -c release --product switchboard >/dev/null
swift build -c release --product switchboard-bench >/dev/null
BIN=.build/release/switchboard
BENCH=.build/release/switchboard-bench
ulimit -n "$(ulimit -Hn)"
broker_dir=$(mktemp -d /tmp/switchboard-bench-rabbitmq.XXXXXX)
trap './scripts/rabbitmq.sh stop "$broker_dir"; rm -rf "$broker_dir"' EXIT
broker_env=$(./scripts/rabbitmq.sh start "$broker_dir")
eval "$broker_env"
for run in $(seq 1 "$RUNS"); do
    echo "run $run: switchboard-bench bindings (pipelined, then sequential)"
    "$BENCH" bindings --backplane "$SWITCHBOARD_AMQP_URL" --count "$CONNECTIONS"
    "$BENCH" bindings --backplane "$SWITCHBOARD_AMQP_URL" --count "$CONNECTIONS" --sequential
    "$BIN" serve --port "$PORT" --backplane "$SWITCHBOARD_AMQP_URL" --auth none --gateway-id "storm$run" --log-level error &
    SERVER=$!
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
    echo "run $run: connection storm"
    "$BENCH" idle --gateway "ws://127.0.0.1:$PORT/ws" --users "$CONNECTIONS" --hold 2 --gateway-pid "$SERVER"
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
done
