"""One pass over the data, and what each pass is judged by: :func:`run_epoch`, its loaders, early stopping, divergence.

Separate from :mod:`meddeblur.training.loop`, which sets a run up (weights, optimiser, schedule, resume) and calls
these once per epoch: this is the step-level machinery, usable alone (benchmarks and scripts/ship_model.py call
:func:`run_epoch` directly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from meddeblur.data.pairs import PairDataset
from meddeblur.losses import DeblurLoss
from meddeblur.metrics import psnr, ssim
from meddeblur.models import ModelConfig
from meddeblur.training import distributed as ddp
from meddeblur.training.options import TrainOptions
from meddeblur.training.schedule import TrainControl

__all__ = ["EarlyStopping", "Diverged", "run_epoch", "epoch_loader", "drops_last", "needs_drop_single"]


@dataclass
class EarlyStopping:
    """Keras EarlyStopping(monitor='val_loss', min_delta=0) bookkeeping."""

    patience: int | None  # None: never stops
    best: float = math.inf
    best_epoch: int = 0
    wait: int = 0
    stopped: bool = False

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's val loss; True when it is a new best."""
        if value < self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True
        self.wait += 1
        self.stopped = self.patience is not None and self.wait >= self.patience
        return False


class Diverged(ArithmeticError):
    """A training step produced a NaN/Inf loss (raised before the step touches the weights)."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"step {step}: loss {loss}")
        self.step, self.loss = step, loss


def epoch_loader(dataset: PairDataset, batch: int, seed: int, epoch: int, shuffle: bool, drop_single: bool = False) -> DataLoader:
    dataset.set_epoch(epoch)
    if ddp.world_size() > 1:
        return ddp.sharded_train_loader(dataset, batch, seed, epoch) if shuffle else ddp.sharded_eval_loader(dataset, batch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    # ``drop_single``: the network's BatchNorm would see one value per channel in a last training batch of one
    # image (1×1 bottleneck), which it cannot normalise; that batch is left out (its image is drawn again in
    # later epochs). Evaluation uses running statistics and keeps every image.
    drop_last = drop_single and shuffle and drops_last(len(dataset), batch)
    return DataLoader(dataset, batch_size=batch, shuffle=shuffle, generator=generator, num_workers=0, drop_last=drop_last)


def drops_last(samples: int, batch: int) -> bool:
    return samples > 1 and samples % batch == 1


def needs_drop_single(config: ModelConfig, options: TrainOptions) -> bool:
    """BatchNorm networks whose training images shrink to 1×1 at the bottleneck (sides below 32 px)."""
    side = options.size or options.crop or 0
    return config.arch.startswith("attention-unet") and side < 32


def run_epoch(
    model,
    loss_fn: DeblurLoss,
    loader: DataLoader,
    device: torch.device,
    optimizer=None,
    desc: str = "",
    scaler: torch.amp.GradScaler | None = None,
    control: TrainControl | None = None,
) -> dict[str, float]:
    """One pass; trains when ``optimizer`` is given. Mean loss over all images; over all processes.

    PSNR and SSIM are means over the images that were degraded; an image whose input equals its
    target (the ``none`` share) is scored apart as ``sharp_psnr``: PSNR(output, input), how well the
    network leaves a sharp image alone (absent when there is none). ``scaler`` (fp16 autocast only)
    scales the loss before backward; ``control`` (cosine recipe) clips, sets the learning rate,
    updates the EMA and ends the pass early when the budget is spent. Raises :class:`Diverged`
    before stepping on a NaN/Inf loss.
    """
    training = optimizer is not None
    model.train(training)
    totals = {"loss": 0.0, "psnr": 0.0, "ssim": 0.0, "sharp_psnr": 0.0}
    seen: float = 0
    degraded: float = 0
    quiet = not ddp.is_main() or (control is not None and training)  # the run's own bar shows progress then
    with (
        tqdm(loader, desc=desc, leave=False, disable=True if quiet else None, unit="batch") as bar,
        torch.set_grad_enabled(training),
    ):
        started = control.clock() if control is not None else 0.0
        if training and control is not None:
            control.open_bar()
        for step, (blurred, sharp) in enumerate(bar, 1):
            blurred, sharp = blurred.to(device), sharp.to(device)
            output = model(blurred)
            loss, _ = loss_fn(output, sharp)
            if training:
                # One all-reduce before anyone steps carries what every process must agree on. The loss: a NaN/Inf
                # anywhere makes the sum NaN/Inf everywhere, so it never reaches the weights. The budget clock: each
                # process's own clock would stop one of them while another waits in DDP's all-reduce, and give each
                # its own learning rate; all use the mean instead.
                elapsed = control.seconds + control.clock() - started if control is not None else 0.0
                spread, elapsed_sum = ddp.all_reduce_sum([float(loss.detach()), elapsed])
                if not math.isfinite(spread):
                    raise Diverged(step, spread)
                if control is not None:
                    control.seconds, started = elapsed_sum / ddp.world_size(), control.clock()
                    if control.finished():
                        break
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    if control is not None:
                        control.before_step()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    if control is not None:
                        scaler.unscale_(optimizer)
                        control.before_step()
                    scaler.step(optimizer)
                    scaler.update()
                if control is not None:
                    now = control.clock()
                    control.after_step(now - started)
                    started = now
            with torch.no_grad():
                n = blurred.shape[0]
                totals["loss"] += float(loss) * n
                restored = output.detach().float().clamp(0, 1)
                unchanged = (blurred[:, : sharp.shape[1]] == sharp).flatten(1).all(1)  # a PSF model's input also holds its kernel
                scores = psnr(restored, sharp).clamp(max=100)
                totals["sharp_psnr"] += float(scores[unchanged].sum())
                totals["psnr"] += float(scores[~unchanged].sum())
                totals["ssim"] += float(ssim(restored, sharp)[~unchanged].sum())
                seen += n
                degraded += int((~unchanged).sum())
            bar.set_postfix(loss=f"{totals['loss'] / seen:.4f}", psnr=f"{totals['psnr'] / max(degraded, 1):.2f}")
    *sums, seen, degraded = ddp.all_reduce_sum([*totals.values(), seen, degraded])
    loss, psnr_sum, ssim_sum, sharp_sum = sums
    stats = {
        "loss": loss / max(seen, 1),
        "psnr": psnr_sum / degraded if degraded else math.nan,
        "ssim": ssim_sum / degraded if degraded else math.nan,
    }
    return {**stats, "sharp_psnr": sharp_sum / (seen - degraded)} if seen > degraded else stats
