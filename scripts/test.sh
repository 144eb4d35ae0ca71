#!/usr/bin/env bash
# Builds Switchboard and runs every test suite. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Formatting, C imports only in their client targets, unsafe-Sendable comments (make lint).
./scripts/lint.sh
swift build --build-tests

# A short libFuzzer run over the frame decoder and routing words (scripts/fuzz.sh 3600 for a long one).
./scripts/fuzz.sh "${SWITCHBOARD_FUZZ_SECONDS:-20}"

# The browser client's logic, against a fake WebSocket (node's own test runner, no npm).
node --test Tests/JavaScript/

# The tests' own RabbitMQ, RabbitMQ cluster (three nodes) and Redis: own names, ports and
# folders; stopped on exit.
work=$(mktemp -d /tmp/switchboard-test.XXXXXX)
chmod 755 "$work"  # the rabbitmq user reads its node folder below it
mkdir "$work/rabbitmq" "$work/redis" "$work/cluster"
cluster_pid=""
cleanup() {
    if [ -n "$cluster_pid" ]; then wait "$cluster_pid" 2>/dev/null || true; fi
    ./scripts/rabbitmq.sh cluster-stop "$work/cluster" || true
    ./scripts/rabbitmq.sh stop "$work/rabbitmq" || true
    ./scripts/redis.sh stop "$work/redis" || true
    rm -rf "$work"
}
trap cleanup EXIT
# Assigned first: `eval "$(…)"` would hide a failed start from set -e.
broker_env=$(./scripts/rabbitmq.sh start "$work/rabbitmq")
eval "$broker_env"
redis_env=$(./scripts/redis.sh start "$work/redis")
eval "$redis_env"
export SWITCHBOARD_AMQP_URL SWITCHBOARD_AMQPS_URL SWITCHBOARD_RABBITMQ_DIR SWITCHBOARD_REDIS_URL SWITCHBOARD_REDISS_URL SWITCHBOARD_REDIS_DIR
# The cluster boots while the Python checks below run (it takes half a minute or more).
./scripts/rabbitmq.sh cluster-start "$work/cluster" 3 >"$work/cluster.env" &
cluster_pid=$!
# A broker suite that finds no broker fails rather than skipping (Sources/SwitchboardTesting/Brokers.swift).
export SWITCHBOARD_REQUIRE_BROKERS=1

# Independent clients: Python's websockets library, and headless Chromium driven over
# the DevTools protocol (a WebSocket page, then the demo chat on two gateways), from a
# throwaway virtualenv. Screenshots go to artifacts/ (SWITCHBOARD_ARTIFACTS).
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "websockets>=12" "pika>=1.3"
"$work/venv/bin/python" Tests/Python/independent_client.py .build/debug/switchboard
"$work/venv/bin/python" Tests/Python/browser_check.py .build/debug/switchboard
"$work/venv/bin/python" Tests/Python/demo_check.py .build/debug/switchboard
# Background workers and the publish API, with pika as an independent AMQP client.
"$work/venv/bin/python" Tests/Python/workers_check.py .build/debug/switchboard

if ! wait "$cluster_pid"; then
    cluster_pid=""
    echo "the test RabbitMQ cluster did not start" >&2
    exit 1
fi
cluster_pid=""
eval "$(cat "$work/cluster.env")"
export SWITCHBOARD_AMQP_CLUSTER_URLS SWITCHBOARD_RABBITMQ_CLUSTER_DIR

# Serial: the broker-restart tests take a shared broker away from every other test while they run.
swift test --skip-build --no-parallel
