"""The reference training loss: ``0.85·(1 − SSIM) + 0.15·L1 + 1e-6·perceptual``.

SSIM is :func:`meddeblur.metrics.ssim` averaged over the batch, L1 the mean absolute error,
and perceptual the SUM over the VGG19 layers block1_conv2, block2_conv2 and block3_conv3
(Keras names; post-ReLU outputs) of the mean squared feature difference between prediction
and target.

Perceptual-scale convention
---------------------------
The Keras reference fed VGG19 caffe-style inputs (RGB·255 → BGR, minus per-channel means),
so its inputs are about 255× the [0, 1] image scale. We load torchvision's VGG19 weights,
which expect RGB in [0, 1] normalised by mean (0.485, 0.456, 0.406) and std
(0.229, 0.224, 0.225): about 1/0.226× the [0, 1] scale, 0.226 being the mean std. To first
order (ReLU networks are positively homogeneous up to their biases) features scale with
their input, so caffe-scale feature differences are ~255·0.226 larger and their MSE
~(255·0.226)² ≈ 3.3e3 larger. We therefore multiply our perceptual term by
``CAFFE_SCALE = (255 * 0.226) ** 2`` so the reference weight 1e-6 keeps its meaning. This is
a magnitude match, not an exact one: torchvision's and the caffe-converted weights are
different networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meddeblur.errors import UserError
from meddeblur.metrics import ssim

__all__ = [
    "CAFFE_SCALE",
    "PSNR_LOSS_EPS",
    "VGG19_HUB_FILENAME",
    "VGG19Features",
    "find_vgg19_weights",
    "load_vgg19_features",
    "LossWeights",
    "DeblurLoss",
    "build_loss",
]

#: Multiplier from torchvision-normalised to caffe-scale feature MSE (see module docstring).
CAFFE_SCALE: float = (255 * 0.226) ** 2

#: Added to each image's MSE in the PSNR term: caps it at 60 dB, so an un-blurred sample kept nearly exactly
#: stops pulling (its gradient weight 1/(MSE + eps) would otherwise grow without bound and drown the blurred ones).
PSNR_LOSS_EPS: float = 1e-6

#: File name torchvision's ``vgg19(weights="IMAGENET1K_V1")`` caches under the hub directory.
VGG19_HUB_FILENAME = "vgg19-dcbb9e9d.pth"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision vgg19 ``features`` up to index 15: (in, out) per conv, "M" for max-pool.
_VGG19_LAYOUT: tuple[tuple[int, int] | str, ...] = (
    (3, 64),
    (64, 64),
    "M",
    (64, 128),
    (128, 128),
    "M",
    (128, 256),
    (256, 256),
    (256, 256),
)
# Outputs of the ReLUs after block1_conv2, block2_conv2, block3_conv3.
_TAPS = (3, 8, 15)


class VGG19Features(nn.Module):
    mean: Tensor  # buffers
    std: Tensor
    """Frozen VGG19 ``features[0:16]`` in torchvision's index layout.

    Input: (N, 3, H, W) RGB in [0, 1]; ImageNet normalisation happens inside.
    Output: list of the three post-ReLU feature maps at block1_conv2 (N, 64, H, W),
    block2_conv2 (N, 128, H/2, W/2) and block3_conv3 (N, 256, H/4, W/4).
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for spec in _VGG19_LAYOUT:
            if isinstance(spec, str):  # "M"
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                cin, cout = spec
                # Not in-place: the tapped activations must survive for the feature list.
                layers += [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        # Non-persistent so the state dict holds exactly torchvision's ``features.N.*`` keys.
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.source: Path | None = None
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> VGG19Features:
        # A fixed feature extractor: a parent's .train() must not switch it.
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = (x.to(self.mean.dtype) - self.mean) / self.std
        taps: list[Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                taps.append(x)
        return taps


def find_vgg19_weights(explicit: str | Path | None) -> Path:
    """Path of the VGG19 weights: ``explicit`` if given, else the PyTorch hub cache file.

    Never downloads. Raises :class:`UserError` when the file is missing.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"vgg19_weights={explicit}: no such file; pass a torchvision vgg19 state dict (.pth or .safetensors)")
        return path
    # torch.hub.get_dir() resolves $TORCH_HOME / $XDG_CACHE_HOME / ~/.cache/torch without I/O.
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_HUB_FILENAME
    if candidate.is_file():
        return candidate
    raise UserError(
        f"no VGG19 weights found for the perceptual loss (looked at: {candidate}); pass "
        "vgg19_weights=FILE (a torchvision vgg19 state dict, .pth or .safetensors)"
    )


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    what = "a torchvision vgg19 state dict (.pth/.pt or .safetensors)"
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            # weights_only: a weights file must never run code when loaded.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"VGG19 weights {path}: cannot read ({reason}); expected {what}") from None
    # Accept common training-checkpoint wrappers around the state dict.
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise UserError(f"VGG19 weights {path}: not a state dict of tensors; expected {what}")
    if not any(k.startswith("features.") for k in obj):
        # A state dict of ``vgg.features`` alone has keys "0.weight", "2.bias", ...
        obj = {f"features.{k}": v for k, v in obj.items()}
    return obj


def load_vgg19_features(path: str | Path) -> VGG19Features:
    """Load a torchvision-layout VGG19 state dict (full or features-only) into a frozen extractor.

    ``classifier.*`` and deeper ``features.*`` keys are ignored. Raises :class:`UserError`
    naming the file when it is unreadable, not a state dict, or missing/misshaping a layer.
    """
    path = Path(path)
    state = _read_state_dict(path)
    model = VGG19Features()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise UserError(
            f"VGG19 weights {path}: missing {len(missing)} key(s) such as {missing[0]!r}; "
            "expected a torchvision vgg19 state dict with keys features.0.weight ... features.14.bias"
        )
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise UserError(
                f"VGG19 weights {path}: {key} has shape {tuple(state[key].shape)}, expected "
                f"{tuple(ref.shape)}; is this a torchvision vgg19 (not vgg16/other) state dict?"
            )
    model.load_state_dict({k: state[k].float() for k in expected})
    model.requires_grad_(False)
    model.source = path
    return model


@dataclass
class LossWeights:
    """Weights of the loss terms (reference values by default; ``mse`` and ``psnr`` are not in the reference: 0)."""

    ssim: float = 0.85
    l1: float = 0.15
    perceptual: float = 1e-6
    mse: float = 0.0
    psnr: float = 0.0


class DeblurLoss(nn.Module):
    """``ssim·(1 − SSIM) + l1·L1 + mse·MSE − psnr·PSNR + perceptual·CAFFE_SCALE·VGG`` on (N, C, H, W) images in [0, 1].

    Without ``vgg`` the perceptual term is off whatever its weight. Why MSE beside L1: on mildly blurred
    8-bit images most pixels already equal their target, and L1 charges every such pixel a full unit of
    gradient for any change, so an untrained (identity) network is held at the identity; MSE charges
    small changes quadratically, and it is what PSNR measures. The PSNR term (NAFNet's loss) is the mean
    of each image's PSNR: the quantity our validation reports, weighting each image by 1/its MSE.
    """

    def __init__(self, weights: LossWeights | None = None, vgg: VGG19Features | None = None) -> None:
        super().__init__()
        self.weights = weights if weights is not None else LossWeights()
        self.vgg = vgg

    @property
    def uses_perceptual(self) -> bool:
        return self.vgg is not None and self.weights.perceptual != 0

    def formula(self) -> str:
        """The weighted terms that are computed, e.g. ``"0.85·(1−SSIM) + 0.15·L1"`` (``"0"`` when none is)."""
        w = self.weights
        parts = []
        if w.ssim != 0:
            parts.append(f"{w.ssim:g}·(1−SSIM)")
        if w.l1 != 0:
            parts.append(f"{w.l1:g}·L1")
        if w.mse != 0:
            parts.append(f"{w.mse:g}·MSE")
        if w.psnr != 0:
            parts.append(f"{w.psnr:g}·(−PSNR dB)")
        if self.uses_perceptual:
            parts.append(f"{w.perceptual:g}·VGG19 perceptual")
        return " + ".join(parts) if parts else "0"

    def describe(self) -> str:
        """One plain sentence saying which loss is optimised."""
        text = "loss = " + self.formula()
        if self.uses_perceptual:
            assert self.vgg is not None
            text += f" (weights: {self.vgg.source if self.vgg.source else 'in memory'})"
        elif self.vgg is None:
            text += " (perceptual term off: no VGG19 weights given)"
        else:
            text += " (perceptual term off: weight 0)"
        return text

    def perceptual(self, pred: Tensor, target: Tensor) -> Tensor:
        """Caffe-scaled perceptual distance, a scalar: sum over layers of feature MSE."""
        if self.vgg is None:
            raise RuntimeError("DeblurLoss has no VGG19 feature extractor")
        # One pass over the concatenated batch; the target half needs no graph.
        n = pred.shape[0]
        feats = self.vgg(torch.cat([pred, target.detach()], dim=0))
        total = sum(F.mse_loss(f[:n], f[n:].detach()) for f in feats)
        return CAFFE_SCALE * cast(Tensor, total)  # a sum of tensors (never empty)

    def forward(self, pred: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Total loss (scalar) and the detached terms ``{"ssim", "l1", "mse", "psnr", "perceptual"}``.

        "ssim" is the SSIM value (not 1 − SSIM); "psnr" the mean over the batch of each image's PSNR in dB
        (MSE + :data:`PSNR_LOSS_EPS`); "perceptual" is the caffe-scaled distance, so
        ``total = w.ssim·(1 − ssim) + w.l1·l1 + w.mse·mse − w.psnr·psnr + w.perceptual·perceptual``. A term whose
        weight is 0 (or the perceptual term without VGG) is not computed and reads 0.0.
        """
        w = self.weights
        total = pred.new_zeros(())
        terms = {"ssim": 0.0, "l1": 0.0, "mse": 0.0, "psnr": 0.0, "perceptual": 0.0}
        if w.ssim != 0:
            # max_val given: raw outputs stray outside [0, 1] while training, and the loss must score them as they are.
            s = ssim(pred, target, max_val=1.0).mean()
            total = total + w.ssim * (1.0 - s)
            terms["ssim"] = s.item()
        if w.l1 != 0:
            l1 = (pred - target).abs().mean()
            total = total + w.l1 * l1
            terms["l1"] = l1.item()
        if w.mse != 0:
            mse = F.mse_loss(pred, target)
            total = total + w.mse * mse
            terms["mse"] = mse.item()
        if w.psnr != 0:
            psnr = -10.0 * torch.log10(((pred - target) ** 2).flatten(1).mean(1) + PSNR_LOSS_EPS).mean()
            total = total - w.psnr * psnr
            terms["psnr"] = psnr.item()
        if self.uses_perceptual:
            p = self.perceptual(pred, target)
            total = total + w.perceptual * p
            terms["perceptual"] = p.item()
        return total, terms


def build_loss(
    weights: LossWeights | None = None,
    vgg19_weights: str | Path | None = None,
    use_perceptual: bool = True,
) -> DeblurLoss:
    """Build the loss, locating and loading VGG19 up front so a missing file fails before training.

    With ``use_perceptual`` False, or a perceptual weight of 0, no weights are looked up.
    """
    weights = weights if weights is not None else LossWeights()
    if not use_perceptual or weights.perceptual == 0:
        return DeblurLoss(weights)
    return DeblurLoss(weights, load_vgg19_features(find_vgg19_weights(vgg19_weights)))
