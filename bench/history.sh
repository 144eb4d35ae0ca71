#!/usr/bin/env bash
# History benchmarks (docs/benchmarks.md, "History"): what recovery costs per message, and
# a reconnect storm. Starts a throwaway RabbitMQ and Redis on loopback and, per point, two
# release gateways; everything is stopped by PID on exit.
#
#   bench/history.sh [--quick]
#
# 1. Cost: `switchboard-bench direct` at RATE/s (default 5,000) for DURATION s (15) with
#    USERS (2,000) over 2 gateways, history off and on, for RabbitMQ + Redis history and
#    for the Redis backplane with its history on the same Redis (one script writes and
#    publishes). CPU per delivered message of the gateways and of the brokers (RabbitMQ's
#    beam.smp and redis-server), and the load generator's own.
# 2. Storm: STORM_USERS (10,000) on gateway A (RabbitMQ + Redis history); A is drained
#    (SIGTERM, --drain-window STORM_WINDOW s); each user misses MISSED (3) directs while
#    away, reconnects to B after RECONNECT_DELAY_MS (1,000) and resumes
#    (`switchboard-bench resume`). Time until every resume is answered, and CPU.
#
# Environment: SKIP_BUILD=1 (use .build/release binaries), the sizes above, BASE_PORT (18500).
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=${1:-}
if [ "$QUICK" = "--quick" ]; then
    : "${RATE:=500}" "${DURATION:=3}" "${USERS:=200}" "${STORM_USERS:=500}" "${STORM_WINDOW:=1}"
else
    : "${RATE:=5000}" "${DURATION:=15}" "${USERS:=2000}" "${STORM_USERS:=10000}" "${STORM_WINDOW:=10}"
fi
: "${MISSED:=3}" "${RECONNECT_DELAY_MS:=1000}" "${BASE_PORT:=18500}"
BIN=.build/release/switchboard
BENCH=.build/release/switchboard-bench
if [ -z "${SKIP_BUILD:-}" ]; then
    swift build -c release --product switchboard >/dev/null
    swift build -c release --product switchboard-bench >/dev/null
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d /tmp/switchboard-history-bench.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/rabbitmq" "$WORK/redis"
# shellcheck source=bench/gateways.sh
source bench/gateways.sh
cleanup() {
    stop_gateways
    ./scripts/rabbitmq.sh stop "$WORK/rabbitmq" >/dev/null 2>&1 || true
    ./scripts/redis.sh stop "$WORK/redis" >/dev/null 2>&1 || true
    # The gateways' warnings (failed publishes, history writes) are kept beside the results.
    mkdir -p bench/results && cp "$WORK"/gw-*.log bench/results/ 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
eval "$(./scripts/rabbitmq.sh start "$WORK/rabbitmq")"
eval "$(./scripts/redis.sh start "$WORK/redis")"
for _ in $(seq 1 100); do [ -s "$WORK/rabbitmq/rabbitmq.pid" ] && break; sleep 0.1; done
BEAM=$(cat "$WORK/rabbitmq/rabbitmq.pid")
REDIS=$(cat "$WORK/redis/redis.pid")
echo "# $(date -u +%FT%TZ) $(nproc) cores; RabbitMQ pid $BEAM, Redis pid $REDIS; $("$BIN" --version 2>/dev/null || echo switchboard)"

PORT=$BASE_PORT

echo "## cost: direct at ${RATES:-$RATE}/s for $DURATION s, $USERS users over 2 gateways"
for rate in ${RATES:-$RATE}; do
for point in "rabbitmq none" "rabbitmq redis" "redis-channels none" "redis-channels redis"; do
    set -- $point
    backplane=$1 history=$2
    case "$backplane" in
    rabbitmq) url=$SWITCHBOARD_AMQP_URL brokers=(--broker-pid "$BEAM" --broker-pid "$REDIS") ;;
    redis-channels) url="$SWITCHBOARD_REDIS_URL?mode=channels" brokers=(--broker-pid "$REDIS") ;;
    esac
    # A fresh key prefix per point: no stream carries over.
    history_url=none
    [ "$history" = redis ] && history_url="$SWITCHBOARD_REDIS_URL?prefix=bench$PORT"
    # The Redis backplane's history on the same server: the combined script needs the same URL before '?'.
    start_gateway "$url" "$history_url"
    pid1=$LAST_PID port1=$LAST_PORT
    start_gateway "$url" "$history_url"
    pid2=$LAST_PID port2=$LAST_PORT
    echo "### $backplane, history $history, $rate/s"
    echo "\$ $BENCH direct --gateway ws://127.0.0.1:$port1/ws --gateway ws://127.0.0.1:$port2/ws --users $USERS --rate $rate --duration $DURATION"
    timeout 180 "$BENCH" direct --gateway "ws://127.0.0.1:$port1/ws" --gateway "ws://127.0.0.1:$port2/ws" \
        --gateway-pid "$pid1" --gateway-pid "$pid2" "${brokers[@]}" --users "$USERS" --rate "$rate" --duration "$DURATION" \
        --label "$backplane+history-$history" --json || echo "(failed)"
    grep -c "" "$WORK/gw-$port1.log" "$WORK/gw-$port2.log" | sed 's/^/log lines: /'
    stop_gateways
done
done

echo "## storm: $STORM_USERS users drained from one gateway over $STORM_WINDOW s, $MISSED missed each, reconnect after $RECONNECT_DELAY_MS ms"
history_url="$SWITCHBOARD_REDIS_URL?prefix=storm$PORT"
start_gateway "$SWITCHBOARD_AMQP_URL" "$history_url" --drain-window "$STORM_WINDOW"
pidA=$LAST_PID portA=$LAST_PORT
start_gateway "$SWITCHBOARD_AMQP_URL" "$history_url"
pidB=$LAST_PID portB=$LAST_PORT
echo "\$ $BENCH resume --gateway ws://127.0.0.1:$portA/ws --resume-gateway ws://127.0.0.1:$portB/ws --users $STORM_USERS --missed $MISSED --reconnect-delay-ms $RECONNECT_DELAY_MS"
timeout 300 "$BENCH" resume --gateway "ws://127.0.0.1:$portA/ws" --resume-gateway "ws://127.0.0.1:$portB/ws" --drain-pid "$pidA" \
    --gateway-pid "$pidA" --gateway-pid "$pidB" --broker-pid "$REDIS" --users "$STORM_USERS" --missed "$MISSED" \
    --reconnect-delay-ms "$RECONNECT_DELAY_MS" --label "rabbitmq+redis-history" --json || echo "(failed)"
echo "(broker CPU above is Redis alone)"
stop_gateways
