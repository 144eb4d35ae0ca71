#!/usr/bin/env bash
# rabbitmq/rabbitmq-server#12926: RabbitMQ stalls publisher confirms while it deletes a
# queue that still holds thousands of bindings. This measures it: a gateway holds N
# users (N bindings), a probe (another gateway's backplane) publishes at RATE/s and
# prints confirm latency per second, and after 10 s the gateway is either killed
# (SIGKILL: the broker deletes its queue with all N bindings at once) or drained
# (SIGTERM: the gateway unbinds in batches over its drain window, then closes).
# Usage: bench/queue-deletion.sh kill|drain [USERS] [RATE] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:?kill or drain}
USERS=${2:-10000}
RATE=${3:-500}
SECONDS_TO_RUN=${4:-60}
PORT=${PORT:-18183}
./scripts/install-deps.sh
swift build -c release --product switchboard >/dev/null
swift build -c release --product switchboard-bench >/dev/null
BIN=.build/release/switchboard
BENCH=.build/release/switchboard-bench
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d /tmp/switchboard-bench-12926.XXXXXX)
chmod 755 "$work"  # the broker runs as the rabbitmq user and must reach its folder
cleanup() {
    [ -n "${GATEWAY:-}" ] && kill -KILL "$GATEWAY" 2>/dev/null || true
    [ -n "${HOLDER:-}" ] && kill "$HOLDER" 2>/dev/null || true
    ./scripts/rabbitmq.sh stop "$work/rabbitmq"
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/rabbitmq"
broker_env=$(./scripts/rabbitmq.sh start "$work/rabbitmq")
eval "$broker_env"
"$BIN" serve --port "$PORT" --backplane "$SWITCHBOARD_AMQP_URL" --auth none --gateway-id doomed \
    --drain-grace 0 --drain-window 10 --log-level error &
GATEWAY=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
"$BENCH" idle --gateway "ws://127.0.0.1:$PORT/ws" --users "$USERS" --hold 300 --gateway-pid "$GATEWAY" >"$work/holder.log" 2>&1 &
HOLDER=$!
for _ in $(seq 1 600); do grep -q "connections opened" "$work/holder.log" && break; sleep 0.1; done
echo "gateway 'doomed' holds: $(head -1 "$work/holder.log")"
echo "bindings on the exchange: $(./scripts/rabbitmq.sh ctl "$work/rabbitmq" list_bindings source_name --quiet --no-table-headers | grep -c '^switchboard$')"
"$BENCH" confirms --backplane "$SWITCHBOARD_AMQP_URL" --rate "$RATE" --duration "$SECONDS_TO_RUN" &
PROBE=$!
sleep 10
if [ "$MODE" = kill ]; then
    echo "t=10 s: SIGKILL to the gateway"
    kill -KILL "$GATEWAY"
else
    echo "t=10 s: SIGTERM to the gateway (drain window 10 s)"
    kill -TERM "$GATEWAY"
fi
wait "$PROBE"
