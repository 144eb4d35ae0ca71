# Shortcuts for the scripts in scripts/ (which are what the README and CI call).
.PHONY: run test build release bench-idle

run:
	./scripts/run.sh

test:
	./scripts/test.sh

build:
	swift build

release:
	swift build -c release --product switchboard

bench-idle:
	./bench/idle.sh
