# The two commands of the README. Each does all set-up it needs (idempotent), then runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= out/demo

.PHONY: demo test lint typecheck bench clean setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/provguard run --out $(OUT)
	$(BIN)/provguard audit verify --log $(OUT)/control.db

# Integration tests need a PostgreSQL server (Debian package, started on 127.0.0.1 by
# .ci/postgres.sh), a JRE (PySpark) and Chromium (dashboard tests), installed by
# .ci/system-deps.sh. Without them those tests skip, except under CI where that fails the run.
test: $(STAMP)
	@bash .ci/system-deps.sh || { [ -z "$$CI" ] || exit 1; }
	@url=$$(bash .ci/postgres.sh 2>.pg-setup.log | tail -n 1) || url=""; \
	if [ -z "$$url" ]; then \
	  echo "PostgreSQL not available (see .pg-setup.log): PostgreSQL tests will be skipped"; \
	  if [ -n "$$CI" ]; then cat .pg-setup.log; exit 1; fi; \
	fi; \
	PROVGUARD_TEST_PG_URL="$$url" $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
