#!/usr/bin/env bash
# Builds Switchboard and runs every test suite. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Formatting, C imports only in their client targets, unsafe-Sendable comments (make lint).
./scripts/lint.sh
# Each phase's start, so that a slow run says where its time went.
phase() { echo "== $(date -u +%T) $*"; }
phase "build"
swift build --build-tests

# The tests' own RabbitMQ, RabbitMQ cluster (three nodes) and Redis, and a RabbitMQ and a
# Redis of the Python checks' own: own names, ports and folders; stopped on exit.
work=$(mktemp -d /tmp/switchboard-test.XXXXXX)
chmod 755 "$work"  # the rabbitmq user reads its node folder below it
mkdir "$work/rabbitmq" "$work/redis" "$work/cluster" "$work/py-rabbitmq" "$work/py-redis"
cluster_pid=""
python_pid=""
cleanup() {
    if [ -n "$python_pid" ]; then kill "$python_pid" 2>/dev/null || true; wait "$python_pid" 2>/dev/null || true; fi
    if [ -n "$cluster_pid" ]; then wait "$cluster_pid" 2>/dev/null || true; fi
    ./scripts/rabbitmq.sh cluster-stop "$work/cluster" || true
    ./scripts/rabbitmq.sh stop "$work/rabbitmq" || true
    ./scripts/redis.sh stop "$work/redis" || true
    ./scripts/rabbitmq.sh stop "$work/py-rabbitmq" || true
    ./scripts/redis.sh stop "$work/py-redis" || true
    rm -rf "$work"
}
trap cleanup EXIT

# Independent clients: Python's websockets library, and headless Chromium driven over
# the DevTools protocol (a WebSocket page, then the demo chat on two gateways), from a
# throwaway virtualenv; pika as an independent AMQP client for the workers and the
# publish API. Screenshots go to artifacts/ (SWITCHBOARD_ARTIFACTS). They run beside the
# fuzzing and the Swift tests, which mostly wait, on brokers of their own: the Swift
# broker-restart cases take the shared ones away.
phase "brokers"
py_broker_env=$(./scripts/rabbitmq.sh start "$work/py-rabbitmq")
py_redis_env=$(./scripts/redis.sh start "$work/py-redis")
(
    set -euo pipefail
    eval "$py_broker_env"
    eval "$py_redis_env"
    export SWITCHBOARD_AMQP_URL SWITCHBOARD_AMQPS_URL SWITCHBOARD_RABBITMQ_DIR SWITCHBOARD_REDIS_URL SWITCHBOARD_REDISS_URL SWITCHBOARD_REDIS_DIR
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install --quiet --disable-pip-version-check "websockets>=12" "pika>=1.3"
    for check in independent_client browser_check demo_check workers_check; do
        echo "== $(date -u +%T) $check"
        "$work/venv/bin/python" "Tests/Python/$check.py" .build/debug/switchboard
    done
) >"$work/python.log" 2>&1 &
python_pid=$!

# Assigned first: `eval "$(…)"` would hide a failed start from set -e.
broker_env=$(./scripts/rabbitmq.sh start "$work/rabbitmq")
eval "$broker_env"
redis_env=$(./scripts/redis.sh start "$work/redis")
eval "$redis_env"
export SWITCHBOARD_AMQP_URL SWITCHBOARD_AMQPS_URL SWITCHBOARD_RABBITMQ_DIR SWITCHBOARD_REDIS_URL SWITCHBOARD_REDISS_URL SWITCHBOARD_REDIS_DIR
# The cluster boots while the fuzzing below runs (it takes half a minute or more).
./scripts/rabbitmq.sh cluster-start "$work/cluster" 3 >"$work/cluster.env" &
cluster_pid=$!
# A broker suite that finds no broker fails rather than skipping (Sources/SwitchboardTesting/Brokers.swift).
export SWITCHBOARD_REQUIRE_BROKERS=1

# A short libFuzzer run over the frame decoder and routing words (scripts/fuzz.sh 3600 for a long one).
phase "fuzz"
./scripts/fuzz.sh "${SWITCHBOARD_FUZZ_SECONDS:-20}"

# The browser client's logic, against a fake WebSocket (node's own test runner, no npm).
phase "javascript"
node --test Tests/JavaScript/

if ! wait "$cluster_pid"; then
    cluster_pid=""
    echo "the test RabbitMQ cluster did not start" >&2
    exit 1
fi
cluster_pid=""
eval "$(cat "$work/cluster.env")"
export SWITCHBOARD_AMQP_CLUSTER_URLS SWITCHBOARD_RABBITMQ_CLUSTER_DIR

# Serial: the broker-restart tests take a shared broker away from every other test while they run.
phase "swift test"
swift test --skip-build --no-parallel

phase "python checks"
if ! wait "$python_pid"; then
    python_pid=""
    cat "$work/python.log"
    echo "the Python and browser checks failed" >&2
    exit 1
fi
python_pid=""
cat "$work/python.log"
phase "done"
