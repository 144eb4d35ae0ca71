#!/usr/bin/env bash
# Failover on a RabbitMQ cluster: one gateway holds USERS users in ROOMS rooms on a
# throwaway three-node cluster; the node that holds its queue is killed (kill -9), and
# this measures the time from the kill to the gateway ready again on another node (its
# new queue declared and every binding restored), and the bind rate of that rebinding.
#
# Usage: bench/failover.sh [USERS] [ROOMS] [RUNS]        (defaults 10000 100 2)
#        EXCHANGE_TYPE=direct bench/failover.sh …        (default topic)
#
# Each run kills the gateway's current node and brings it back before the next run.
# The gateway logs "RabbitMQ queue ready" with amqp.bindings and amqp.setup_ms (declare,
# bind all, consume); /metrics has switchboard_backplane_last_failover_seconds (from the
# lost connection to ready). Prints one line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-10000}
ROOMS=${2:-100}
RUNS=${3:-2}
EXCHANGE_TYPE=${EXCHANGE_TYPE:-topic}
PORT=${PORT:-18283}
./scripts/install-deps.sh >/dev/null
swift build -c release --product switchboard >/dev/null
swift build -c release --product switchboard-bench >/dev/null
BIN=.build/release/switchboard
BENCH=.build/release/switchboard-bench
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d /tmp/switchboard-bench-failover.XXXXXX)
chmod 755 "$work"  # the broker runs as the rabbitmq user and must reach its folder
GATEWAY=""
HOLDER=""
cleanup() {
    [ -n "$HOLDER" ] && kill "$HOLDER" 2>/dev/null || true
    [ -n "$GATEWAY" ] && kill -KILL "$GATEWAY" 2>/dev/null || true
    ./scripts/rabbitmq.sh cluster-stop "$work/cluster" || true
    rm -rf "$work"
}
trap cleanup EXIT
cluster_env=$(./scripts/rabbitmq.sh cluster-start "$work/cluster" 3)
eval "$cluster_env"

"$BIN" serve --port "$PORT" --backplane "$SWITCHBOARD_AMQP_CLUSTER_URLS" --exchange-type "$EXCHANGE_TYPE" \
    --auth none --gateway-id failover-bench --log-level info 2>"$work/gateway.log" &
GATEWAY=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
"$BENCH" idle --gateway "ws://127.0.0.1:$PORT/ws" --users "$USERS" --rooms "$ROOMS" --hold 300 \
    --gateway-pid "$GATEWAY" >"$work/holder.log" 2>&1 &
HOLDER=$!
for _ in $(seq 1 1800); do grep -q "connections opened" "$work/holder.log" && break; sleep 0.1; done
echo "holder: $(head -1 "$work/holder.log")"
echo "exchange type: $EXCHANGE_TYPE; bindings on the exchange: $(./scripts/rabbitmq.sh ctl "$work/cluster/node1" list_bindings source_name --quiet --no-table-headers | grep -c '^switchboard$')"

metric() {
    curl -sf "http://127.0.0.1:$PORT/metrics" | awk -v name="$1" '$1 == name { print $2 }'
}

for run in $(seq 1 "$RUNS"); do
    queue=$(grep -o 'amqp.queue=switchboard.gateway.failover-bench.[0-9a-f]*' "$work/gateway.log" | tail -1 | cut -d= -f2)
    pid=$(./scripts/rabbitmq.sh ctl "$work/cluster/node1" list_queues name pid --quiet --no-table-headers 2>/dev/null | awk -v q="$queue" '$1 == q { print $2 }')
    [ -n "$pid" ] || pid=$(./scripts/rabbitmq.sh ctl "$work/cluster/node2" list_queues name pid --quiet --no-table-headers | awk -v q="$queue" '$1 == q { print $2 }')
    node=$(echo "$pid" | sed -E 's/^<[a-z]+[0-9]+n([0-9]+)@.*/\1/')
    before=$(metric switchboard_backplane_failovers_total)
    before=${before:-0}
    readies_before=$(grep -c "RabbitMQ queue ready" "$work/gateway.log")
    started=$(date +%s%N)
    ./scripts/rabbitmq.sh node-kill "$work/cluster/node$node"
    # Bounded: at most 120 s for the gateway to be ready on another node.
    for _ in $(seq 1 12000); do
        now=$(metric switchboard_backplane_failovers_total)
        if [ "${now:-0}" -gt "$before" ] && curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; then break; fi
        sleep 0.01
    done
    ended=$(date +%s%N)
    ready_line=$(grep "RabbitMQ queue ready" "$work/gateway.log" | sed -n "$((readies_before + 1)),\$p" | tail -1)
    bindings=$(echo "$ready_line" | grep -o 'amqp.bindings=[0-9]*' | cut -d= -f2)
    setup_ms=$(echo "$ready_line" | grep -o 'amqp.setup_ms=[0-9]*' | cut -d= -f2)
    last=$(metric switchboard_backplane_last_failover_seconds)
    connections=$(metric switchboard_connections)
    last_ms=$(awk -v s="${last:-0}" 'BEGIN { printf "%.0f", s * 1000 }')
    rate=0
    [ "${setup_ms:-0}" -gt 0 ] && rate=$((bindings * 1000 / setup_ms))
    echo "run $run: killed node $node; ready again after $(((ended - started) / 1000000)) ms (kill to /readyz, polled every 10 ms);" \
        "the gateway measured $last_ms ms from the lost connection; rebinding: $bindings bindings in $setup_ms ms = $rate binds/s;" \
        "client connections on the gateway: $connections"
    ./scripts/rabbitmq.sh node-start "$work/cluster/node$node"
done
