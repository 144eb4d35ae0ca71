# Shortcuts for the scripts in scripts/ (which are what the README and CI call).
.PHONY: run test lint build release bench bench-quick bench-idle cluster cluster-stop

run:
	./scripts/run.sh

test:
	./scripts/test.sh

lint:
	./scripts/lint.sh

build:
	swift build

release:
	swift build -c release --product switchboard

bench:
	./bench/run.sh

bench-quick:
	./bench/run.sh --quick

bench-idle:
	./bench/idle.sh

cluster:
	./scripts/cluster.sh

cluster-stop:
	./scripts/cluster.sh stop
