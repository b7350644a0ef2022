# The entry points. `make run` and `make test` install what they need first.
BUILD ?= build
JOBS ?= $(shell nproc)
MODEL ?= models/trident-tiny
PROMPT ?= Once upon a time
CMAKE_FLAGS ?=

.PHONY: deps build run test clean

deps:
	./scripts/install-deps.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

run: build
	$(BUILD)/trident generate --model $(MODEL) --prompt "$(PROMPT)" --max-new-tokens 64 --stats

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

clean:
	rm -rf $(BUILD)

# The CUDA backend on a GPU machine: `make test-gpu OUT=dir` builds it (kernels included) and runs
# its tests against the CPU backend; `make bench-kernels OUT=dir` times the kernels against their
# peers and appends to bench/RESULTS.md (BENCH_FLAGS=--sweep also times every GEMM tile). Logs go
# to $(OUT).
GPU_BUILD ?= build-cuda
OUT ?= $(GPU_BUILD)/logs
BENCH_FLAGS ?=

.PHONY: gpu-build test-gpu bench-kernels
gpu-build test-gpu bench-kernels: SHELL := /bin/bash
gpu-build test-gpu bench-kernels: .SHELLFLAGS := -o pipefail -c

gpu-build:
	mkdir -p $(OUT)
	cmake -S . -B $(GPU_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DTRIDENT_CUDA=ON $(CMAKE_FLAGS) 2>&1 | tee $(OUT)/configure.log
	cmake --build $(GPU_BUILD) -j $(JOBS) --target trident_gpu_tests trident_kernel_bench 2>&1 | tee $(OUT)/build.log

test-gpu: gpu-build
	TRIDENT_CUDA_SYNC=1 $(GPU_BUILD)/trident_gpu_tests --gtest_output=xml:$(OUT)/gpu_tests.xml 2>&1 | tee $(OUT)/gpu_tests.log

bench-kernels: gpu-build
	python3 bench/bench_kernels.py --bench-binary $(GPU_BUILD)/trident_kernel_bench --out $(OUT) --results bench/RESULTS.md $(BENCH_FLAGS) 2>&1 | tee $(OUT)/bench.log
