#!/usr/bin/env bash
# Installs what building and testing Switchboard needs on Debian, and nothing twice.
# The Swift toolchain (6.2 or later) must already be on PATH: Debian does not package it.
set -euo pipefail

# Debian packages the build, the tests or the runtime use. Extend this list when a
# target gains a system dependency; CI installs from it on a fresh machine.
PACKAGES=(
    curl            # health probes in scripts
    procps          # ps/kill in scripts
    pkg-config      # SwiftPM finds librabbitmq through it
    librabbitmq-dev # the AMQP client (rabbitmq-c) the RabbitMQ backplane wraps
    libssl-dev      # amqps:// through rabbitmq-c's OpenSSL
    libhiredis-dev  # the RESP reader the Redis backplane wraps (RedisClient)
    rabbitmq-server # the broker the tests start on loopback
    redis-server    # the Redis backplane's broker (scripts/redis.sh, bench/run.sh)
    redis-sentinel  # a Sentinel-managed Redis in the failover tests (scripts/redis.sh sentinel-start)
    openssl         # a throwaway CA for the broker's TLS listener in tests
    haproxy         # the load balancer of the end-to-end tests and scripts/cluster.sh
    nginx-light     # only to lint deploy/nginx/nginx.conf (nginx -t)
    python3-venv    # a throwaway virtualenv for the Python websockets client check
    chromium        # a browser-grade WebSocket client in the tests (headless)
)

if ! command -v swift >/dev/null 2>&1; then
    echo "error: swift is not on PATH. Install a Swift 6.2+ toolchain (https://swift.org/install) and retry." >&2
    exit 1
fi

# node runs the browser client's unit tests; the machine image usually has one already.
command -v node >/dev/null 2>&1 || PACKAGES+=(nodejs)

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
