# Set-up and the project's two main jobs on a fresh machine with Python 3.11 and pip:
#   make bench   installs the edge runtime (no torch) and benchmarks the shipped model
#   make test    installs everything (runtime, export, dev; dcmtk from Debian) and runs the test suite
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# A real Triton server for the remote-engine tests (see the `test` target): its own environment.
TRITON_VENV ?= .venv-triton
# The labelled images: a setting, never a path in the code (folders separated by ':'). The default is the three
# shared sets beside the checkout: the four-class set, the adult set, and the NIH set (adult pneumonia, type unknown).
CXR_DATA ?= $(abspath ../shared/datasets/cxr4):$(abspath ../shared/datasets/cxr-adult):$(abspath ../shared/datasets/cxr-nih)
export CXR_DATA

.PHONY: bench test lint clean release-model system-tools runtime-libs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# One stamp per install flavour; re-installs when the package definition changes.
$(VENV)/.runtime-installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[export,dev]'
	touch $@ $(VENV)/.runtime-installed

bench: $(VENV)/.runtime-installed runtime-libs
	$(BIN)/cxr-edge bench

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Only what is missing, without recommended packages, never upgrading what is already installed.
APT_FLAGS := -y -q --no-install-recommends --no-upgrade
APT_INSTALL = $(SUDO) apt-get install $(APT_FLAGS) $(1) || { $(SUDO) apt-get update -q && \
	$(SUDO) apt-get install $(APT_FLAGS) $(1); }

# The runtime's one system library: OpenJPEG, which decodes JPEG 2000 at reduced resolution (through glymur).
# Without it JPEG 2000 images still decode, in full and more slowly.
runtime-libs:
	@/sbin/ldconfig -p | grep -q libopenjp2.so.7 || { echo "make: installing from Debian: libopenjp2-7"; \
	  $(call APT_INSTALL,libopenjp2-7); }

# Real peers for the tests, from Debian, as package:command (or package:file) pairs; a package is installed only
# when its command or file is missing: dcmtk (storescu, storescp, echoscu, dsrdump), dicom3tools (dciodvfy, the IOD
# checker), chromium (the headless browser the status-page tests drive), systemd (systemd-analyze checks the
# service units; Debian machines have it), Orthanc with its Python and DICOMweb plugins (the PACS the plugin runs
# in). docs/install.md lists what this installs.
ORTHANC_PLUGINS := /usr/share/orthanc/plugins
TEST_TOOLS := dcmtk:storescu dicom3tools:dciodvfy chromium:chromium systemd:systemd-analyze orthanc:/usr/sbin/Orthanc \
	orthanc-python:$(ORTHANC_PLUGINS)/libOrthancPython.so orthanc-dicomweb:$(ORTHANC_PLUGINS)/libOrthancDicomWeb.so
system-tools: runtime-libs
	@missing=""; for pair in $(TEST_TOOLS); do probe=$${pair#*:}; \
	  command -v $$probe >/dev/null || [ -e "$$probe" ] || missing="$$missing $${pair%%:*}"; \
	done; if [ -n "$$missing" ]; then echo "make: installing from Debian:$$missing"; $(call APT_INSTALL,$$missing); fi

test: $(VENV)/.dev-installed system-tools $(TRITON_VENV)/.installed
	CXR_EDGE_TRITON_PYTHON=$(abspath $(TRITON_VENV))/bin/python $(BIN)/python -m pytest -q

# A real Triton server for the remote-engine tests: PyTriton ships tritonserver with its Python backend, and pins
# numpy below 2, so it lives in its own environment, next to the project's.
$(TRITON_VENV)/.installed:
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet 'nvidia-pytriton==0.7.*' 'numpy<2' onnxruntime
	touch $@

# Trains, exports, quantises and measures the shipped model into runtime/models/ (about 20 minutes on 2 cores).
release-model: $(VENV)/.dev-installed
	rm -rf runs/release
	$(BIN)/python -m cxr_edge.export.release --work runs/release --models-dir runtime/models --members 3 \
	  --manifest calibration_data/cxr-release.tsv --int8-record benchmarks/int8/int8.json \
	  --sources-record benchmarks/sources/sources.json

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check cxr_edge runtime export tests benchmarks

clean:
	rm -rf $(VENV) $(TRITON_VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
