"""Install fgclip: the library (`fgclip/`), its integrations (`detection/`, `mllm/`)
and the `fgclip` console script.

torch / torchvision are left loose here; `tools/setup_env.sh` pins the pair that is
known to work together (see README).
"""
from setuptools import find_packages, setup

EXTRAS = {
    "train": ["accelerate>=1.0", "deepspeed>=0.15", "webdataset>=0.2"],
    "eval": ["pycocotools>=2.0.7", "scikit-learn>=1.3"],
    "mllm": ["peft>=0.13", "accelerate>=1.0", "deepspeed>=0.15", "sentencepiece>=0.1.99", "protobuf>=3.20"],
    "detection": ["mmengine==0.10.7", "mmdet==3.3.0", "pycocotools>=2.0.7", "lvis>=0.5.3"],
    "curation": ["spacy>=3.7,<4"],
    "dev": ["pytest>=8"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="fgclip",
    version="0.2.0",
    description="Fine-grained vision-language alignment: FG-CLIP models, training, evaluation, "
    "open-vocabulary detection and multimodal LLM integration.",
    python_requires=">=3.10",
    packages=find_packages(include=["fgclip", "fgclip.*", "detection", "detection.*", "mllm", "mllm.*"]),
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "transformers>=5.24,<5.25",  # the minor series the suite is tested on (the trainer uses its public hooks)
        "safetensors>=0.4",
        "open_clip_torch>=2.24",
        "pillow>=10",
        "numpy>=1.24",
        "matplotlib>=3.7",
        "tqdm>=4.60",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["fgclip=fgclip.cli:main"]},
)
