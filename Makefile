# Two commands a fresh machine needs: `make demo` (the main job end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS := train,onnx,export,camera,calibrate,demo,dev

.PHONY: venv test demo clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest

demo: venv
	$(VENV)/bin/hlgfa demo

clean:
	rm -rf $(VENV) demo_out runs
