# Two commands a fresh machine needs: `make demo` (the main job end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS := train,onnx,export,camera,calibrate,demo,dev,bridge,browser

.PHONY: venv test demo bench bench-detection clean system-packages

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

test: venv system-packages
	$(PY) -m pytest

demo: venv
	$(VENV)/bin/hlgfa demo

# Runs the benches and rewrites their tables in BENCHMARKS.md (bench/run_all.py; about 30 minutes on
# 2 cores). bench-detection trains and evaluates on the dev sets in ../shared/datasets: hours.
bench: venv
	$(PY) -m bench.run_all

bench-detection: venv
	$(PY) -m bench.run_all --group detection

clean:
	rm -rf $(VENV) demo_out runs

# Debian packages tests use: systemd (systemd-analyze verify/security and systemd-sysusers check
# the units), shellcheck (engines/check_gpu.sh), mosquitto (the bridge's MQTT tests start a real
# broker), chromium and a font (the view's browser test; Playwright never downloads a browser
# here). Installed when missing and running as root with apt-get, as CI does; otherwise the tests
# that need them skip and say why.
DEB_PACKAGES := systemd shellcheck mosquitto chromium fonts-dejavu-core
system-packages:
	@missing=""; for package in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$package 2>/dev/null | grep -q "ok installed" || missing="$$missing $$package"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	  echo "not installing$$missing (needs root and apt-get): the tests that use them will skip"; \
	fi
