# Custody: `make run` starts everything on embedded defaults; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PORT ?= 8000
DEMO_AGENT ?= spiffe://dev.custody.internal/agents/invoice-bot

.PHONY: run test lint format demo-request screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	@export DEBUG=$${DEBUG:-true}; \
	$(BIN)/python manage.py migrate --noinput && \
	$(BIN)/python manage.py load_demo && \
	echo "" && \
	echo "  Custody is starting on http://127.0.0.1:$(PORT)/  (admin: http://127.0.0.1:$(PORT)/admin/)" && \
	echo "  Demo logins: admin / custody-admin (admin), alice / custody-alice and bob / custody-bob" && \
	echo "               (payments sponsors), carol / custody-carol (research sponsor)" && \
	echo "  Make a demo agent ask for a privilege:  make demo-request" && \
	echo "  Stop everything with Ctrl-C." && echo "" && \
	PATH="$(BIN):$$PATH" PORT=$(PORT) exec $(BIN)/honcho start -f Procfile

test: $(STAMP)
	$(BIN)/pytest

screenshots: $(STAMP)
	CUSTODY_SCREENSHOTS=docs/screenshots $(BIN)/pytest tests/frontend/test_browser.py -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo-request: $(STAMP)
	@DEBUG=$${DEBUG:-true} $(BIN)/python manage.py demo_request --url http://127.0.0.1:$(PORT) --agent "$(DEMO_AGENT)"

clean:
	rm -rf $(VENV) var staticfiles
