"""Mixed-precision training without a GPU: mmengine's ``AmpOptimWrapper`` in bfloat16 on the CPU.

``tools/train_det.py --amp`` builds mmengine's ``AmpOptimWrapper``. Its ``__init__`` asserts a
CUDA, NPU, MLU or MUSA device, although mmengine's ``autocast`` (which the wrapper enters around
each forward) runs on the CPU in bfloat16, the only CPU dtype it accepts. Without a GPU,
``--amp --amp-dtype bfloat16`` builds :class:`CPUAmpOptimWrapper` instead.
"""
from __future__ import annotations

import torch
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from fgclip.errors import ConfigError
from mmdet.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(AmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper`` on the CPU: bfloat16 autocast, no loss scaling.

    Only ``__init__`` differs: it skips the parent's device assertion and sets the parent's state
    itself (autocast dtype bfloat16, a disabled ``GradScaler``: the loss is not multiplied, the
    gradients are not unscaled and no step is skipped; bfloat16 has float32's exponent range).
    ``backward``, ``step``, ``state_dict`` and the autocast context are ``AmpOptimWrapper``'s.
    """

    def __init__(self, dtype: str | torch.dtype = "bfloat16", **kwargs):
        if dtype not in ("bfloat16", torch.bfloat16):
            raise ConfigError(f"optim_wrapper.dtype={dtype!r}: {type(self).__name__} autocasts to bfloat16 only (CPU autocast)")
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.cast_dtype = torch.bfloat16
        print_log("No GPU: mixed precision runs as bfloat16 autocast on the CPU "
                  "(CPUAmpOptimWrapper = mmengine's AmpOptimWrapper without its GPU check; no loss scaling)",
                  logger="current")
