"""Step-level training control: warm-up + cosine learning rate over steps or a time budget, clipping, EMA.

The reference lowers its learning rate on validation plateaus, once per epoch; with a few thousand
steps in a CPU budget that reacts far too late. The cosine schedule here knows its horizon from
the start — ``steps`` optimizer steps, or else ``budget_seconds`` of training time, so a run given
``--max-minutes`` anneals to the end of its budget whatever the machine's speed — and sets the rate
before every step. An exponential moving average of the weights (``ema`` decay) is what validation
scores and what is saved: at a small batch it is consistently better than the last weights (its decay
ramps up over the first steps, so a short run is not held back by its starting weights).
All state (steps taken, seconds spent, EMA weights) is in :meth:`TrainControl.state_dict`, so a
resumed run continues the same curve.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

__all__ = ["WARMUP_SHARE", "cosine_factor", "TrainControl"]

#: The warm-up never takes more than this share of the run: a short fine-tune (2 minutes, a few dozen steps) would
#: otherwise spend its whole budget below the peak learning rate.
WARMUP_SHARE = 0.1


def cosine_factor(progress: float, step: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, or over the first :data:`WARMUP_SHARE` of
    the run when that comes first, then half a cosine from 1 to 0 over progress 0..1."""
    ramp = min(1.0, max((step + 1) / warmup, progress / WARMUP_SHARE)) if warmup > 0 else 1.0
    return ramp * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _ema_update(decay: float) -> Callable:
    """EMA step whose decay ramps up as (1 + n) / (10 + n) to ``decay``: early weights fade out quickly
    (a fixed 0.999 would still give the random or initial weights a third of the average after 1,100 steps)."""

    def update(average: torch.Tensor, current: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        n = float(count)
        return average + (current - average) * (1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return update


class TrainControl:
    """Per-step learning rate, gradient clipping, EMA and the stop condition of a cosine run.

    ``steps`` and/or ``budget_seconds`` give the horizon (the first reached ends the run);
    ``clip``: maximum global gradient norm (None: off); ``ema``: decay (None: off).
    ``progress_bar``: one bar over the whole run counting steps, with steps/s and the ETA (for a time budget the
    total is the number of steps the budget will hold at the speed so far).
    ``clock``: what a budget second is (``time.perf_counter``: wall clock; ``time.process_time``: CPU time).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        steps: int | None,
        budget_seconds: float | None,
        warmup: int = 0,
        clip: float | None = None,
        ema: float | None = None,
        progress_bar: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if steps is None and budget_seconds is None:
            raise ValueError("a cosine schedule needs a horizon: steps or budget_seconds")
        self.net, self.optimizer, self.base_lr = net, optimizer, base_lr
        self.steps, self.budget, self.warmup, self.clip = steps, budget_seconds, warmup, clip
        self.ema = AveragedModel(net, avg_fn=_ema_update(ema), use_buffers=True) if ema else None
        self.step, self.seconds = 0, 0.0
        self.clock = clock
        self._progress_bar = progress_bar
        self.bar: tqdm | None = None

    @property
    def progress(self) -> float:
        parts = []
        if self.steps:
            parts.append(self.step / self.steps)
        if self.budget:
            parts.append(self.seconds / self.budget)
        return max(parts)

    def finished(self) -> bool:
        return self.progress >= 1.0

    def evaluated(self) -> nn.Module:
        """The network validation should score and the run should save: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.net

    def open_bar(self) -> None:
        """Start the run's bar (if it has one and it is not open): before the first step, so that its steps/s is a real rate."""
        if self._progress_bar and self.bar is None:
            self.bar = tqdm(total=self.expected_steps(), initial=self.step, unit="step", desc="training", dynamic_ncols=True)

    def before_step(self) -> None:
        """Clip the gradients just computed and set this step's learning rate."""
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        lr = self.base_lr * cosine_factor(self.progress, self.step, self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # a group may learn faster (a psf-nafnet's fresh parameters)

    def after_step(self, seconds: float) -> None:
        """Count the step and its wall-clock seconds; update the EMA and the bar."""
        self.step += 1
        self.seconds += seconds
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        if self.bar is not None:
            self.bar.total = self.expected_steps()
            self.bar.n = self.step
            self.bar.set_postfix_str(f"lr {self.optimizer.param_groups[0]['lr']:.2e}", refresh=True)

    def expected_steps(self) -> int | None:
        """Steps the whole run will take: ``steps``, or what the time budget holds at the speed so far (None before any)."""
        if self.progress <= 0:
            return self.steps
        return max(self.step, round(self.step / self.progress))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def state_dict(self) -> dict:
        return {"step": self.step, "seconds": self.seconds, "ema": self.ema.state_dict() if self.ema is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
