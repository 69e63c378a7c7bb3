# Custody: `make run` starts everything on embedded defaults; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PORT ?= 8000
# make demo-request [KIND=auto|one|two|critical|delegation] [PRIVILEGE=crm:read] [DURATION=30m]
#                   [AGENT=spiffe://…] [INITIATOR=alice|none]: presets in approvals/demo.py.
KIND ?=
PRIVILEGE ?=
DURATION ?=
AGENT ?=
INITIATOR ?=

# The browser tests drive Debian's Chromium (never a browser download): `make test` installs it.
CHROMIUM ?= /usr/bin/chromium

.PHONY: run test lint format demo-request screenshots clean chromium lock

# The virtualenv installs exactly requirements/dev.txt, every file checked against its hash (pip
# itself and setuptools included), then Custody and its client from this tree without dependencies.
$(STAMP): pyproject.toml client/pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . -e ./client
	touch $(STAMP)

# make lock: brings the lock files in line with pyproject.toml (and client/pyproject.toml), keeping
# every pin that still fits; make lock UPGRADE=1 moves every pin to the newest release allowed.
# requirements/dev.txt is what `make` installs (the app, its dev extras, the client and its
# extras); requirements/app.txt, the Docker image's, is the app alone at the same versions.
UPGRADE ?=
LOCK_VENV := .venv-lock
UV_COMPILE = $(LOCK_VENV)/bin/uv pip compile --universal --python-version 3.11 --generate-hashes \
	--quiet --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)

$(LOCK_VENV)/.installed-stamp: requirements/uv.txt
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --require-hashes -r requirements/uv.txt
	touch $@

lock: $(LOCK_VENV)/.installed-stamp
	$(UV_COMPILE) requirements/uv.in -o requirements/uv.txt
	$(UV_COMPILE) pyproject.toml client/pyproject.toml requirements/build.in --all-extras \
		-o requirements/dev.txt
	$(UV_COMPILE) pyproject.toml requirements/build.in -c requirements/dev.txt -o requirements/app.txt

run: $(STAMP)
	@export DEBUG=$${DEBUG:-true}; \
	$(BIN)/python manage.py migrate --noinput && \
	$(BIN)/python manage.py load_demo --print-logins && \
	echo "" && \
	echo "  Custody is starting on http://127.0.0.1:$(PORT)/  (admin: http://127.0.0.1:$(PORT)/admin/)" && \
	echo "  Make a demo agent ask for a privilege:  make demo-request KIND=two" && \
	echo "    KIND=auto|one|two|critical|delegation, or PRIVILEGE=crm:read DURATION=30m;" && \
	echo "    it prints who can approve, with which login (README: your first approval)." && \
	echo "  Stop everything with Ctrl-C." && echo "" && \
	PATH="$(BIN):$$PATH" PORT=$(PORT) exec $(BIN)/honcho start -f Procfile

# make test runs the suite on two pytest-xdist workers, each on its own test database, Redis
# databases and var/ (config/test_settings.py); TEST_WORKERS=0 runs it in one process (README).
TEST_WORKERS ?= 2

test: $(STAMP) chromium
	$(BIN)/pytest -n $(TEST_WORKERS)

# Debian's chromium when it is missing: with apt-get as root, or through passwordless sudo;
# otherwise a sentence saying what to run.
chromium:
	@if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make: the browser tests need Chromium at $(CHROMIUM), and there is no apt-get" \
			"to install Debian's: install it there and run make again." >&2; exit 1; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else \
		echo "make: the browser tests need Debian's chromium ($(CHROMIUM) is missing) and" \
			"installing it needs root: run 'sudo apt-get install chromium', then make again." >&2; \
		exit 1; \
	fi; \
	echo "make: installing Debian's chromium for the browser tests ($(CHROMIUM) is missing)"; \
	$$sudo apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium && \
	[ -x "$(CHROMIUM)" ] || { echo "make: apt-get ran, but $(CHROMIUM) is still missing." >&2; exit 1; }

# Every browser test under tests/frontend: desktop shots, each with a 360 px twin under phone/.
screenshots: $(STAMP) chromium
	CUSTODY_SCREENSHOTS=docs/screenshots $(BIN)/pytest tests/frontend -m browser -q

# ruff, then import-linter's contracts in pyproject.toml (the layers between and inside apps),
# then the OpenAPI document: 0 errors and 0 warnings from drf-spectacular.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	DJANGO_SETTINGS_MODULE=$${DJANGO_SETTINGS_MODULE:-config.test_settings} $(BIN)/python manage.py \
		spectacular --validate --fail-on-warn --file /dev/null

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo-request: $(STAMP)
	@DEBUG=$${DEBUG:-true} $(BIN)/python manage.py demo_request --url http://127.0.0.1:$(PORT) \
		$(if $(KIND),--kind "$(KIND)") $(if $(PRIVILEGE),--privilege "$(PRIVILEGE)") \
		$(if $(DURATION),--duration "$(DURATION)") $(if $(AGENT),--agent "$(AGENT)") \
		$(if $(INITIATOR),--initiator "$(INITIATOR)")

clean:
	rm -rf $(VENV) $(LOCK_VENV) var staticfiles
