# The two entry points of a fresh clone (see README):
#   make demo   set up, then run the main job end to end on the bundled sample data
#   make test   set up (with mmcv's compiled ops for detection/), run the test suite on the kernels this
#               CPU picks, then the tests marked numerics (two kernels or summation orders compared)
#               again on ATen's AVX2 and scalar ("default") kernels
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
	ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -q -m numerics tests
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -m numerics tests

bench: setup
	$(PY) bench/features.py
