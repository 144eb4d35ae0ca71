#!/usr/bin/env bash
# Backplane benchmarks, end to end: starts a throwaway RabbitMQ and Redis on loopback,
# 2 and 4 gateways per backplane, runs the `switchboard-bench` scenarios against them,
# collects one JSON line per measurement into bench/results/<timestamp>.jsonl and writes
# the generated section of docs/benchmarks.md (tables) and docs/img/bench-*.png (plots)
# with bench/report.py.
#
# Usage: bench/run.sh [--quick] [--runs R] [--backplanes "rabbitmq redis-broadcast redis-channels"]
#                     [--gateways "2 4"] [--scenarios "direct room fanout connect idle"]
#                     [--dry-run] [--no-report]
#
#   --quick      smoke test: 1 run, small N, short durations; the report goes to
#                bench/results/<timestamp>-benchmarks.md, docs/ is left alone
#   --runs R     repetitions of every measured point (default 3); the report takes medians
#   --dry-run    start and stop every broker and gateway, print the bench commands, run none
#   --no-report  only collect the results file (bench/report.py can be run on it later)
#
# Environment: SKIP_BUILD=1 (use the existing .build/release/switchboard and switchboard-bench), SKIP_DEPS=1,
# BENCH_VENV=DIR (reuse a virtualenv with matplotlib instead of a throwaway one),
# BASE_PORT (first gateway port, default 18300), SWITCHBOARD_BIN (default .build/release/switchboard),
# SWITCHBOARD_BENCH_BIN (the load generator, default .build/release/switchboard-bench),
# and the sizes below (USERS, DIRECT_RATES, …).
#
# Everything started here (brokers, gateways, load generators) is stopped by PID on exit,
# Ctrl-C included. Every bench run is bounded by its own --duration/--hold and by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ARGV="bench/run.sh${*:+ $*}"

QUICK=""
DRY_RUN=""
REPORT=yes
RUNS=${RUNS:-}
BACKPLANES="rabbitmq redis-broadcast redis-channels"
GATEWAY_COUNTS="2 4"
SCENARIOS="direct room fanout connect idle"
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=yes ;;
    --dry-run) DRY_RUN=yes ;;
    --no-report) REPORT="" ;;
    --runs) RUNS=${2:?--runs R}; shift ;;
    --backplanes) BACKPLANES=${2:?--backplanes LIST}; shift ;;
    --gateways) GATEWAY_COUNTS=${2:?--gateways LIST}; shift ;;
    --scenarios) SCENARIOS=${2:?--scenarios LIST}; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# Sizes. Full run: medians of 3; --quick: one small pass that only proves the pipeline.
if [ -n "$QUICK" ]; then
    : "${RUNS:=1}" "${USERS:=200}" "${DIRECT_RATES:=200 1000}" "${DURATION:=2}"
    : "${CONNECT_USERS:=500}" "${ROOM_ROOMS:=20}" "${ROOM_MEMBERS:=10}" "${ROOM_RATE:=200}"
    : "${FANOUT_MEMBERS:=100}" "${FANOUT_RATE:=10}"
    : "${IDLE_ONE:=500}" "${IDLE_MANY:=400}" "${IDLE_HOLD:=1}" "${SETTLE_MAX:=5}"
else
    : "${RUNS:=3}" "${USERS:=2000}" "${DIRECT_RATES:=1000 2500 5000 10000}" "${DURATION:=10}"
    : "${CONNECT_USERS:=10000}" "${ROOM_ROOMS:=200}" "${ROOM_MEMBERS:=10}" "${ROOM_RATE:=1000}"
    : "${FANOUT_MEMBERS:=1000}" "${FANOUT_RATE:=10}"
    : "${IDLE_ONE:=19000}" "${IDLE_MANY:=60000}" "${IDLE_HOLD:=5}" "${SETTLE_MAX:=30}"
fi
IDLE_PARTS=${IDLE_PARTS:-4}           # bench processes (and gateways) sharing IDLE_MANY; ≤ 19,000 fds each
if [ $((IDLE_MANY / IDLE_PARTS)) -gt 19000 ]; then
    echo "IDLE_MANY=$IDLE_MANY over IDLE_PARTS=$IDLE_PARTS is more than 19,000 connections per process" >&2
    exit 2
fi
BASE_PORT=${BASE_PORT:-18300}
BIN=${SWITCHBOARD_BIN:-.build/release/switchboard}
BENCH=${SWITCHBOARD_BENCH_BIN:-.build/release/switchboard-bench}

for bp in $BACKPLANES; do
    case "$bp" in rabbitmq | redis-broadcast | redis-channels) ;; *) echo "unknown backplane: $bp" >&2; exit 2 ;; esac
done
for sc in $SCENARIOS; do
    case "$sc" in direct | room | fanout | connect | idle) ;; *) echo "unknown scenario: $sc" >&2; exit 2 ;; esac
done
has_scenario() { case " $SCENARIOS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
has_gateways() { case " $GATEWAY_COUNTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# ---------------------------------------------------------------------------------------
# Dependencies, build, limits, scratch folder
if [ -z "${SKIP_DEPS:-}" ]; then ./scripts/install-deps.sh; fi
if [ -z "${SKIP_BUILD:-}" ]; then
    swift build -c release --product switchboard >/dev/null
    swift build -c release --product switchboard-bench >/dev/null
fi
SWIFT_VERSION="not queried (SKIP_BUILD)"
if [ -z "${SKIP_BUILD:-}" ]; then SWIFT_VERSION=$(swift --version 2>&1 | head -1); fi
for binary in "$BIN" "$BENCH"; do
    [ -x "$binary" ] || { echo "error: $binary is missing (build it, or unset SKIP_BUILD)" >&2; exit 1; }
done
if [ -z "$DRY_RUN" ] && ! "$BENCH" direct --help 2>/dev/null | grep -q -- '--gateway-pid'; then
    echo "error: $BENCH has no 'direct --gateway-pid' (the backplane bench scenarios); rebuild" >&2
    exit 1
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 1048576 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_ONE + 100)) ]; then
    echo "warning: ulimit -n is $(ulimit -n); idle with $IDLE_ONE connections needs more" >&2
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results
RESULTS=${RESULTS:-$ROOT/bench/results/$stamp.jsonl}
LOGS=$ROOT/bench/results/$stamp-logs
mkdir -p "$LOGS"
: >"$RESULTS"
WORK=$(mktemp -d /tmp/switchboard-bench.XXXXXX)
chmod 755 "$WORK" # RabbitMQ runs as the rabbitmq user and must reach its folder

GW_PIDS=()
GW_URLS=()
BENCH_PIDS=()
BROKER=""
BROKER_PIDS=()

stop_gateways() {
    local pid
    for pid in "${GW_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${GW_PIDS[@]}"; do
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    GW_PIDS=()
    GW_URLS=()
}

stop_broker() {
    case "$BROKER" in
    rabbitmq) ./scripts/rabbitmq.sh stop "$WORK/rabbitmq" || true ;;
    redis) ./scripts/redis.sh stop "$WORK/redis" || true ;;
    esac
    BROKER=""
    BROKER_PIDS=()
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${BENCH_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${BENCH_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    stop_gateways
    stop_broker
    cp -r "$WORK/rabbitmq/log" "$LOGS/rabbitmq" 2>/dev/null || true
    cp "$WORK/redis/redis.log" "$LOGS/redis.log" 2>/dev/null || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A throwaway virtualenv with matplotlib for the report (created first so that a missing
# PyPI fails before an hour of measuring, not after).
PYTHON=""
if [ -n "$REPORT" ]; then
    VENV=${BENCH_VENV:-$WORK/venv}
    if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
    if "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null || "$VENV/bin/pip" install -q matplotlib; then
        PYTHON=$VENV/bin/python
    else
        echo "warning: could not install matplotlib; results are kept, the report is skipped" >&2
    fi
fi

record() { python3 bench/report.py "$@" >>"$RESULTS" || echo "warning: could not record: $*" >&2; }

record meta --argv "$ARGV" --param quick="${QUICK:-no}" --param dry_run="${DRY_RUN:-no}" \
    --param runs="$RUNS" --param users="$USERS" --param direct_rates="$DIRECT_RATES" \
    --param duration_s="$DURATION" --param connect_users="$CONNECT_USERS" \
    --param room="$ROOM_ROOMS rooms x $ROOM_MEMBERS members at $ROOM_RATE/s" \
    --param fanout="$FANOUT_MEMBERS members at $FANOUT_RATE/s" \
    --param idle_one="$IDLE_ONE" --param idle_many="$IDLE_MANY" --param idle_parts="$IDLE_PARTS" \
    --param backplanes="$BACKPLANES" --param gateways="$GATEWAY_COUNTS" --param scenarios="$SCENARIOS" \
    --param idle_hold_s="$IDLE_HOLD" --param ulimit_n="$(ulimit -n)" \
    --param skip_build="${SKIP_BUILD:-no}" --param binary="$BIN" --param bench_binary="$BENCH" --param swift="$SWIFT_VERSION"

# ---------------------------------------------------------------------------------------
# Brokers: one at a time, so that an idle broker does not take CPU from the measured one.
start_broker() { # rabbitmq | redis | none
    local want=$1 env pid
    [ "$BROKER" = "$want" ] && return 0
    stop_broker
    case "$want" in
    rabbitmq)
        mkdir -p "$WORK/rabbitmq"
        BROKER=rabbitmq # before it is up, so that an interrupt stops a half-started node
        if ! env=$(./scripts/rabbitmq.sh start "$WORK/rabbitmq"); then
            record event --kind error --name rabbitmq --backplane rabbitmq --message "RabbitMQ did not start"
            stop_broker
            return 1
        fi
        eval "$env"
        for _ in $(seq 1 100); do [ -s "$WORK/rabbitmq/rabbitmq.pid" ] && break; sleep 0.1; done
        pid=$(cat "$WORK/rabbitmq/rabbitmq.pid") # the Erlang VM (beam.smp) itself
        BROKER_PIDS=("$pid")
        record event --kind broker --name rabbitmq --pid "$pid" --comm "$(cat /proc/"$pid"/comm 2>/dev/null || echo '?')" \
            --cmd "scripts/rabbitmq.sh start \$DIR   # $SWITCHBOARD_AMQP_URL"
        ;;
    redis)
        BROKER=redis
        if ! env=$(./scripts/redis.sh start "$WORK/redis"); then
            record event --kind error --name redis --backplane redis --message "Redis did not start"
            stop_broker
            return 1
        fi
        eval "$env"
        pid=$(cat "$WORK/redis/redis.pid")
        BROKER_PIDS=("$pid")
        record event --kind broker --name redis --pid "$pid" --comm "$(cat /proc/"$pid"/comm 2>/dev/null || echo '?')" \
            --cmd "scripts/redis.sh start \$DIR   # $SWITCHBOARD_REDIS_URL"
        ;;
    none) ;;
    esac
}

backplane_url() {
    local base
    case "$1" in
    memory) echo memory ;;
    rabbitmq) echo "$SWITCHBOARD_AMQP_URL" ;;
    redis-broadcast | redis-channels)
        base=$SWITCHBOARD_REDIS_URL
        case "$base" in *\?*) echo "$base&mode=${1#redis-}" ;; *) echo "$base?mode=${1#redis-}" ;; esac
        ;;
    esac
}

NEXT_PORT=$BASE_PORT
# start_gateways BACKPLANE COUNT NAME: fresh ports every time (no waiting on old sockets).
start_gateways() {
    local backplane=$1 count=$2 name=$3 url i port pid ready cmds=()
    url=$(backplane_url "$backplane")
    for i in $(seq 1 "$count"); do
        NEXT_PORT=$((NEXT_PORT + 1))
        port=$NEXT_PORT
        local cmd=("$BIN" serve --port "$port" --backplane "$url" --auth none --gateway-id "gw-$i"
            --log-level error --event-loops 1 --rate-limit 1000000 --rate-burst 1000000 --max-rooms-per-connection 1000
            --max-outbound-bytes 16777216 --drain-grace 0 --drain-window 1)
        "${cmd[@]}" >"$LOGS/$name-gw-$i.log" 2>&1 &
        GW_PIDS+=($!)
        GW_URLS+=("ws://127.0.0.1:$port/ws")
        cmds+=(--cmd "$(printf '%q ' "${cmd[@]}")")
    done
    for i in $(seq 0 $((count - 1))); do
        pid=${GW_PIDS[$i]}
        port=${GW_URLS[$i]#ws://127.0.0.1:}
        port=${port%/ws}
        ready=""
        for _ in $(seq 1 300); do
            if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then ready=yes; break; fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if [ -z "$ready" ]; then
            echo "gateway $((i + 1)) of $name ($backplane) did not become ready; log: $LOGS/$name-gw-$((i + 1)).log" >&2
            tail -5 "$LOGS/$name-gw-$((i + 1)).log" >&2 || true
            record event --kind error --name "$name" --backplane "$backplane" --gateways "$count" \
                --message "gateway gw-$((i + 1)) did not become ready: $(tail -3 "$LOGS/$name-gw-$((i + 1)).log" 2>/dev/null | tr '\n' ' ')"
            stop_gateways
            return 1
        fi
    done
    record event --kind serve --name "$name" --backplane "$backplane" --gateways "$count" --pid "${GW_PIDS[*]}" "${cmds[@]}"
    echo "== $name: $count gateway(s) on $backplane ready (PIDs ${GW_PIDS[*]})"
}

# All gateways still running? Otherwise records why and says no.
gateways_alive() {
    local backplane=$1 count=$2 pid
    for pid in "${GW_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && continue
        echo "   ! gateway $pid exited; skipping the rest of $backplane with $count gateways" >&2
        record event --kind error --name "$backplane-$count" --backplane "$backplane" --gateways "$count" \
            --message "gateway PID $pid exited during the measurements (logs: $LOGS)"
        return 1
    done
}

cpu_ticks() { # total utime+stime of the given PIDs, in clock ticks
    local total=0 pid stat fields
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        read -r -a fields <<<"${stat##*) }" # from field 3 (state) on: utime is [11], stime [12]
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}

# Waits (at most SETTLE_MAX s) until brokers and gateways are quiet (< 10 % of a core),
# e.g. while a broker still works through the unbinds of the previous run.
settle() {
    local pids=("${GW_PIDS[@]}" "${BROKER_PIDS[@]}") before after
    [ ${#pids[@]} -gt 0 ] || return 0
    for _ in $(seq 1 "$SETTLE_MAX"); do
        before=$(cpu_ticks "${pids[@]}")
        sleep 1
        after=$(cpu_ticks "${pids[@]}")
        [ $((after - before)) -lt $(($(getconf CLK_TCK) / 10)) ] && return 0
    done
    echo "   (still busy after ${SETTLE_MAX}s; measuring anyway)"
}

pid_args() {
    local pid
    for pid in "${GW_PIDS[@]}"; do printf -- '--gateway-pid\n%s\n' "$pid"; done
    for pid in "${BROKER_PIDS[@]}"; do printf -- '--broker-pid\n%s\n' "$pid"; done
}

gateway_args() {
    local url
    for url in "${GW_URLS[@]}"; do printf -- '--gateway\n%s\n' "$url"; done
}

# bench SCENARIO BACKPLANE GATEWAYS RUN GROUP PART PARTS TIMEOUT -- ARGS… : one bench
# process, waited for here (PART 0) or left running (PART ≥ 1, collected by the caller).
# It always runs in the background so that Ctrl-C interrupts the wait at once.
declare -A PART_CMD=()
bench() {
    local scenario=$1 backplane=$2 gateways=$3 run=$4 group=$5 part=$6 parts=$7 limit=$8
    shift 9
    local cmd=("$BENCH" "$scenario" "$@" --label "$backplane" --json)
    local out="$LOGS/$group-part$part.out" printable pid rc=0
    printable=$(printf '%q ' "${cmd[@]}")
    printable=${printable% }
    echo "   $scenario run $run${parts:+ part $part/$parts}: ${printable:0:150}…"
    if [ -n "$DRY_RUN" ]; then
        echo "   + $printable"
        record annotate --line "" --scenario "$scenario" --backplane "$backplane" --gateways "$gateways" \
            --run "$run" --group "$group" --part "$part" --parts "$parts" --rc dry-run --cmd "$printable"
        return 0
    fi
    timeout -k 10 "$limit" "${cmd[@]}" >"$out" 2>&1 &
    pid=$!
    BENCH_PIDS+=("$pid")
    PART_CMD[$part]=$printable
    [ "$part" -ge 1 ] && return 0
    wait "$pid" || rc=$?
    BENCH_PIDS=()
    save_result "$scenario" "$backplane" "$gateways" "$run" "$group" "$part" "$parts" "$rc" "$printable" "$out"
}

save_result() {
    local scenario=$1 backplane=$2 gateways=$3 run=$4 group=$5 part=$6 parts=$7 rc=$8 printable=$9 out=${10}
    local line
    line=$(grep '^{' "$out" | tail -1 || true)
    [ "$rc" -eq 0 ] || echo "   ! exit $rc; output in $out" >&2
    record annotate --line "$line" --scenario "$scenario" --backplane "$backplane" --gateways "$gateways" \
        --run "$run" --group "$group" --part "$part" --parts "$parts" --rc "$rc" --cmd "$printable" \
        --tail "$(tail -3 "$out" | tr '\n' ' ')"
}

# ---------------------------------------------------------------------------------------
# The measurements of one configuration (backplane × gateways), on gateways already up.
measure_config() {
    local backplane=$1 count=$2 run rate gw pids
    mapfile -t gw < <(gateway_args)
    mapfile -t pids < <(pid_args)
    local t=$((DURATION + 120))
    for run in $(seq 1 "$RUNS"); do
        gateways_alive "$backplane" "$count" || return 0
        if has_scenario direct; then
            for rate in $DIRECT_RATES; do
                settle
                bench direct "$backplane" "$count" "$run" "direct-$backplane-$count-r$rate-run$run" 0 "" "$t" -- \
                    "${gw[@]}" "${pids[@]}" --users "$USERS" --rate "$rate" --duration "$DURATION"
            done
        fi
        gateways_alive "$backplane" "$count" || return 0
        if has_scenario room; then
            settle
            bench room "$backplane" "$count" "$run" "room-$backplane-$count-run$run" 0 "" "$t" -- \
                "${gw[@]}" "${pids[@]}" --users "$USERS" --rooms "$ROOM_ROOMS" --members-per-room "$ROOM_MEMBERS" \
                --rate "$ROOM_RATE" --duration "$DURATION"
        fi
        if has_scenario fanout; then
            settle
            bench fanout "$backplane" "$count" "$run" "fanout-$backplane-$count-run$run" 0 "" "$t" -- \
                "${gw[@]}" "${pids[@]}" --users $((FANOUT_MEMBERS + 1)) --members "$FANOUT_MEMBERS" \
                --rate "$FANOUT_RATE" --duration "$DURATION"
        fi
        if has_scenario connect; then
            settle
            bench connect "$backplane" "$count" "$run" "connect-$backplane-$count-run$run" 0 "" 300 -- \
                "${gw[@]}" "${pids[@]}" --users "$CONNECT_USERS"
        fi
    done
    settle
}

# IDLE_MANY connections over IDLE_PARTS gateways, one bench process per gateway (a process
# may hold at most 20,000 fds), all at once; fresh gateways every run so that RSS before
# the connections is a cold gateway's. The report sums the parts of a group.
measure_idle_many() {
    local backplane=$1 run i per=$((IDLE_MANY / IDLE_PARTS)) group rc pid p broker_args=()
    for p in "${BROKER_PIDS[@]}"; do broker_args+=(--broker-pid "$p"); done
    for run in $(seq 1 "$RUNS"); do
        group="idle-$backplane-$IDLE_PARTS-run$run"
        start_gateways "$backplane" "$IDLE_PARTS" "$group" || continue
        settle
        BENCH_PIDS=()
        for i in $(seq 1 "$IDLE_PARTS"); do
            # The hold covers the others' connecting too, so all IDLE_MANY are open together.
            bench idle "$backplane" "$IDLE_PARTS" "$run" "$group" "$i" "$IDLE_PARTS" 400 -- \
                --gateway "${GW_URLS[$((i - 1))]}" --gateway-pid "${GW_PIDS[$((i - 1))]}" \
                "${broker_args[@]}" \
                --users "$per" --hold $((IDLE_HOLD + 10))
        done
        if [ -z "$DRY_RUN" ]; then
            for i in $(seq 1 "$IDLE_PARTS"); do
                pid=${BENCH_PIDS[$((i - 1))]}
                rc=0
                wait "$pid" || rc=$?
                save_result idle "$backplane" "$IDLE_PARTS" "$run" "$group" "$i" "$IDLE_PARTS" "$rc" "${PART_CMD[$i]}" "$LOGS/$group-part$i.out"
            done
        fi
        BENCH_PIDS=()
        stop_gateways
    done
}

measure_idle_one() {
    local run group pids
    for run in $(seq 1 "$RUNS"); do
        group="idle-memory-1-run$run"
        start_gateways memory 1 "$group" || continue
        mapfile -t pids < <(pid_args)
        bench idle memory 1 "$run" "$group" 0 "" 300 -- \
            --gateway "${GW_URLS[0]}" "${pids[@]}" --users "$IDLE_ONE" --hold "$IDLE_HOLD"
        stop_gateways
    done
}

# ---------------------------------------------------------------------------------------
echo "results: $RESULTS   logs: $LOGS"
for backplane in $BACKPLANES; do
    broker=redis
    [ "$backplane" = rabbitmq ] && broker=rabbitmq
    start_broker "$broker" || { echo "$broker did not start; skipping $backplane" >&2; continue; }
    for count in $GATEWAY_COUNTS; do
        if has_scenario direct || has_scenario room || has_scenario fanout || has_scenario connect; then
            if start_gateways "$backplane" "$count" "$backplane-$count"; then
                measure_config "$backplane" "$count"
                stop_gateways
            fi
        fi
    done
    if has_scenario idle && has_gateways "$IDLE_PARTS"; then measure_idle_many "$backplane"; fi
done
if has_scenario idle; then
    start_broker none
    measure_idle_one
fi
record event --kind end

echo "results: $RESULTS"
if [ -n "$PYTHON" ]; then
    if [ -n "$QUICK" ] || [ -n "$DRY_RUN" ]; then
        # A smoke test never overwrites the published figures.
        cp docs/benchmarks.md "bench/results/$stamp-benchmarks.md"
        "$PYTHON" bench/report.py report "$RESULTS" --doc "bench/results/$stamp-benchmarks.md" --img-dir "bench/results/$stamp-img"
    else
        "$PYTHON" bench/report.py report "$RESULTS" --doc docs/benchmarks.md --img-dir docs/img
    fi
fi
