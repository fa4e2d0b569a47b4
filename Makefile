# The two commands a newcomer needs: `make demo` and `make test`. Each builds .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test lint typecheck check bench bench-smoke soak clean

# the producer client (client/) too: the README's Python blocks use it
$(STAMP): pyproject.toml client/pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./client
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

demo: $(STAMP)
	$(BIN)/acetrack demo

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

# not part of `make test`: acetrack against the official SDK's wait() loop (needs redis-server)
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run --contenders acetrack-1w,acetrack-2w,sdk-unlimited
	$(BIN)/python -m bench.run --arrival-s 30 --contenders acetrack-1w,acetrack-2w,sdk-unlimited --stem bench-1000-burst
	$(BIN)/python -m bench.run --tasks 10500 --scale 1 --arrival-s 30 --contenders acetrack-2w --stem bench-10500-capacity

bench-smoke: $(BENCH_STAMP)
	$(BIN)/python -m bench.run --smoke --out $${BENCH_OUT:-/tmp/acetrack-bench-smoke}

# not in CI: 100k tasks over 10 minutes; worker RSS and Redis memory should stay flat
soak: $(BENCH_STAMP)
	$(BIN)/python -m bench.soak --tasks 100000 --minutes 10

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
