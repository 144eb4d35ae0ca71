#!/usr/bin/env bash
# The message path, backplane by backplane, measured by two load generators
# (docs/benchmarks.md, "The RabbitMQ path"). Starts a throwaway RabbitMQ and Redis on
# loopback and, per backplane, two release gateways (one event loop each); runs direct and
# room traffic with `switchboard-bench` and, when a Python with picows is given, with the
# independent generator bench/wsload.py; prints one line of JSON per point and appends it
# to bench/results/path-<timestamp>.jsonl. Everything is stopped by PID on exit.
#
#   bench/path.sh
#
# Environment (defaults in brackets):
#   BACKPLANES ["rabbitmq redis-channels"] (also rabbitmq-direct: --exchange-type direct, redis-broadcast)  SCENARIOS ["direct room"] (or connect: a storm of
#   CONNECT_USERS [10000] users, switchboard-bench only)
#   DIRECT_RATES ["5000 10000"]  ROOM_RATES ["5000 10000"]  DURATION [15]  USERS [2000]
#   ROOMS [200] (room: USERS / ROOMS members each)
#   GENERATORS ["swift"]; add "picows" to run bench/wsload.py too (needs PICOWS_PYTHON,
#   a python with picows and uvloop: python3 -m venv V && V/bin/pip install picows uvloop)
#   SKIP_BUILD=1 (use .build/release binaries), SWITCHBOARD_BIN (the gateway binary, default
#   .build/release/switchboard), BASE_PORT [18700], PERF=SECONDS (record a
#   `perf record -g` of the first gateway during each point, into bench/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BACKPLANES:=rabbitmq redis-channels}" "${SCENARIOS:=direct room}"
: "${DIRECT_RATES:=5000 10000}" "${ROOM_RATES:=5000 10000}" "${DURATION:=15}" "${USERS:=2000}" "${ROOMS:=200}"
: "${CONNECT_USERS:=10000}" "${GENERATORS:=swift}" "${BASE_PORT:=18700}" "${PERF:=}"
BIN=${SWITCHBOARD_BIN:-.build/release/switchboard}
BENCH=.build/release/switchboard-bench
if [ -z "${SKIP_BUILD:-}" ]; then
    swift build -c release --product switchboard >/dev/null
    swift build -c release --product switchboard-bench >/dev/null
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p bench/results
RESULTS=bench/results/path-$(date -u +%Y%m%dT%H%M%SZ).jsonl
WORK=$(mktemp -d /tmp/switchboard-path-bench.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/rabbitmq" "$WORK/redis"
# shellcheck source=bench/gateways.sh
source bench/gateways.sh
cleanup() {
    stop_gateways
    ./scripts/rabbitmq.sh stop "$WORK/rabbitmq" >/dev/null 2>&1 || true
    ./scripts/redis.sh stop "$WORK/redis" >/dev/null 2>&1 || true
    cp "$WORK"/gw-*.log bench/results/ 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
eval "$(./scripts/rabbitmq.sh start "$WORK/rabbitmq")"
eval "$(./scripts/redis.sh start "$WORK/redis")"
for _ in $(seq 1 100); do [ -s "$WORK/rabbitmq/rabbitmq.pid" ] && break; sleep 0.1; done
BEAM=$(cat "$WORK/rabbitmq/rabbitmq.pid")
REDIS=$(cat "$WORK/redis/redis.pid")
echo "# $(date -u +%FT%TZ) $(nproc) cores; commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' with local changes'); RabbitMQ pid $BEAM, Redis pid $REDIS"

PORT=$BASE_PORT

# Waits (at most 60 s) until both brokers together use under a tenth of a core: a stopped
# gateway's queue and its thousands of bindings are deleted after the gateway is gone (on
# the broker this point may not even use), and that work must not be counted in the next.
settle() {
    local before after
    for _ in $(seq 1 60); do
        before=$(cat "/proc/$BEAM/stat" "/proc/$REDIS/stat" | awk '{t += $14 + $15} END {print t}')
        sleep 1
        after=$(cat "/proc/$BEAM/stat" "/proc/$REDIS/stat" | awk '{t += $14 + $15} END {print t}')
        [ $((after - before)) -lt 10 ] && return 0
    done
}

for backplane in $BACKPLANES; do
    case "$backplane" in
    rabbitmq) url=$SWITCHBOARD_AMQP_URL broker=$BEAM extra=() ;;
    rabbitmq-direct) url=$SWITCHBOARD_AMQP_URL broker=$BEAM extra=(--exchange switchboard.direct --exchange-type direct) ;;
    redis-channels) url="$SWITCHBOARD_REDIS_URL?mode=channels" broker=$REDIS extra=() ;;
    redis-broadcast) url="$SWITCHBOARD_REDIS_URL?mode=broadcast" broker=$REDIS extra=() ;;
    *) echo "unknown backplane $backplane" >&2; exit 2 ;;
    esac
    for scenario in $SCENARIOS; do
        rates=$DIRECT_RATES
        [ "$scenario" = room ] && rates=$ROOM_RATES
        [ "$scenario" = connect ] && rates=storm
        for rate in $rates; do
            for generator in $GENERATORS; do
                [ "$scenario" = connect ] && [ "$generator" != swift ] && continue
                settle
                start_gateway "$url" none ${extra[@]+"${extra[@]}"}; a_pid=$LAST_PID a_port=$LAST_PORT
                start_gateway "$url" none ${extra[@]+"${extra[@]}"}; b_pid=$LAST_PID b_port=$LAST_PORT
                args=(--gateway "ws://127.0.0.1:$a_port/ws" --gateway "ws://127.0.0.1:$b_port/ws"
                    --gateway-pid "$a_pid" --gateway-pid "$b_pid" --broker-pid "$broker"
                    --users "$USERS" --rate "$rate" --duration "$DURATION" --label "$backplane" --json)
                [ "$scenario" = room ] && args+=(--rooms "$ROOMS" --members-per-room $((USERS / ROOMS)))
                if [ "$scenario" = connect ]; then
                    # A storm: every user at once (as many handshakes in flight as allowed), no traffic.
                    args=(--gateway "ws://127.0.0.1:$a_port/ws" --gateway "ws://127.0.0.1:$b_port/ws"
                        --gateway-pid "$a_pid" --gateway-pid "$b_pid" --broker-pid "$broker"
                        --users "$CONNECT_USERS" --connect-concurrency 1000 --label "$backplane" --json)
                fi
                case "$generator" in
                swift) command=("$BENCH" "$scenario" "${args[@]}") ;;
                picows) command=("${PICOWS_PYTHON:?set PICOWS_PYTHON to a python with picows and uvloop}" bench/wsload.py "$scenario" "${args[@]}") ;;
                *) echo "unknown generator $generator" >&2; exit 2 ;;
                esac
                echo "# $scenario, $backplane, $rate/s, generator $generator: ${command[*]}"
                perf_pid=""
                if [ -n "$PERF" ]; then
                    (sleep $((DURATION / 2 + 3)); exec perf record -F 999 -g -o "bench/results/perf-$backplane-$scenario-$rate-$generator.data" -p "$a_pid" -- sleep "$PERF") >/dev/null 2>&1 &
                    perf_pid=$!
                fi
                output=$(timeout $((DURATION + 200)) "${command[@]}" 2>&1) || echo "# the generator failed: $output"
                [ -n "$perf_pid" ] && wait "$perf_pid" 2>/dev/null || true
                echo "$output" | grep -v '^{' || true
                # wsload.py names itself in its JSON; switchboard-bench does not.
                echo "$output" | grep '^{' | sed "/\"generator\":/!s/^{/{\"generator\":\"switchboard-bench\",/" >>"$RESULTS" || true
                stop_gateways
            done
        done
    done
done
echo "# results: $RESULTS"
