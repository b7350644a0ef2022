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
