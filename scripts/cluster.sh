#!/usr/bin/env bash
# A local Switchboard cluster without Docker: a three-node RabbitMQ cluster, Redis (the
# shared history for resume, docs/recovery.md, and presence), three gateways and HAProxy, all on
# loopback, from Debian packages. Each gateway gets all three nodes and starts on its own.
#
#   scripts/cluster.sh          start, print the URL, and stop everything on Ctrl-C
#   scripts/cluster.sh start    start in the background and return
#   scripts/cluster.sh stop     stop a background cluster (by the PIDs it recorded)
#
# Ports (override with the variables): HAProxy $CLUSTER_PORT (8080), gateways 8081-8083
# ($CLUSTER_PORT+1…+3), RabbitMQ nodes $CLUSTER_AMQP_PORT, +2, +4 (5682, 5684, 5686), Redis
# $CLUSTER_REDIS_PORT (6389). Stop a node to watch the gateways fail over:
# scripts/rabbitmq.sh node-kill $CLUSTER_DIR/rabbitmq/node1 (node-start brings it back).
# State: $CLUSTER_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER_DIR=${CLUSTER_DIR:-/tmp/switchboard-cluster}
CLUSTER_PORT=${CLUSTER_PORT:-8080}
CLUSTER_AMQP_PORT=${CLUSTER_AMQP_PORT:-5682}
CLUSTER_REDIS_PORT=${CLUSTER_REDIS_PORT:-6389}
mode=${1:-foreground}

stop_cluster() {
    [ -d "$CLUSTER_DIR" ] || return 0
    for pidfile in "$CLUSTER_DIR"/gw-*.pid; do
        [ -f "$pidfile" ] && kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    done
    # Gateways drain (readiness off, clients closed with 1012) before they exit.
    for pidfile in "$CLUSTER_DIR"/gw-*.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
    if [ -f "$CLUSTER_DIR/haproxy.pid" ]; then
        kill -TERM "$(cat "$CLUSTER_DIR/haproxy.pid")" 2>/dev/null || true
        rm -f "$CLUSTER_DIR/haproxy.pid"
    fi
    ./scripts/rabbitmq.sh cluster-stop "$CLUSTER_DIR/rabbitmq"
    ./scripts/redis.sh stop "$CLUSTER_DIR/redis" || true
    echo "cluster stopped"
}

start_cluster() {
    if [ -f "$CLUSTER_DIR/haproxy.pid" ] && kill -0 "$(cat "$CLUSTER_DIR/haproxy.pid")" 2>/dev/null; then
        echo "a cluster is already running (scripts/cluster.sh stop)" >&2
        exit 1
    fi
    ./scripts/install-deps.sh
    swift build -c release --product switchboard
    mkdir -p "$CLUSTER_DIR/rabbitmq" "$CLUSTER_DIR/redis"
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    # Assigned first: `eval "$(…)"` would hide a failed start from set -e.
    brokers_env=$(./scripts/rabbitmq.sh cluster-start "$CLUSTER_DIR/rabbitmq" 3 "$CLUSTER_AMQP_PORT")
    eval "$brokers_env"
    redis_env=$(./scripts/redis.sh start "$CLUSTER_DIR/redis" "$CLUSTER_REDIS_PORT")
    eval "$redis_env"
    for index in 1 2 3; do
        port=$((CLUSTER_PORT + index))
        .build/release/switchboard serve --host 127.0.0.1 --port "$port" --gateway-id "gw-$index" \
            --auth none --backplane "$SWITCHBOARD_AMQP_CLUSTER_URLS" --history "$SWITCHBOARD_REDIS_URL" --presence "$SWITCHBOARD_REDIS_URL" >"$CLUSTER_DIR/gw-$index.log" 2>&1 &
        echo $! >"$CLUSTER_DIR/gw-$index.pid"
    done
    for index in 1 2 3; do
        port=$((CLUSTER_PORT + index))
        for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
    done
    SB_HAPROXY_BIND="127.0.0.1:$CLUSTER_PORT" \
        SB_GATEWAY_1="127.0.0.1:$((CLUSTER_PORT + 1))" \
        SB_GATEWAY_2="127.0.0.1:$((CLUSTER_PORT + 2))" \
        SB_GATEWAY_3="127.0.0.1:$((CLUSTER_PORT + 3))" \
        haproxy -db -f deploy/haproxy/haproxy.cfg >"$CLUSTER_DIR/haproxy.log" 2>&1 &
    echo $! >"$CLUSTER_DIR/haproxy.pid"
    for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$CLUSTER_PORT/readyz" >/dev/null && break; sleep 0.1; done
    cat <<TEXT

Switchboard cluster is up: 3 gateways behind HAProxy, a 3-node RabbitMQ cluster, Redis history and presence.
  open:     http://127.0.0.1:$CLUSTER_PORT/            (WebSocket: ws://127.0.0.1:$CLUSTER_PORT/ws?user=NAME)
  gateways: http://127.0.0.1:$((CLUSTER_PORT + 1)) … $((CLUSTER_PORT + 3))   logs: $CLUSTER_DIR/*.log
  brokers:  $SWITCHBOARD_AMQP_CLUSTER_URLS
  history:  $SWITCHBOARD_REDIS_URL
  fail over: scripts/rabbitmq.sh node-kill $CLUSTER_DIR/rabbitmq/node1   (node-start brings it back)
TEXT
}

case "$mode" in
foreground)
    trap 'echo; stop_cluster; exit 0' INT TERM
    start_cluster
    echo "Ctrl-C stops everything."
    while true; do sleep 1; done
    ;;
start)
    start_cluster
    echo "stop with: scripts/cluster.sh stop"
    ;;
stop)
    stop_cluster
    ;;
*)
    echo "usage: $0 [start|stop]" >&2
    exit 2
    ;;
esac
