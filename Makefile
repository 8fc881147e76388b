# Two commands a fresh machine needs: `make demo` (the main job end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS := train,onnx,export,camera,calibrate,demo,dev,bridge

.PHONY: venv test demo bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

test: venv test-packages
	$(PY) -m pytest

# Debian packages the tests run against (the bridge's MQTT tests start a real Mosquitto broker).
# Installed when missing and running as root, as CI does; elsewhere the tests that need them skip
# with the reason.
.PHONY: test-packages
TEST_DEBS := mosquitto
test-packages:
	@missing=""; for pkg in $(TEST_DEBS); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		else echo "not root or no apt-get: tests needing$$missing will skip"; fi; \
	fi

demo: venv
	$(VENV)/bin/hlgfa demo

bench: venv
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) demo_out runs
