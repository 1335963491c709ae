"""Training recipes: named sets of :class:`~meddeblur.training.options.TrainOptions` values that ``meddeblur train`` starts from.

``default`` is how the shipped model is trained (MODEL_CARD.md): the shipped NAFNet (width 16), 64-px crops of the
native images at random down-scales with the ``real`` degradation mix (un-blurred share included),
AdamW with warm-up and a cosine decay over the budget, gradient clipping, EMA weights, 0.15·(1−SSIM) + 0.85·L1
and a validation round every 200 steps. Its numbers are what measured best on this project's 2-core CPU
(benchmarks/results/train_speed.md, loss_probe.md). Starting from weights (``--init``) it fine-tunes with L1 alone
at a quarter of that learning rate on 128-px crops (``fine_tune``: what every shipped stage used). ``reference`` is exactly the
reference system: Attention U-Net w64, Adam 1e-4, batch 8, 256×256 resize, LR plateau, 0.85·(1−SSIM)+0.15·L1,
early stopping 10.

Options given explicitly always win over the recipe's. With blurred/sharp pairs (no ``degrade``) the
default recipe trains on random native crops of the pairs, since there is nothing to synthesise.
"""

from __future__ import annotations

from meddeblur.losses import LossWeights

__all__ = ["RECIPES", "recipe_options"]

RECIPES: dict[str, dict] = {
    "default": {
        # The shipped network: the lite NAFNet of stages 0–2 grown in stage 3 by decoder blocks at full, ½ and ¼ resolution.
        # soften 0.55 since stage 7 (0.4 since stage 5): with less, a softer source's resampling blur was over-sharpened
        # (soft protocol worst family −0.37 dB at 0.25, −0.15 at 0.4, +0.06 at 0.55; full resolution unchanged).
        "arch": "nafnet",
        "width": None,
        "enc_blocks": (0, 1, 2, 4),
        "middle_blocks": 4,
        "dec_blocks": (1, 2, 2, 1),
        "size": None,
        "crop": 64,
        "scales": (1.0, 4.0),
        "soften": 0.55,
        "compress": 0.2,
        "degrade": "real",
        "batch": 16,
        "lr": 2e-3,
        "optimizer": "adamw",
        "weight_decay": 0.0,
        "schedule": "cosine",
        "max_minutes": 60.0,
        "epochs": 100_000,
        "epoch_steps": 200,
        "warmup": 100,
        "clip": 1.0,
        "ema": 0.999,
        # From scratch, L1 alone stays at the identity on this mix (most pixels already equal their target) and MSE
        # leaves it slowly; the SSIM term pulls local structure back at once, and lr 2e-3 learns fastest within
        # 30 CPU-minutes. From the shipped weights, L1 at 5e-4 (every shipped stage's) beat the SSIM term in 25 CPU-minutes:
        # val mix 40.56 vs 40.50 dB, sharp inputs kept 70.5 vs 65.3 dB (benchmarks/results/loss_probe.md).
        # 64-px crops: 3.5× the steps of 128-px ones per CPU-second, and in 30 CPU-minutes from scratch val mix 39.93 dB
        # against 39.84 at 96 px and 39.61 at 128 px (loss_probe.md). Fine-tuning keeps the 128 px every shipped stage used:
        # from the shipped weights 64-px crops fell to 40.43 dB in 25 CPU-minutes, 128-px ones held 40.56 (start 40.57).
        # psf-nafnet only: 30 % of the crops are told a PSF zoomed 0.8–1.25×, so a slightly wrong PSF softens rather than rings.
        "perturb_psf": 0.3,
        "loss": LossWeights(ssim=0.15, l1=0.85),
        "patience": None,
        "fine_tune": {"lr": 5e-4, "loss": LossWeights(ssim=0.0, l1=1.0), "crop": 128},
    },
    "reference": {
        "arch": "attention-unet",
        "width": None,
        "size": 256,
        "crop": None,
        "scales": None,
        "soften": 0.0,
        "compress": 0.0,
        "degrade": None,
        "batch": 8,
        "lr": 1e-4,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "schedule": "plateau",
        "max_minutes": None,
        "epochs": 100,
        "epoch_steps": None,
        "warmup": 0,
        "clip": None,
        "ema": None,
        "loss": LossWeights(),
        "patience": 10,
        "perturb_psf": 0.0,
        "fine_tune": {},
    },
}


def recipe_options(name: str, paired: bool, fine_tune: bool = False) -> dict:
    """The option values of recipe ``name``; ``paired``: blurred/sharp pairs are given (nothing to synthesise);
    ``fine_tune``: training starts from weights (``init``), so the recipe's fine-tuning values apply."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    values = dict(RECIPES[name], recipe=name)
    fine_tuning = values.pop("fine_tune")
    if fine_tune:
        values.update(fine_tuning)
    if paired:
        values.update(degrade=None, scales=None)
    return values
