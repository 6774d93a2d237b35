# keel — two commands on a fresh Debian 12: `make run` and `make test`.
# Every target installs what it needs first (scripts/install-deps.sh is idempotent and quick when all is there).

SHELL := /bin/bash
JOBS ?= $(shell nproc)
DEMO_DB ?= build/demo/keel-demo.db

.PHONY: all deps build build-release run demo test test-unit test-tsan bench format clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	cmake --preset dev
	cmake --build --preset dev -j $(JOBS)

build-release: deps
	cmake --preset release
	cmake --build --preset release -j $(JOBS)

# The main job on the embedded default (SQLite): an end-to-end demo of the event store and the seed 004 aggregate,
# then keeld, the coordinator, in the foreground on DTM's port (Ctrl-C stops it; its state stays in KEELD_DB).
KEELD_DB ?= build/demo/keeld.db
run: build-release
	@mkdir -p $(dir $(DEMO_DB)) $(dir $(KEELD_DB))
	build/release/examples/user_aggregate/user_aggregate $(DEMO_DB)
	@echo "keeld: DTM clients can use http://127.0.0.1:36789/api/dtmsvr (docs/keeld.md); Ctrl-C stops it"
	build/release/keeld/keeld --listen 127.0.0.1:36789 --storage sqlite://$(abspath $(KEELD_DB))

# The seed scenarios (000 foo_bar, 001 order_customer, 002 payment_offset) on the embedded default (SQLite + local:
# broker): each prints its steps and ends with "ok <scenario>" after checking its databases; exits non-zero on any
# failure.
demo: build-release
	examples/demo/run-demo.sh build/release

# Every test (unit, conformance, crash, install, and those against real PostgreSQL, MariaDB and RabbitMQ servers,
# which scripts/services.sh starts under build/services and stops afterwards), built with ASan + UBSan.
test: build
	scripts/services.sh start
	set -o pipefail; eval "$$(scripts/services.sh env)"; ctest --preset dev; rc=$$?; scripts/services.sh stop; exit $$rc

# Only the tests that need no server.
test-unit: build
	ctest --preset dev -L unit

test-tsan: deps
	cmake --preset tsan
	cmake --build --preset tsan -j $(JOBS)
	ctest --preset tsan -L unit

bench: build-release
	scripts/run-bench.sh build/release

format:
	find include src tools examples tests bench -name '*.[ch]pp' | xargs clang-format -i

clean:
	rm -rf build
