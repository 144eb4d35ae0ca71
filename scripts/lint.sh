#!/usr/bin/env bash
# The project's checks beyond the compiler (make lint; scripts/test.sh runs it first):
#  1. formatting: `swift format` (ships with the toolchain) with .swift-format, strict;
#  2. only the AMQP and Redis client targets import the C libraries;
#  3. every `@unchecked Sendable` and `nonisolated(unsafe)` has a comment saying why it is
#     safe, on its line or in the comment block right above it.
# `scripts/lint.sh --fix` rewrites the formatting in place first.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0

if [[ "${1:-}" == "--fix" ]]; then
    swift format format --in-place --recursive --parallel Sources Tests Package.swift
fi
if ! swift format lint --strict --recursive --parallel Sources Tests Package.swift; then
    echo "lint: formatting differs from .swift-format (scripts/lint.sh --fix rewrites it)" >&2
    status=1
fi

check_import() {
    local module=$1 allowed=$2
    local offenders
    offenders=$(grep -rlE "^\s*(@_implementationOnly |internal |public |package |private )?import $module\b" Sources Tests --include='*.swift' | grep -v "^$allowed/" || true)
    if [[ -n "$offenders" ]]; then
        echo "lint: only $allowed may import $module:" >&2
        echo "$offenders" >&2
        status=1
    fi
}
check_import CRabbitMQ Sources/AMQPClient
check_import CHiredis Sources/RedisClient

# A match passes when its own line, or the comment block ending on the line above it, says why.
unexplained=$(find Sources Tests -name '*.swift' -print0 | xargs -0 awk '
    FNR == 1 { comment = "" }
    /@unchecked Sendable|nonisolated\(unsafe\)/ {
        if ($0 !~ /\/\// && comment == "") { print FILENAME ":" FNR ": " $0 }
    }
    { if ($0 ~ /^[ \t]*\/\//) { comment = comment $0 } else { comment = "" } }
')
if [[ -n "$unexplained" ]]; then
    echo "lint: @unchecked Sendable / nonisolated(unsafe) without a comment saying why it is safe:" >&2
    echo "$unexplained" >&2
    status=1
fi
exit $status
