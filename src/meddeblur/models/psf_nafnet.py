"""The kernel-conditioned restorer: an exact Wiener data step, then a NAFNet prior that sees its estimates.

Three parts, as in USRNet and DWDN, kept as separate small modules:

* **data step** (:class:`~meddeblur.models.wiener_step.WienerStep`): parameter-free FFT deconvolution with the
  given PSF at a few learned regularisation strengths, any kernel size;
* **hyper-parameters**: those strengths as a function of the input's estimated noise level (inside the data step);
* **prior**: a NAFNet (:class:`~meddeblur.models.nafnet.NAFNet`) whose residual starts from a learned blend of the
  input and the Wiener estimates, and whose first features also see all of them (the ``guide`` conv).

Why one data step and not USRNet's eight unrolled iterations: each iteration costs a prior pass, and the
restorer must stay within 1.5× the blind network's time on a CPU. Why NAFNet: it starts from the shipped blind
weights (:func:`lift_blind_state`) — the guide conv and the blend start at zero, so the untrained restorer
computes exactly what the blind model does, and training only has to learn to use the PSF. Those new parameters
learn at :data:`FRESH_LR_SCALE` times the prior's learning rate (:func:`parameter_groups`): fine-tuning rates
suit the trained prior, and at them the zero-started guidance took hundreds of steps to be used at all.

Input: ``(N, C + 1, H, W)``: the blurred image's C channels, then the kernel canvas
(:func:`~meddeblur.physics.canvas.kernel_canvas`, origin at (H // 2, W // 2)). Output ``(N, C, H, W)``, unclamped.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from meddeblur.models.nafnet import NAFNet
from meddeblur.models.wiener_step import WienerStep

__all__ = ["PSFNAFNet", "BRANCHES", "FRESH_LR_SCALE", "lift_blind_state", "parameter_groups"]

#: Wiener estimates handed to the prior (regularisation strengths).
BRANCHES = 3
#: Learning-rate multiple of the parameters a lifted blind model does not have (guide conv, blend, data step).
FRESH_LR_SCALE = 10.0
_FRESH = ("guide.", "blend", "wiener.")


class PSFNAFNet(nn.Module):
    """(N, C + 1, H, W) image + kernel canvas → (N, C, H, W); see the module docstring."""

    def __init__(
        self,
        width: int = 16,
        channels: int = 3,
        enc_blocks: tuple[int, ...] = (0, 1, 2, 4),
        middle_blocks: int = 4,
        dec_blocks: tuple[int, ...] = (0, 1, 1, 1),
        branches: int = BRANCHES,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.wiener = WienerStep(branches)
        self.blend = nn.Parameter(torch.zeros(branches))  # residual base = y + Σ blend_i (z_i − y)
        self.prior = NAFNet(width, channels, channels, enc_blocks, middle_blocks, dec_blocks)
        self.guide = nn.Conv2d(channels * (branches + 1), width, 3, padding=1, bias=False)
        nn.init.zeros_(self.guide.weight)  # no guidance at first: a lifted blind model's output exactly

    def forward(self, stacked: Tensor) -> Tensor:
        c = self.channels
        if stacked.dim() != 4 or stacked.shape[1] != c + 1:
            raise ValueError(f"expected (N, {c + 1}, H, W): {c} image channels and a kernel canvas, got {tuple(stacked.shape)}")
        image, canvas = stacked[:, :c], stacked[:, c]
        estimates = self.wiener(image, canvas)
        n, _, h, w = image.shape
        per_branch = estimates.view(n, -1, c, h, w)
        base = image + (self.blend.view(1, -1, 1, 1, 1) * (per_branch - image[:, None])).sum(dim=1)
        guidance = self.guide(torch.cat([image, estimates], dim=1).contiguous(memory_format=torch.channels_last))
        return self.prior(base, guidance)


def lift_blind_state(state: dict[str, Tensor], channels: int = 3, branches: int = BRANCHES) -> dict[str, Tensor]:
    """A blind NAFNet's state dict as a :class:`PSFNAFNet` one that computes the same output (module docstring)."""
    lifted = {f"prior.{key}": value for key, value in state.items()}
    weight = lifted["prior.intro.weight"]
    lifted["guide.weight"] = torch.zeros(weight.shape[0], channels * (branches + 1), *weight.shape[2:], dtype=weight.dtype)
    fresh = WienerStep(branches)
    lifted["wiener.log_nsr"], lifted["wiener.noise_slope"] = fresh.log_nsr.detach().clone(), fresh.noise_slope.detach().clone()
    lifted["blend"] = torch.zeros(branches)
    return lifted


def parameter_groups(network: nn.Module) -> list[dict]:
    """Optimizer groups: the prior's parameters, and the fresh ones (guide, blend, data step) with ``lr_scale``."""
    fresh: list[nn.Parameter] = []
    prior: list[nn.Parameter] = []
    for name, parameter in network.named_parameters():
        (fresh if name.startswith(_FRESH) else prior).append(parameter)
    return [{"params": prior, "lr_scale": 1.0}, {"params": fresh, "lr_scale": FRESH_LR_SCALE}]
