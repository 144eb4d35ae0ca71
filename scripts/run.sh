#!/usr/bin/env bash
# Runs one gateway on the embedded in-memory backplane: ws://127.0.0.1:8080/ws?user=NAME
# Extra arguments are passed to `switchboard serve` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build -c release --product switchboard
exec .build/release/switchboard serve --port "${PORT:-8080}" --backplane memory --auth none --gateway-id "${GATEWAY_ID:-gw-1}" "$@"
