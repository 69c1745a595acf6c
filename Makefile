# cryobus — the two commands are `make demo` and `make test`; both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?=
OUT    ?= demo-out

.PHONY: install demo test test-fast schema bench clean

install: $(STAMP)

# torch is pinned exactly: the CPU wheel here, the CUDA build on GPU machines (same pin).
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[all,test]"
	touch $(STAMP)

demo: install
	$(BIN)/cryobus demo $(if $(DATA),--data "$(DATA)") --out "$(OUT)"

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

schema: install
	$(BIN)/cryobus schema --out docs/schemas

bench: install
	$(BIN)/python bench/ingest_to_preview_latency.py
	$(BIN)/python bench/bus_overhead.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
