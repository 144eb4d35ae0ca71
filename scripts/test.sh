#!/usr/bin/env bash
# Builds Switchboard and runs every test suite. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
swift build --build-tests

# A short libFuzzer run over the frame decoder and routing words (scripts/fuzz.sh 3600 for a long one).
./scripts/fuzz.sh "${SWITCHBOARD_FUZZ_SECONDS:-20}"

# Independent clients: Python's websockets library, and headless Chromium driven over
# the DevTools protocol, from a throwaway virtualenv.
venv=$(mktemp -d /tmp/switchboard-venv.XXXXXX)
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "websockets>=12"
"$venv/bin/python" Tests/Python/independent_client.py .build/debug/switchboard
"$venv/bin/python" Tests/Python/browser_check.py .build/debug/switchboard
rm -rf "$venv"

# A RabbitMQ of the tests' own: own node name, ports and folder; stopped on exit.
broker_dir=$(mktemp -d /tmp/switchboard-rabbitmq.XXXXXX)
trap './scripts/rabbitmq.sh stop "$broker_dir"; rm -rf "$broker_dir"' EXIT
broker_env=$(./scripts/rabbitmq.sh start "$broker_dir")
eval "$broker_env"
export SWITCHBOARD_AMQP_URL SWITCHBOARD_AMQPS_URL SWITCHBOARD_RABBITMQ_DIR

# Serial: the broker-restart test takes the shared RabbitMQ away from every other test while it runs.
swift test --skip-build --no-parallel
