# The two entry points of a fresh clone (see README):
#   make demo   set up, then run the main job end to end on the bundled sample data
#   make test   set up (with mmcv's compiled ops for detection/), then run the test suite
# `make setup-detection` builds mmcv alone (once per torch version, then cached); the demo
# does not need it.
FGCLIP_HOME ?= $(HOME)/.cache/fgclip
PY := $(FGCLIP_HOME)/venv/bin/python

.PHONY: setup setup-detection demo test bench

setup:
	bash tools/setup_env.sh

setup-detection: setup
	bash tools/install_mmcv.sh "$(PY)"

demo: setup
	$(PY) tools/shapes_recipe.py --out outputs/shapes

test: setup-detection
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/features.py
