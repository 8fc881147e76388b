# Two commands a fresh machine needs: `make demo` (the main job end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS := train,onnx,export,camera,calibrate,demo,dev,browser

.PHONY: venv test demo bench clean browser

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

test: venv browser
	$(PY) -m pytest

demo: venv
	$(VENV)/bin/hlgfa demo

bench: venv
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) demo_out runs

# The view's browser test drives Debian's chromium (Playwright never downloads a browser here).
# Installed when missing and running as root with apt-get, as CI does; otherwise the test skips
# and says why.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the view's browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium fonts-dejavu-core >/dev/null; \
	else echo "chromium missing and no root apt-get: the view's browser test will be skipped"; fi
