# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup system-deps venv models protos demo test bench up down status clean

setup: system-deps venv models

# redis-server is the only system package the services need.
system-deps:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (apt-get)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e clients/python -e '.[dev]'
	touch $@

models: venv
	$(PY) -m services.common.assets fetch

protos: venv
	$(PY) scripts/gen_protos.py

demo: setup
	$(PY) -m services.cluster up --detach
	$(PY) -m services.cluster status; status=$$?; $(PY) -m services.cluster down; exit $$status

test: setup
	$(VENV)/bin/pytest -q

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

up: setup
	$(PY) -m services.cluster up

down:
	$(PY) -m services.cluster down

status:
	$(PY) -m services.cluster status

clean:
	rm -rf $(VENV) .run out .pytest_cache
