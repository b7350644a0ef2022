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

run: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS) --target trident
	$(BUILD)/trident generate --model $(MODEL) --prompt "$(PROMPT)" --max-new-tokens 64 --stats

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

clean:
	rm -rf $(BUILD)

# The CUDA backend on a GPU machine: `make test-gpu OUT=dir` builds it (kernels included), runs
# its op and whole-model tests against the CPU reference and transformers' logits, and runs the
# shipped model through `generate` and `eval` on the GPU and serves it (some of tests/serving);
# `make bench-kernels OUT=dir` times the kernels against their peers and appends to
# bench/RESULTS.md (BENCH_FLAGS=--sweep also times every GEMM tile). Logs go to $(OUT).
# Libraries the GPU machine lacks can be unpacked into .deps (scripts/gpu-deps.sh) and compiled
# kernels cached in .kcache, both carried there.
GPU_BUILD ?= build-cuda
OUT ?= $(GPU_BUILD)/logs
BENCH_FLAGS ?=
GPU_DEPS ?= $(CURDIR)/.deps/usr
KERNEL_CACHE ?= $(CURDIR)/.kcache
GPU_MODEL ?= models/trident-tiny
HELD_OUT ?= tests/data/heldout/austen-test.txt
# The serving tests that also run against `trident serve --device cuda` (decode graphs, GPU
# sampling, continuous batching on the device).
GPU_SERVING_TESTS ?= test_curl.py test_openai_client.py test_concurrency.py

.PHONY: gpu-build test-gpu bench-kernels
gpu-build test-gpu bench-kernels: SHELL := /bin/bash
gpu-build test-gpu bench-kernels: .SHELLFLAGS := -o pipefail -c

gpu-build:
	mkdir -p $(OUT)
	cmake -S . -B $(GPU_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DTRIDENT_CUDA=ON \
	  -DTRIDENT_KERNEL_CACHE=$(KERNEL_CACHE) $(if $(wildcard $(GPU_DEPS)),-DCMAKE_PREFIX_PATH=$(GPU_DEPS)) \
	  $(CMAKE_FLAGS) 2>&1 | tee $(OUT)/configure.log
	cmake --build $(GPU_BUILD) -j $(JOBS) --target trident trident_gpu_tests trident_kernel_bench 2>&1 | tee $(OUT)/build.log

# The model runs even when a test fails, so one call shows both; the target fails if either does.
test-gpu: gpu-build
	status=0; \
	TRIDENT_CUDA_SYNC=1 $(GPU_BUILD)/trident_gpu_tests --gtest_output=xml:$(OUT)/gpu_tests.xml 2>&1 | tee $(OUT)/gpu_tests.log || status=1; \
	{ for m in $(GPU_MODEL) $(GPU_MODEL)-fp8; do \
	    $(GPU_BUILD)/trident generate --device cuda --model $$m --prompt "It is a truth universally acknowledged" -n 48 --stats && \
	    $(GPU_BUILD)/trident generate --device cuda --model $$m --prompt "It is a truth universally acknowledged" -n 1000 --ignore-eos --stats > /dev/null && \
	    $(GPU_BUILD)/trident generate --device cuda --model $$m --prompt "It is a truth universally acknowledged" -n 1000 --ignore-eos --stats --disable-cuda-graphs > /dev/null && \
	    $(GPU_BUILD)/trident eval --device cuda --model $$m --text $(HELD_OUT) || exit 1; \
	  done; } 2>&1 | tee $(OUT)/model.log || status=1; \
	TRIDENT_BINARY=$(CURDIR)/$(GPU_BUILD)/trident TRIDENT_SERVE_ARGS="--device cuda --gpu-memory-fraction 0.3" \
	  python3 -m pytest -q -p no:cacheprovider $(addprefix tests/serving/,$(GPU_SERVING_TESTS)) \
	  2>&1 | tee $(OUT)/serving.log || status=1; \
	exit $$status

bench-kernels: gpu-build
	python3 bench/bench_kernels.py --bench-binary $(GPU_BUILD)/trident_kernel_bench --out $(OUT) --results bench/RESULTS.md $(BENCH_FLAGS) 2>&1 | tee $(OUT)/bench.log

# Expert parallelism on GPUs. `make test-ep-gpu OUT=dir` builds and runs the dispatch/combine
# tests on one GPU (ranks as threads and as processes sharing it) and the kernels' checks;
# `make bench-ep EP=N OUT=dir` times both modes beside NCCL's all-to-all on N GPUs of this host
# (bench/bench_ep.py; add its table to bench/RESULTS.md). NVLink multicast stays off.
EP ?= 1
.PHONY: test-ep-gpu bench-ep
test-ep-gpu bench-ep: SHELL := /bin/bash
test-ep-gpu bench-ep: .SHELLFLAGS := -o pipefail -c

test-ep-gpu:
	mkdir -p $(OUT)
	cmake -S . -B $(GPU_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DTRIDENT_CUDA=ON \
	  -DTRIDENT_KERNEL_CACHE=$(KERNEL_CACHE) $(if $(wildcard $(GPU_DEPS)),-DCMAKE_PREFIX_PATH=$(GPU_DEPS)) \
	  $(CMAKE_FLAGS) 2>&1 | tee $(OUT)/configure.log
	cmake --build $(GPU_BUILD) -j $(JOBS) --target trident_ep_gpu_tests 2>&1 | tee $(OUT)/build.log
	NCCL_NVLS_ENABLE=0 $(GPU_BUILD)/trident_ep_gpu_tests 2>&1 | tee $(OUT)/ep_gpu_tests.log
	EP_KERNELS_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/ep/kernels 2>&1 | tee $(OUT)/ep_kernels.log

bench-ep:
	mkdir -p $(OUT)
	NCCL_NVLS_ENABLE=0 torchrun --standalone --nproc-per-node $(EP) bench/bench_ep.py --out $(OUT) 2>&1 | tee $(OUT)/bench_ep.log

# The expert load balancer's gain on CPU ranks: every token routed to rank 0's experts, the
# tokens each rank's experts receive and the step time, before and after one rebalance
# (`make bench-eplb EPLB_RANKS=4 EPLB_FLAGS=--redundant=4`; bench/RESULTS.md).
EPLB_RANKS ?= 2
EPLB_FLAGS ?=
.PHONY: bench-eplb
bench-eplb: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS) --target trident_ep_rank
	OMP_NUM_THREADS=1 mpirun -np $(EPLB_RANKS) --oversubscribe --bind-to none \
	  $(if $(filter 0,$(shell id -u)),--allow-run-as-root) $(BUILD)/trident_ep_rank --eplb-gain \
	  --gain-tokens 256 --gain-steps 3 --gain-moe-intermediate 1024 $(EPLB_FLAGS)

# The end-to-end benchmark: `make bench-e2e OUT=dir` builds trident and runs `trident bench e2e`
# at DeepSeek-V3's dimensions (as many layers as fit, random FP8 weights made on the GPU) on EP
# GPUs of this host (EP=1 by default; EP=2 or 4 starts a rank per GPU), writing e2e.json, e2e.svg
# and e2e.md to $(OUT) and appending the table to bench/RESULTS.md. E2E_FLAGS adds flags
# (e.g. --layers 8 --decode-batches 64,128); COMMIT names the commit in the table.
E2E_FLAGS ?=
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
.PHONY: bench-e2e
bench-e2e: SHELL := /bin/bash
bench-e2e: .SHELLFLAGS := -o pipefail -c

bench-e2e:
	mkdir -p $(OUT)
	cmake -S . -B $(GPU_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DTRIDENT_CUDA=ON \
	  -DTRIDENT_KERNEL_CACHE=$(KERNEL_CACHE) $(if $(wildcard $(GPU_DEPS)),-DCMAKE_PREFIX_PATH=$(GPU_DEPS)) \
	  $(CMAKE_FLAGS) 2>&1 | tee $(OUT)/configure.log
	cmake --build $(GPU_BUILD) -j $(JOBS) --target trident 2>&1 | tee $(OUT)/build.log
	NCCL_NVLS_ENABLE=0 $(GPU_BUILD)/trident bench e2e --device cuda --ep $(EP) --out $(OUT) \
	  --results bench/RESULTS.md --commit $(COMMIT) $(E2E_FLAGS) 2>&1 | tee $(OUT)/bench_e2e.log
