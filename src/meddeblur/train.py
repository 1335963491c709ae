"""Training with the reference schedule: Adam 1e-4, batch 8, early stopping, LR plateau.

Run folder layout: ``run.json`` (options), ``split.json``, ``history.csv``,
``curves.png``, ``train.log``, ``last.pt`` (full training state, tensors and plain
values only so it loads with ``weights_only=True``) and ``best.safetensors`` +
``best.json``. Every file is replaced atomically, so a killed run leaves the
previous complete epoch behind.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from meddeblur import __version__
from meddeblur.data import EVAL_DEGRADE_SEED, SPLIT_FILE, PairDataset, check_pairs, load_pairs, read_split, select, split_names, write_split
from meddeblur.degrade import parse_spec
from meddeblur.device import pick_device
from meddeblur.errors import UserError
from meddeblur.io import atomic_path, atomic_write
from meddeblur.losses import DeblurLoss, LossWeights, build_loss
from meddeblur.metrics import psnr, ssim
from meddeblur.models import BEST_WEIGHTS, ModelConfig, build_model, count_parameters, save_weights
from meddeblur.plots import plot_curves

RUN_FILE = "run.json"
CHECKPOINT = "last.pt"
HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_psnr", "train_ssim", "val_loss", "val_psnr", "val_ssim", "seconds")


@dataclass
class TrainOptions:
    """Every option of ``meddeblur train``; stored in the run folder and reused by ``--resume``."""

    blurred_dir: str | None
    sharp_dir: str
    out: str
    degrade: str | None = None
    arch: str = "attention-unet"
    width: int = 64
    size: int | None = 256
    crop: int | None = None
    epochs: int = 100
    batch: int = 8
    lr: float = 1e-4
    seed: int = 42
    loss: LossWeights = field(default_factory=LossWeights)
    perceptual: bool = False
    vgg19_weights: str | None = None
    patience: int = 10
    lr_patience: int = 5
    lr_factor: float = 0.5
    device: str = "auto"
    skip_bad: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> "TrainOptions":
        data = dict(data)
        data["loss"] = LossWeights(**data.get("loss", {}))
        return cls(**data)


@dataclass
class EarlyStopping:
    """Keras EarlyStopping(monitor='val_loss', min_delta=0) bookkeeping."""

    patience: int
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
        self.stopped = self.wait >= self.patience
        return False


class RunLog:
    """Lines to the terminal (through tqdm, so bars stay intact) and to ``train.log``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, message: str) -> None:
        tqdm.write(message)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(message + "\n")


def _epoch_loader(dataset: PairDataset, batch: int, seed: int, epoch: int, shuffle: bool) -> DataLoader:
    dataset.set_epoch(epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(dataset, batch_size=batch, shuffle=shuffle, generator=generator, num_workers=0)


def run_epoch(model, loss_fn: DeblurLoss, loader: DataLoader, device: torch.device, optimizer=None, desc: str = "") -> dict[str, float]:
    """One pass; trains when ``optimizer`` is given. Returns mean loss, PSNR and SSIM (per image)."""
    training = optimizer is not None
    model.train(training)
    totals = {"loss": 0.0, "psnr": 0.0, "ssim": 0.0}
    seen = 0
    with tqdm(loader, desc=desc, leave=False, disable=None, unit="batch") as bar, torch.set_grad_enabled(training):
        for blurred, sharp in bar:
            blurred, sharp = blurred.to(device), sharp.to(device)
            output = model(blurred)
            loss, _ = loss_fn(output, sharp)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                n = blurred.shape[0]
                totals["loss"] += float(loss) * n
                totals["psnr"] += float(psnr(output.clamp(0, 1), sharp).clamp(max=100).sum())
                totals["ssim"] += float(ssim(output.clamp(0, 1), sharp).sum())
                seen += n
            bar.set_postfix(loss=f"{totals['loss'] / seen:.4f}", psnr=f"{totals['psnr'] / seen:.2f}", ssim=f"{totals['ssim'] / seen:.4f}")
    return {k: v / max(seen, 1) for k, v in totals.items()}


def _write_history(run: Path, history: list[dict]) -> None:
    buffer = _stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    with atomic_write(run / "history.csv", "w") as fh:
        fh.write(buffer.getvalue())


def _save_checkpoint(run: Path, state: dict) -> None:
    with atomic_path(run / CHECKPOINT) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """The training state in ``last.pt`` (plain tensors and values only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no checkpoint to resume from; start a new run without --resume") from None
    except Exception as exc:  # torch raises many types for a damaged zip/pickle stream
        raise UserError(f"{path}: checkpoint is unreadable ({type(exc).__name__}); start a new run or restore the file") from None


def _prepare_run(options: TrainOptions) -> tuple[Path, list, list, list[str]]:
    run = Path(options.out)
    if run.exists() and not run.is_dir():
        raise UserError(f"{run}: --out is a file; pass a folder for the run")
    if (run / CHECKPOINT).exists():
        raise UserError(f"{run}: already holds a run; continue it with --resume {run} or choose another --out")
    pairs, skipped = check_pairs(load_pairs(options.blurred_dir, options.sharp_dir, options.degrade), options.skip_bad)
    split = split_names([p.name for p in pairs], seed=options.seed)
    run.mkdir(parents=True, exist_ok=True)
    write_split(run / SPLIT_FILE, split, options.seed)
    with atomic_write(run / RUN_FILE, "w") as fh:
        json.dump({"version": __version__, "options": asdict(options)}, fh, indent=2)
    return run, select(pairs, split["train"], str(run / SPLIT_FILE)), select(pairs, split["val"], str(run / SPLIT_FILE)), skipped


def read_run_options(run: str | Path) -> TrainOptions:
    """The options a run was started with."""
    path = Path(run) / RUN_FILE
    try:
        return TrainOptions.from_dict(json.loads(path.read_text())["options"])
    except FileNotFoundError:
        raise UserError(f"{path}: not found; --resume needs a run folder written by meddeblur train") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable run options ({exc}); start a new run") from None


def train(options: TrainOptions, resume: bool = False) -> Path:
    """Train (or resume) a run and return its folder. The best weights are ``RUN/best.safetensors``."""
    device = pick_device(options.device)
    spec = parse_spec(options.degrade) if options.degrade else None
    loss_fn = build_loss(options.loss, options.vgg19_weights, options.perceptual)  # fails before any work if VGG is missing
    if resume:
        run = Path(options.out)

        split = read_split(run / SPLIT_FILE)
        pairs, skipped = check_pairs(load_pairs(options.blurred_dir, options.sharp_dir, options.degrade), options.skip_bad)
        train_pairs, val_pairs = select(pairs, split["train"], str(run / SPLIT_FILE)), select(pairs, split["val"], str(run / SPLIT_FILE))
        state = load_checkpoint(run / CHECKPOINT)
    else:
        run, train_pairs, val_pairs, skipped = _prepare_run(options)
        state = None
    log = RunLog(run / "train.log")
    config = ModelConfig(arch=options.arch, width=options.width)
    torch.manual_seed(options.seed)
    model = build_model(config).to(device)
    loss_fn = loss_fn.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr, eps=1e-7)  # Keras' Adam epsilon
    # Keras ReduceLROnPlateau semantics: absolute min_delta 1e-4, and it cuts once `patience` bad
    # epochs have passed where PyTorch waits for one more, hence patience - 1.
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=options.lr_factor, patience=options.lr_patience - 1,
                                                           threshold=1e-4, threshold_mode="abs")
    stopper = EarlyStopping(options.patience)
    history: list[dict] = []
    first_epoch = 1
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stopper = EarlyStopping(**state["early_stop"])
        history = list(state["history"])
        torch.set_rng_state(state["rng"])
        first_epoch = int(state["epoch"]) + 1
        log(f"resuming {run} after epoch {first_epoch - 1} (best val loss {stopper.best:.5f} at epoch {stopper.best_epoch})")
        if stopper.stopped:
            log("this run had already stopped early; nothing to do")
            return run

    trainable, _ = count_parameters(model)
    protocol = f"resized to {options.size}×{options.size}" if options.size else f"random {options.crop}×{options.crop} crops at native resolution"
    log(f"meddeblur {__version__}: {config.arch} width {config.width} ({trainable:,} parameters) on {device}; "
        f"{len(train_pairs)} train / {len(val_pairs)} val pairs, {protocol}; batch {options.batch}, Adam lr {options.lr:g}")
    log(loss_fn.describe())
    if skipped:
        log(f"--skip-bad: {len(skipped)} bad image(s) left out: " + "; ".join(skipped))
    if spec is not None:
        log(f"blurred inputs synthesised from the sharp images with '{spec}': fresh for every training epoch, "
            f"fixed (seed {EVAL_DEGRADE_SEED}) for validation and test")
    train_set = PairDataset(train_pairs, size=options.size, crop=options.crop, augment=True, seed=options.seed, degrade=spec)
    val_set = PairDataset(val_pairs, size=options.size, crop=options.crop, augment=False, seed=options.seed, degrade=spec, fixed=True)

    for epoch in range(first_epoch, options.epochs + 1):
        started = time.perf_counter()
        desc = f"epoch {epoch}/{options.epochs}"
        train_stats = run_epoch(model, loss_fn, _epoch_loader(train_set, options.batch, options.seed, epoch, True), device, optimizer, desc)
        val_stats = run_epoch(model, loss_fn, _epoch_loader(val_set, options.batch, options.seed, epoch, False), device, None, desc + " val")
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step(val_stats["loss"])
        row = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train_stats.items()},
               **{f"val_{k}": v for k, v in val_stats.items()}, "seconds": round(time.perf_counter() - started, 3)}
        history.append(row)
        improved = stopper.update(val_stats["loss"], epoch)
        if improved:
            save_weights(model, config, run / BEST_WEIGHTS, extra={"epoch": epoch, "val_loss": val_stats["loss"], "val_psnr": val_stats["psnr"], "val_ssim": val_stats["ssim"]})
        _write_history(run, history)
        plot_curves(history, run / "curves.png")
        _save_checkpoint(run, {
            "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "early_stop": asdict(stopper), "history": history,
            "rng": torch.get_rng_state(), "config": asdict(config),
        })
        log(f"epoch {epoch}: loss {train_stats['loss']:.4f}/{val_stats['loss']:.4f} (train/val), val PSNR {val_stats['psnr']:.2f} dB, "
            f"val SSIM {val_stats['ssim']:.4f}, lr {lr:g}, {row['seconds']:.1f} s" + (" — best so far" if improved else ""))
        if stopper.stopped:
            log(f"early stopping: no val-loss improvement for {options.patience} epochs; best epoch {stopper.best_epoch} kept")
            break
    log(f"best weights: {run / BEST_WEIGHTS} (epoch {stopper.best_epoch}, val loss {stopper.best:.5f})")
    return run
