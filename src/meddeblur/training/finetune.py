"""Fine-tuning guards: a run never hands back weights worse than those it started from, and says when its budget
was too small to train at all.

A fine-tuning run (``init``) scores its starting weights on the validation set before the first step. If at the
end its best epoch does not beat them (validation PSNR), ``best.safetensors`` holds the starting weights again, so
``--model RUN`` can never be a step back; the log says so in one line. A budget that ends inside the learning-rate
warm-up (or after a handful of steps) leaves the weights barely moved: that is said too, with a budget suggested from
the steps per minute this run measured.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from meddeblur.models import BEST_WEIGHTS, ModelConfig
from meddeblur.training.runs import publish_best

__all__ = ["FEW_STEPS", "kept_start_line", "publish_start", "budget_warning", "summary_line", "end_lines"]

#: Fewer optimiser steps than this (or than the warm-up) are too few to tell what training does.
FEW_STEPS = 100


def kept_start_line(start_scores: dict | None, best_row: dict | None, what: str) -> str | None:
    """The line saying the starting weights were kept, when a fine-tuning run's best epoch did not beat them (None:
    it did, or this run trained from scratch). ``best_row``: the best epoch's history row, None when none finished."""
    if not start_scores:
        return None
    if best_row is None:
        return f"kept the starting weights: no epoch finished (validation {what} {start_scores['psnr']:.2f} dB)"
    best = float(best_row["val_psnr"])
    if best > float(start_scores["psnr"]):
        return None
    return (
        f"kept the starting weights: {start_scores['psnr']:.2f} dB vs {best:.2f} after fine-tuning on the validation {what} "
        f"(best epoch {int(best_row['epoch'])} did not beat them)"
    )


def publish_start(run: Path, net: torch.nn.Module, config: ModelConfig, start_scores: dict) -> Path:
    """Write the starting weights as the run's best (``epoch`` 0 in ``best.json``, with its checksum, as every best)."""
    scores = {f"val_{key}": start_scores.get(key) for key in ("loss", "psnr", "ssim")}
    return publish_best(run, net, config, {"epoch": 0, "kept": "starting weights", **scores})


def budget_warning(steps: int, warmup: int, minutes: float, max_minutes: float | None) -> str | None:
    """A warning when a run ended after too few steps to train (inside its warm-up, or under :data:`FEW_STEPS`),
    suggesting a ``--max-minutes`` from the minutes per step it measured; None when the run was long enough."""
    enough = max(warmup, FEW_STEPS)
    if steps >= enough or steps <= 0 or minutes <= 0:
        return None
    wanted = max(10 * warmup, 5 * FEW_STEPS)
    suggested = math.ceil(wanted * minutes / steps)
    inside = f"all inside the {warmup}-step learning-rate warm-up" if steps < warmup else f"fewer than {FEW_STEPS}"
    budget = f" in {max_minutes:g} minutes" if max_minutes is not None else ""
    return (
        f"warning: only {steps} training steps ran{budget} ({inside}): too few to change the weights much; at the "
        f"{steps / minutes:.1f} steps per minute measured here, a budget of about {suggested} minutes gives {wanted} steps"
    )


def summary_line(history: list[dict], best_epoch: int, baseline: dict, start_scores: dict | None, what: str) -> str:
    """The run's last line: where the best weights leave the validation PSNR against where training started."""
    best = next((row for row in history if int(row["epoch"]) == best_epoch), None)
    if best is None:
        return "no epoch finished; nothing to compare"
    if start_scores:
        return (
            f"fine-tuning changed the validation {what} from {start_scores['psnr']:.2f} to {float(best['val_psnr']):.2f} dB "
            f"(input {baseline['psnr']:.2f} dB; best epoch {best_epoch})"
        )
    return f"training took the validation {what} from the input's {baseline['psnr']:.2f} to {float(best['val_psnr']):.2f} dB (best epoch {best_epoch})"


def end_lines(
    run: Path,
    history: list[dict],
    best_epoch: int,
    best_loss: float,
    baseline: dict,
    start_scores: dict | None,
    what: str,
    warmup: int,
    max_minutes: float | None,
) -> list[str]:
    """The run's closing lines: where the best weights are and what they score against the start, and a warning
    when the budget was too small (:func:`budget_warning`)."""
    best_row = next((row for row in history if int(row["epoch"]) == best_epoch), None)
    kept = kept_start_line(start_scores, best_row, what)
    if kept is not None:
        lines = [f"best weights: {run / BEST_WEIGHTS} (the starting weights)", kept]
    else:
        lines = [
            f"best weights: {run / BEST_WEIGHTS} (epoch {best_epoch}, val loss {best_loss:.5f})",
            summary_line(history, best_epoch, baseline, start_scores, what),
        ]
    steps = int(history[-1]["steps"] or 0) if history else 0
    warning = budget_warning(steps, warmup, sum(float(row["seconds"] or 0) for row in history) / 60, max_minutes)
    return lines + ([warning] if warning else [])
