#!/usr/bin/env bash
# Fuzzes the client-frame decoder and the routing-key encoder with libFuzzer.
#   scripts/fuzz.sh [SECONDS]     default 20 (the test command runs this short run)
# A longer run: scripts/fuzz.sh 3600. Crashes are written to Tests/Fuzz/crashes/;
# copy each into Tests/Fuzz/regressions/ once fixed, so the replay keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-20}
swift build --product SwitchboardFuzz --scratch-path .build-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -D -Xswiftc FUZZING -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld
corpus=$(mktemp -d /tmp/switchboard-fuzz-corpus.XXXXXX)
trap 'rm -rf "$corpus"' EXIT
cp Tests/Fuzz/regressions/* "$corpus"/
mkdir -p Tests/Fuzz/crashes
.build-fuzz/debug/SwitchboardFuzz "$corpus" -max_total_time="$SECONDS_TO_RUN" -max_len=4096 \
    -artifact_prefix=Tests/Fuzz/crashes/ -print_final_stats=1 2>&1 | tail -15
