# pac-concurrency: the two set-up commands and a few more.
#   make run    install what is missing, build, start the server (memory driver)
#   make test   install, build, run every test (plain, ASan/UBSan, TSan)
#   make bench  install, build, run the benchmarks (docs/benchmarks.md)
#   make fuzz   install, build the fuzz targets (clang), run each 5 minutes
#   make torture  install, build, run pac-torture long on every backend
#               (>= 100,000 calls and >= 50 faults of each kind each)
JOBS ?= $(shell nproc)
BUILD ?= build

.PHONY: all deps build run example test bench fuzz torture format clean

all: build

deps:
	bash scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j$(JOBS)

run: build
	bash scripts/run.sh

example: build
	./$(BUILD)/examples/basic_usage

test: deps
	bash scripts/test.sh

bench: build
	bash scripts/bench.sh

FUZZ_SECONDS ?= 300
fuzz: deps
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

# TORTURE_SECONDS=N runs each backend N s (default 300/900/900).
torture: build
	TORTURE_SECONDS=$(TORTURE_SECONDS) bash scripts/torture.sh long

format:
	clang-format -i $$(git ls-files '*.cc' '*.h')

clean:
	rm -rf build build-asan build-tsan build-fuzz
