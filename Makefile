# The two Quick-start commands (`make demo`, `make test`) and everything they need on a fresh
# Debian 12 machine. Downloads and builds are cached outside the tree, keyed by what they hold.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CACHE  ?= $(HOME)/.cache/ampere-llm
VENV   ?= .venv
PY     := $(VENV)/bin/python
PINS   := collections/ansible_collections/ampere/llm/roles/llama_cpp/defaults/main.yml
LCP_VERSION  := $(shell awk -F'"' '/^llama_cpp_bindings_version:/{print $$2}' $(PINS))
LLAMA_COMMIT := $(shell awk -F'"' '/^llama_cpp_commit:/{print $$2}' $(PINS))
SDIST  := $(CACHE)/sdist/llama_cpp_python-$(LCP_VERSION).tar.gz
SRC    := $(CACHE)/src/llama_cpp_python-$(LCP_VERSION)
# One native build of llama.cpp on this host serves the bindings, llama-server and llama-bench.
LLAMA  := $(CACHE)/llama.cpp/$(LLAMA_COMMIT)-native
JOBS   ?= $(shell nproc)
APT_PACKAGES := build-essential cmake pkg-config nginx-light chromium debootstrap systemd-container \
                iproute2 curl openssh-client haproxy \
                g++-aarch64-linux-gnu qemu-user-static binfmt-support

export LLAMA_CPP_LIB_PATH := $(abspath $(LLAMA))/bin
export AMPERE_LLM_CACHE   := $(CACHE)
export AMPERE_LLM_LLAMA_BIN := $(abspath $(LLAMA))/bin
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help setup deps venv llama test demo demo-down bench lock clean

help:
	@echo "make demo   - the pool on this machine: seed (site.yml) -> image -> 2 nodes -> HAProxy; prints the page URL (make demo-down removes it)"
	@echo "make test   - everything: backend, page in Chromium, collection via molecule"
	@echo "make bench  - speed side by side with llama-bench and llama-server, ratios and a plot, then through the local pool with \$$ per Mtok (BENCH_ARGS= for the node part only)"
	@echo "             BENCH_ARGS=\"--model gemma3 --sweep\": ours alone at each --threads / --flash-attn setting, the fastest per measure against its defaults"

setup: deps venv

# System packages, once per machine (the stamp keeps reruns instant).
deps: $(CACHE)/.apt-$(shell echo $(APT_PACKAGES) | md5sum | cut -c1-8)
$(CACHE)/.apt-%:
	@mkdir -p $(CACHE)
	@echo "==> apt: $(APT_PACKAGES)"
	DEBIAN_FRONTEND=noninteractive apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES)
	@touch $@

$(SDIST):
	@echo "==> downloading llama-cpp-python $(LCP_VERSION) sdist (vendors llama.cpp $(LLAMA_COMMIT))"
	pip download --no-deps --no-binary :all: --progress-bar on -d $(CACHE)/sdist llama-cpp-python==$(LCP_VERSION)

$(SRC)/.unpacked: $(SDIST)
	mkdir -p $(CACHE)/src && tar xzf $(SDIST) -C $(CACHE)/src && touch $@

# llama.cpp compiled once from the tree the bindings vendor: the ABI matches by construction.
# AMX off: some VMs (Firecracker on Sapphire Rapids, 2 Dec) advertise AMX in cpuinfo but fault on
# its tile instructions, so a -march=native build dies with SIGILL on the first prompt; AMX only
# ever sped up x86 prompt reading, and the nodes this project is for are Arm.
LLAMA_CMAKE_ARGS := -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON \
  -DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
  -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON
LLAMA_TARGETS := llama llama-server llama-bench llama-batched-bench
# The stamp names the flags and targets: a change rebuilds what it touches in the same build tree.
LLAMA_BUILT   := $(LLAMA)/.built-$(shell echo '$(LLAMA_CMAKE_ARGS) $(LLAMA_TARGETS)' | md5sum | cut -c1-8)
llama: $(LLAMA_BUILT)
$(LLAMA_BUILT): $(SRC)/.unpacked | deps
	@echo "==> building llama.cpp $(LLAMA_COMMIT) (native, -j$(JOBS)): $(LLAMA_TARGETS); ~4 min on 2 cores"
	cmake -S $(SRC)/vendor/llama.cpp -B $(LLAMA) $(LLAMA_CMAKE_ARGS) >/dev/null
	cmake --build $(LLAMA) -j$(JOBS) --target $(LLAMA_TARGETS)
	@touch $@

# The bindings without a second llama.cpp compile (LLAMA_BUILD=OFF); they load the library
# above through LLAMA_CPP_LIB_PATH, exported for every recipe.
# The service's dependencies at the versions of the node's lock (its pins without the hashes, as
# constraints): the tests run what the backend role installs.
LOCK := collections/ansible_collections/ampere/llm/roles/backend/files/requirements.lock
MONITORING_LOCK := collections/ansible_collections/ampere/llm/roles/monitoring/files/requirements.lock
venv: $(VENV)/.ready
$(VENV)/.ready: requirements-dev.txt $(LOCK) collections/ansible_collections/ampere/llm/roles/backend/files/backend/pyproject.toml | $(LLAMA_BUILT)
	@echo "==> python venv $(VENV)"
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	awk '/^[a-z]/{sub(/ \\$$/, ""); print}' $(LOCK) > $(VENV)/lock-constraints.txt
	$(PY) -m pip install -r requirements-dev.txt -c $(VENV)/lock-constraints.txt
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(PY) -m pip install --no-cache-dir --no-deps $(SDIST)
	$(PY) -m pip install -e collections/ansible_collections/ampere/llm/roles/backend/files/backend -c $(VENV)/lock-constraints.txt
	@touch $@

test: setup
	bash tests/run.sh

demo: setup
	bash scripts/demo.sh up

demo-down:
	bash scripts/demo.sh down

# The node side by side with llama.cpp's own tools, then the local pool (issue 5: 1 and 2 nodes,
# $ per million tokens). BENCH_ARGS="--model PATH --threads N --quick" to vary it, BENCH_ARGS=
# for the node part only (bench/run.py --help).
BENCH_ARGS ?= --pool
bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

# The node's Python dependencies, locked with every file's sha256 for every platform and Python
# 3.10+ (uv's universal resolution): the service's pyproject, at the versions requirements-dev.txt
# pins for the tests (Python 3.11 here), within each dependency's own range elsewhere. The backend
# role installs exactly this file with `pip install --require-hashes`; tests/collection/test_lock.py
# checks that the tests' venv runs these versions. Run it after changing either input.
lock:
	grep -Ev '^[[:space:]]*(#|$$)' requirements-dev.txt | sed 's/$$/ ; python_version >= "3.11"/' > $(CACHE)/tested-pins.txt
	$(VENV)/bin/uv pip compile $(dir $(LOCK))backend/pyproject.toml --universal --python-version 3.10 \
	  --generate-hashes --no-annotate --custom-compile-command "make lock" -c $(CACHE)/tested-pins.txt -o $(LOCK)
	# The OCI load publisher's own venv (roles/monitoring): the oci SDK and prometheus-client, same pins.
	$(VENV)/bin/uv pip compile $(MONITORING_LOCK:.lock=.in) --universal --python-version 3.10 \
	  --generate-hashes --no-annotate --custom-compile-command "make lock" -c $(CACHE)/tested-pins.txt -o $(MONITORING_LOCK)

clean:
	rm -rf $(VENV) .pytest_cache
