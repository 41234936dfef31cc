"""Start-up: ``import fgclip`` loads nothing heavy, the model path imports nothing beyond torch,
transformers and its CLIP modeling module, and lazy names still resolve (and register the Auto classes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import fgclip
import fgclip.eval

# Modules a user scoring one image never needs.
NOT_ON_THE_MODEL_PATH = ("deepspeed", "fgclip.training", "fgclip.eval", "fgclip.curation", "fgclip.data",
                         "fgclip.losses", "fgclip.rerank", "detection", "mllm", "matplotlib", "spacy")


def modules_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it leaves its answer in the variable ``result``."""
    program = f"import json, sys\n{code}\nprint(json.dumps(result))"
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_import_fgclip_loads_neither_torch_nor_transformers():
    loaded = modules_after("import fgclip\nresult = sorted(m for m in ('torch', 'transformers') if m in sys.modules)")
    assert loaded == []


@pytest.mark.parametrize("argv", [["--help"], ["eval", "--help"], ["score", "--help"]])
def test_command_help_and_argument_errors_load_no_torch(argv):
    """The parsers need no model code: ``fgclip --help`` (and a bad argument) answer at once."""
    loaded = modules_after(
        "import fgclip.cli\n"
        f"try:\n    fgclip.cli.build_parser().parse_args({argv!r})\nexcept SystemExit:\n    pass\n"
        "result = sorted(m for m in ('torch', 'transformers') if m in sys.modules)")
    assert loaded == []


def test_model_path_imports_nothing_beyond_torch_transformers_and_clip():
    result = modules_after(
        "import torch, transformers, transformers.models.clip.modeling_clip\n"
        "baseline = {name.split('.')[0] for name in sys.modules}\n"
        "from fgclip import FGCLIPModel, FGCLIPProcessor, FGCLIP2Model, FGCLIP2Processor\n"
        "import fgclip.encoders\n"
        "result = {'new': sorted({name.split('.')[0] for name in sys.modules} - baseline),\n"
        "          'modules': sorted(sys.modules)}"
    )
    assert result["new"] == ["fgclip"]
    assert not [name for name in NOT_ON_THE_MODEL_PATH if name in result["modules"]]


def test_lazy_names_resolve_and_register_both_families():
    result = modules_after(
        "import fgclip\n"
        "from transformers import AutoConfig, AutoModel\n"
        "model_class = fgclip.FGCLIPModel\n"
        "result = [type(AutoConfig.for_model(kind)).__name__ for kind in ('fgclip', 'fgclip2')]\n"
        "result.append(AutoModel.from_config(AutoConfig.for_model('fgclip', text_config={'num_hidden_layers': 1}, "
        "vision_config={'num_hidden_layers': 1})).__class__.__name__)"
    )
    assert result == ["FGCLIPConfig", "FGCLIP2Config", "FGCLIPModel"]


@pytest.mark.parametrize("package", [fgclip, fgclip.eval], ids=["fgclip", "fgclip.eval"])
def test_every_exported_name_resolves(package):
    for name in package.__all__:
        value = getattr(package, name)
        assert value is not None and name in dir(package)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        package.not_a_name
