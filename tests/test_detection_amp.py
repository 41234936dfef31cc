"""Mixed precision of ``tools/train_det.py --amp``: the shipped F-ViT recipes reach mmengine's
``AmpOptimWrapper`` as fp16 with the reference's static loss scale of 512, and ``--amp-dtype
bfloat16`` trains the tiny F-ViT on the CPU under bfloat16 autocast."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("mmdet", reason="detection extra not installed (pip install -e .[detection])")
pytest.importorskip("mmcv._ext", reason="mmcv ops not built (tools/install_mmcv.sh)")

from mmengine.optim import AmpOptimWrapper, OptimWrapper, build_optim_wrapper  # noqa: E402
from mmengine.optim.optimizer import amp_optimizer_wrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from detection import CPUAmpOptimWrapper  # noqa: E402  (registers the modules)
from fgclip import FGCLIPModel  # noqa: E402
from fgclip.errors import run_command  # noqa: E402
from numerics import assert_close_to_reference  # noqa: E402
from tiny_detection import ASSETS, load_tool  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_CONFIG = CONFIGS / "fvit_tiny_cpu.py"
train_det = load_tool("train_det")


def a_gpu_is_reported(monkeypatch, tool: bool = True) -> None:
    """Make the device-availability checks say "CUDA": mmengine's ``AmpOptimWrapper`` assertion,
    torch's ``GradScaler`` (which disables itself without CUDA) and, with ``tool``, the tool's
    (mmengine's ``get_device``). Nothing is moved to or run on a GPU."""
    monkeypatch.setattr(amp_optimizer_wrapper, "is_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    if tool:
        monkeypatch.setattr(train_det, "get_device", lambda: "cuda")


def check_reference_amp(wrapper) -> None:
    """The wrapper of the reference's fp16 schedule: AdamW lr 1e-4, wd 0.1, clip 1.0, static loss scale 512."""
    assert type(wrapper) is AmpOptimWrapper
    assert wrapper.cast_dtype == torch.float16
    assert wrapper.loss_scaler.is_enabled() and wrapper.loss_scaler.get_scale() == 512.0
    assert wrapper._scale_update_param == 512.0  # AmpOptimWrapper.step resets the scale to it: no growth, no back-off
    assert type(wrapper.optimizer) is torch.optim.AdamW
    (group,) = wrapper.optimizer.param_groups
    assert (group["lr"], group["weight_decay"], group["betas"]) == (1e-4, 0.1, (0.9, 0.999))
    assert wrapper.clip_grad_kwargs == dict(max_norm=1.0, norm_type=2)


@pytest.mark.parametrize("config", ["fvit_fgclip_b16.py", "fvit_fgclip_l14.py"])
def test_shipped_recipes_build_fp16_amp_with_static_loss_scale_512(config, monkeypatch):
    """``--amp`` on the full-size recipes: the resolved config, built by mmengine's
    ``build_optim_wrapper`` (the Runner's builder), is the reference's fp16 wrapper. Their FG-CLIP
    checkpoints are not here, so a small module supplies the parameters."""
    a_gpu_is_reported(monkeypatch)
    init_default_scope("mmdet")
    cfg = train_det.setup_config(train_det.parse_args([str(CONFIGS / config), "--amp"]))
    assert cfg.optim_wrapper.loss_scale == 512.0 and cfg.optim_wrapper.dtype == "float16"
    check_reference_amp(build_optim_wrapper(nn.Linear(3, 2), cfg.optim_wrapper))


class BuiltWrapper(Exception):
    """Raised where the Runner has built its optim wrapper, carrying it."""


def test_tiny_recipe_reaches_fp16_amp_through_the_runner(in_workspace, monkeypatch):
    """``tools/train_det.py configs/fvit_tiny_cpu.py --amp`` run by its ``main`` up to the point where
    ``Runner.train`` builds the optim wrapper (model, data and train loop built for real)."""
    build = Runner.build_optim_wrapper
    monkeypatch.setattr(train_det, "get_device", lambda: "cuda")

    def build_and_stop(runner, optim_wrapper):
        with monkeypatch.context() as patch:
            a_gpu_is_reported(patch, tool=False)
            raise BuiltWrapper(runner, build(runner, optim_wrapper))

    monkeypatch.setattr(Runner, "build_optim_wrapper", build_and_stop)
    with pytest.raises(BuiltWrapper) as stopped:
        train_det.main([str(TINY_CONFIG), "--amp", "--work-dir", "work_dirs/amp_fp16"])
    runner, wrapper = stopped.value.args
    check_reference_amp(wrapper)
    trainable = {id(p) for p in runner.model.parameters() if p.requires_grad}
    assert trainable and trainable <= {id(p) for p in wrapper.optimizer.param_groups[0]["params"]}


def test_fp16_loss_scale_stays_512_and_gradients_are_unscaled(monkeypatch):
    """Steps of the built fp16 wrapper against the fp32 one: gradients are 512 x larger after
    ``backward`` and equal after ``step`` (unscaled, then clipped to norm 1.0), so the weights
    match; an overflowing step is skipped and the scale stays 512."""
    a_gpu_is_reported(monkeypatch)
    init_default_scope("mmdet")
    config = str(CONFIGS / "fvit_fgclip_b16.py")
    torch.manual_seed(0)
    amp_model, plain_model = nn.Linear(8, 4), nn.Linear(8, 4)
    plain_model.load_state_dict(amp_model.state_dict())
    amp = build_optim_wrapper(amp_model, train_det.setup_config(train_det.parse_args([config, "--amp"])).optim_wrapper)
    plain = build_optim_wrapper(plain_model, train_det.setup_config(train_det.parse_args([config])).optim_wrapper)
    assert type(plain) is OptimWrapper
    inputs = torch.randn(16, 8)
    for _ in range(3):
        for model, wrapper in ((amp_model, amp), (plain_model, plain)):
            wrapper.backward(model(inputs).pow(2).sum() * 100)  # gradient norm far above the clip of 1.0
        # Scaling by a power of 2 is exact: the same gradients, bit for bit, scaled and unscaled.
        assert all(torch.equal(a.grad, 512 * p.grad) for a, p in zip(amp_model.parameters(), plain_model.parameters()))
        amp.step()
        plain.step()
        assert all(torch.equal(a.grad, p.grad) for a, p in zip(amp_model.parameters(), plain_model.parameters()))
        grads = torch.cat([p.grad.flatten() for p in amp_model.parameters()])
        assert_close_to_reference(grads.norm(), 1.0, terms=grads.numel() + 2, scale=1.0)  # clipped: a norm of 1
        assert amp.loss_scaler.get_scale() == 512.0
        amp.zero_grad()
        plain.zero_grad()
    assert all(torch.equal(value, plain_model.state_dict()[name]) for name, value in amp_model.state_dict().items())
    before = {name: value.clone() for name, value in amp_model.state_dict().items()}
    amp.update_params(amp_model(inputs).sum() * torch.tensor(float("inf")))
    assert all(torch.equal(value, before[name]) for name, value in amp_model.state_dict().items())
    assert amp.loss_scaler.get_scale() == 512.0  # a dynamic scaler would back off to 256


def test_bf16_on_a_gpu_is_amp_without_loss_scaling(monkeypatch):
    """``--amp --amp-dtype bfloat16`` with a GPU: mmengine's ``AmpOptimWrapper`` in bf16 whose
    ``GradScaler`` is disabled (the config's ``amp_loss_scale`` is not used)."""
    a_gpu_is_reported(monkeypatch)
    init_default_scope("mmdet")
    cfg = train_det.setup_config(train_det.parse_args([str(CONFIGS / "fvit_fgclip_b16.py"), "--amp", "--amp-dtype", "bfloat16"]))
    wrapper = build_optim_wrapper(nn.Linear(3, 2), cfg.optim_wrapper)
    assert type(wrapper) is AmpOptimWrapper and wrapper.cast_dtype == torch.bfloat16
    assert not wrapper.loss_scaler.is_enabled() and wrapper.loss_scaler.get_scale() == 1.0


def test_bf16_amp_trains_the_tiny_fvit_on_the_cpu(in_workspace):
    """``tools/train_det.py configs/fvit_tiny_cpu.py --amp --amp-dtype bfloat16`` for 2 seeded iterations
    on the CPU (unseeded, an FPN level that no sampled anchor uses in both can keep its BN bias): CPUAmpOptimWrapper, finite losses, every trainable parameter moved, the frozen CLIP not;
    the box head's conv and fc outputs are bfloat16 in training and float32 in the validation after it,
    its cosine logits float32 in both."""
    args = train_det.parse_args([str(TINY_CONFIG), "--amp", "--amp-dtype", "bfloat16", "--work-dir", "work_dirs/amp_bf16",
                                 "--cfg-options", "train_cfg.max_iters=2", "randomness.seed=0"])
    runner = Runner.from_cfg(train_det.setup_config(args))
    model = runner.model
    head = model.roi_head.bbox_head
    seen = {True: set(), False: set()}  # training mode -> output dtypes of the head's conv and fcs
    for module in (head.shared_convs[0].conv, head.cls_fcs[0], head.fc_reg):
        module.register_forward_hook(lambda module, inputs, output: seen[module.training].add(output.dtype))
    logits = set()
    head.register_forward_hook(lambda module, inputs, output: logits.add(output[0].dtype))
    trainable = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    runner.train()
    wrapper = runner.optim_wrapper
    assert type(wrapper) is CPUAmpOptimWrapper and isinstance(wrapper, AmpOptimWrapper)
    assert wrapper.cast_dtype == torch.bfloat16 and not wrapper.loss_scaler.is_enabled()
    assert seen == {True: {torch.bfloat16}, False: {torch.float32}}
    assert logits == {torch.float32}  # the cosine classifier leaves autocast
    for key in ("loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"):
        values = runner.message_hub.get_scalar(f"train/{key}").data[0]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), (key, values)
    params = dict(model.named_parameters())
    unchanged = [name for name, value in trainable.items() if torch.equal(params[name], value)]
    assert trainable and not unchanged, unchanged
    reference = FGCLIPModel.from_pretrained(f"{ASSETS}/fgclip").state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in model.backbone.clip.state_dict().items())
    (log,) = Path(runner.log_dir).glob("*.log")
    assert "No GPU: mixed precision runs as bfloat16 autocast on the CPU" in log.read_text()


@pytest.mark.parametrize("argv, message", [
    (["--amp"], "error: --amp-dtype float16 (the default of --amp) needs a GPU: on the CPU add --amp-dtype bfloat16"),
    (["--amp-dtype", "bfloat16"], "error: --amp-dtype bfloat16: only used with --amp"),
])
def test_amp_options_that_cannot_run_fail_in_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(train_det, "get_device", lambda: "cpu")
    assert run_command(train_det.main, [str(TINY_CONFIG), *argv]) == 2
    assert capsys.readouterr().err == message + "\n"
