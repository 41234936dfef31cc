# The two entry points of a fresh clone (see README):
#   make demo   set up, then run the main job end to end on the bundled sample data
#   make test   set up, then run the test suite
FGCLIP_HOME ?= $(HOME)/.cache/fgclip
PY := $(FGCLIP_HOME)/venv/bin/python

.PHONY: setup demo test bench

setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/shapes_recipe.py --out outputs/shapes

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/features.py
