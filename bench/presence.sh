#!/usr/bin/env bash
# What presence costs: a connect storm of USERS users in ROOMS rooms on two gateways
# (RabbitMQ backplane), with --presence none ("off"), with a Redis presence ("on"), and
# with a Redis presence and every connection joining with "presence": true ("events": each
# gets the joined events of its room), then an idle hold with the presence refreshes running.
#
# Usage: bench/presence.sh [USERS] [ROOMS] [RUNS] [IDLE_SECONDS]   (defaults 10000 100 2 60)
#
# Per mode and run, one line each for:
# - the storm: connections opened (each welcome: its user bound), room joins acked, and
#   with presence the moment Redis lists every user (sum of the rooms' user hashes);
#   CPU seconds of the gateways, Redis, RabbitMQ and the load generator over the storm,
#   per connection; Redis commands (INFO commandstats, script-internal calls included)
#   and script calls (EVALSHA) per connection.
# - the hold: the same CPU and Redis figures over IDLE_SECONDS with 10,000 idle
#   connections, and the refreshes the gateways counted (switchboard_presence_refreshes_total).
# The presence TTL is the default 60 s, so the gateways refresh every 20 s.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-10000}
ROOMS=${2:-100}
RUNS=${3:-2}
IDLE=${4:-60}
PORT1=${PORT1:-18291}
PORT2=${PORT2:-18292}
./scripts/install-deps.sh >/dev/null
swift build -c release --product switchboard >/dev/null
swift build -c release --product switchboard-bench >/dev/null
BIN=.build/release/switchboard
BENCH=.build/release/switchboard-bench
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d /tmp/switchboard-bench-presence.XXXXXX)
chmod 755 "$work"  # the broker runs as the rabbitmq user and must reach its folder
GW1=""
GW2=""
HOLDER=""
cleanup() {
    for pid in $HOLDER $GW1 $GW2; do kill "$pid" 2>/dev/null || true; done
    ./scripts/rabbitmq.sh stop "$work/rabbitmq" || true
    ./scripts/redis.sh stop "$work/redis" || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/rabbitmq" "$work/redis"
broker_env=$(./scripts/rabbitmq.sh start "$work/rabbitmq")
eval "$broker_env"
redis_env=$(./scripts/redis.sh start "$work/redis")
eval "$redis_env"
for _ in $(seq 1 100); do [ -s "$work/rabbitmq/rabbitmq.pid" ] && break; sleep 0.1; done
BEAM=$(cat "$work/rabbitmq/rabbitmq.pid")
REDIS_PID=$(cat "$work/redis/redis.pid")
echo "# $(date -u +%FT%TZ) $(nproc) cores; commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' with local changes'); $USERS users, $ROOMS rooms, 2 gateways"

# CPU seconds (user + system) of a process, from /proc.
cpu() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}
redis_cli() { ./scripts/redis.sh cli "$work/redis" "$@"; }
# Total commands Redis ran, and the EVALSHA calls among them.
redis_commands() { redis_cli INFO commandstats | awk -F'[:=,]' '/^cmdstat_/ { total += $3 } END { print total + 0 }'; }
redis_scripts() { redis_cli INFO commandstats | awk -F'[:=,]' '/^cmdstat_evalsha:/ { print $3 + 0; found = 1 } END { if (!found) print 0 }'; }
metric() {
    curl -sf "http://127.0.0.1:$1/metrics" | awk -v name="$2" '$1 == name { print $2 }'
}
now() { date +%s.%N; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
sum() { awk '{ s += $1 } END { printf "%.3f", s }'; }
# Users Redis lists over all rooms: one EVAL of ROOMS HLENs (1 + ROOMS commands, counted out below).
listed() {
    redis_cli EVAL "local n = 0 for i = 0, tonumber(ARGV[2]) - 1 do n = n + redis.call('HLEN', ARGV[1] .. ':pu:{room.r' .. i .. '}') end return n" 0 "$1" "$ROOMS"
}
events() {
    local total=0
    for port in $PORT1 $PORT2; do
        total=$(awk -v t="$total" -v a="$(metric "$port" 'switchboard_presence_events_total{type="joined"}')" 'BEGIN { print t + a }')
    done
    echo "$total"
}

for run in $(seq 1 "$RUNS"); do
    for mode in off on events; do
        prefix="bench$run$mode"
        presence=(--presence none)
        subscribe=()
        [ "$mode" != off ] && presence=(--presence "$SWITCHBOARD_REDIS_URL?prefix=$prefix")
        [ "$mode" = events ] && subscribe=(--presence-events)
        for index in 1 2; do
            port_var="PORT$index"
            "$BIN" serve --port "${!port_var}" --backplane "$SWITCHBOARD_AMQP_URL" --auth none --gateway-id "presence-$index-$run$mode" \
                "${presence[@]}" --log-level error 2>"$work/gw$index.log" &
            eval "GW$index=$!"
        done
        for port in $PORT1 $PORT2; do
            for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
        done
        before_gw=$( (cpu "$GW1"; echo; cpu "$GW2"; echo) | sum)
        before_redis=$(cpu "$REDIS_PID")
        before_beam=$(cpu "$BEAM")
        before_commands=$(redis_commands)
        before_scripts=$(redis_scripts)
        started=$(now)
        "$BENCH" idle --gateway "ws://127.0.0.1:$PORT1/ws" --gateway "ws://127.0.0.1:$PORT2/ws" --users "$USERS" --rooms "$ROOMS" \
            --hold $((IDLE + 20)) --gateway-pid "$GW1" --gateway-pid "$GW2" ${subscribe[@]+"${subscribe[@]}"} >"$work/holder.log" 2>&1 &
        HOLDER=$!
        for _ in $(seq 1 1800); do grep -q "connections opened" "$work/holder.log" && break; sleep 0.05; done
        joined_at=$(now)
        complete_at=$joined_at
        probes=0
        if [ "$mode" != off ]; then
            for _ in $(seq 1 600); do
                probes=$((probes + 1))
                [ "$(listed "$prefix")" -ge "$USERS" ] && break
                sleep 0.05
            done
            complete_at=$(now)
        fi
        # The writes batched behind the last joins have landed by now; count the storm.
        gw=$( (cpu "$GW1"; echo; cpu "$GW2"; echo) | sum)
        redis=$(cpu "$REDIS_PID")
        beam=$(cpu "$BEAM")
        generator=$(cpu "$HOLDER")
        commands=$(($(redis_commands) - probes * (ROOMS + 1)))
        scripts=$(redis_scripts)
        announced=$(events)
        awk -v mode="$mode" -v run="$run" -v line="$(head -1 "$work/holder.log")" -v users="$USERS" \
            -v joined="$(minus "$joined_at" "$started")" -v complete="$(minus "$complete_at" "$started")" \
            -v gw="$(minus "$gw" "$before_gw")" -v redis="$(minus "$redis" "$before_redis")" \
            -v beam="$(minus "$beam" "$before_beam")" -v gen="$generator" \
            -v commands="$((commands - before_commands))" -v scripts="$((scripts - before_scripts))" -v announced="$announced" 'BEGIN {
            printf "run %d presence %s storm: %s\n", run, mode, line
            printf "  joins acked %.2f s after the start, presence complete %.2f s; CPU s: gateways %.2f, redis %.2f, rabbitmq %.2f, generator %.2f", joined, complete, gw, redis, beam, gen
            printf " (gateways %.1f µs, redis %.1f µs per connection); redis commands %d (%.2f per connection), scripts %d (%.3f per connection); joined events published %d\n", gw / users * 1e6, redis / users * 1e6, commands, commands / users, scripts, scripts / users, announced
        }'
        # The hold: idle connections, refreshes every 20 s.
        before_gw=$gw
        before_redis=$redis
        before_commands=$(redis_commands)
        before_scripts=$(redis_scripts)
        before_refreshes=$( (metric "$PORT1" switchboard_presence_refreshes_total; metric "$PORT2" switchboard_presence_refreshes_total) | sum)
        sleep "$IDLE"
        gw=$( (cpu "$GW1"; echo; cpu "$GW2"; echo) | sum)
        redis=$(cpu "$REDIS_PID")
        refreshes=$( (metric "$PORT1" switchboard_presence_refreshes_total; metric "$PORT2" switchboard_presence_refreshes_total) | sum)
        entries=$( (metric "$PORT1" switchboard_presence_entries; metric "$PORT2" switchboard_presence_entries) | sum)
        awk -v mode="$mode" -v run="$run" -v idle="$IDLE" -v gw="$(minus "$gw" "$before_gw")" -v redis="$(minus "$redis" "$before_redis")" \
            -v commands="$(($(redis_commands) - before_commands))" -v scripts="$(($(redis_scripts) - before_scripts))" \
            -v refreshes="$(minus "$refreshes" "$before_refreshes")" -v entries="$entries" 'BEGIN {
            printf "run %d presence %s idle %d s: CPU s gateways %.3f, redis %.3f; redis commands %d, scripts %d; refreshes %d; presence entries %d\n", run, mode, idle, gw, redis, commands, scripts, refreshes, entries
        }'
        kill "$HOLDER" 2>/dev/null || true
        wait "$HOLDER" 2>/dev/null || true
        HOLDER=""
        kill "$GW1" "$GW2" 2>/dev/null || true
        wait "$GW1" "$GW2" 2>/dev/null || true
        GW1=""
        GW2=""
    done
done
