"""The detection tools' terminal: progress, losses, warnings and metrics, in few lines; the config,
the environment and the hook order in the run's log file only, unless ``--verbose``."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("mmdet", reason="detection extra not installed (pip install -e .[detection])")
pytest.importorskip("mmcv._ext", reason="mmcv ops not built (tools/install_mmcv.sh)")

from mmengine.logging import MMLogger  # noqa: E402

from tiny_detection import load_tool  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(REPO / "configs" / "fvit_tiny_cpu.py")
DUMPS = ("Config:", "custom_hooks = [", "System environment:", "Hooks will be executed in the following order")


def terminal(capfd) -> list[str]:
    """What the run printed (stdout and stderr), as lines; the next run gets its own logger."""
    out, err = capfd.readouterr()
    MMLogger._instance_dict.clear()  # runners started within one second would share a logger
    return (out + err).splitlines()


def log_file(lines: list[str]) -> str:
    named = [re.search(r"the full log: (\S+\.log)", line) for line in lines]
    paths = [match.group(1) for match in named if match]
    assert len(paths) == 1, lines
    return Path(paths[0]).read_text(encoding="utf-8")


def test_train_and_test_print_progress_and_results_and_log_the_config(in_workspace, capfd):
    load_tool("train_det").main([TINY_CONFIG, "--work-dir", "work_dirs/quiet"])
    lines = terminal(capfd)
    assert len(lines) < 40, "\n".join(lines)
    losses = [line for line in lines if "Iter(train)" in line]
    assert [re.search(r"\[\s*(\d+)/20\]", line).group(1) for line in losses] == ["5", "10", "15", "20"]
    assert all(re.search(r" loss: \d+\.\d+", line) for line in losses)
    assert any("Saving checkpoint at 20 iterations" in line for line in lines)
    assert any("ov_coco/AP50_all:" in line for line in lines)  # the validation at the end
    assert not any(dump in line for line in lines for dump in DUMPS)
    logged = log_file(lines)
    assert all(dump in logged for dump in DUMPS)
    assert all(line.split(" - ")[-1] in logged for line in losses)

    metrics = load_tool("test_det").main([TINY_CONFIG, "work_dirs/quiet/iter_20.pth", "--work-dir", "work_dirs/quiet_test"])
    lines = terminal(capfd)
    assert len(lines) < 40, "\n".join(lines)
    assert not any(dump in line for line in lines for dump in DUMPS)
    assert json.loads("\n".join(lines[lines.index("{"):lines.index("}") + 1])) == metrics
    assert set(metrics) == {"ov_coco/AP50_novel", "ov_coco/AP50_base", "ov_coco/AP50_all"}
    assert all(dump in log_file(lines) for dump in DUMPS)


def test_verbose_prints_the_config_and_environment(in_workspace, capfd):
    load_tool("train_det").main([TINY_CONFIG, "--work-dir", "work_dirs/verbose", "--verbose",
                                 "--cfg-options", "train_cfg.max_iters=2", "train_cfg.val_interval=2"])
    output = "\n".join(terminal(capfd))
    assert all(dump in output for dump in DUMPS)
    assert "the full log:" not in output
