"""Training with the reference schedule: Adam 1e-4, batch 8, early stopping, LR plateau.

Run folder layout: ``run.json`` (options), ``split.json``, ``history.csv``,
``curves.png``, ``train.log``, ``last.pt`` (full training state, tensors and plain
values only so it loads with ``weights_only=True``) with its SHA-256 in
``last.pt.sha256``, and ``best.safetensors`` + ``best.json``.

Crash safety: every file is replaced atomically, and ``last.pt`` is the commit
point of an epoch: it is written first, then best weights, history and curves,
which are derived from it. ``--resume`` rewrites those derived files from the
checkpoint, so a run killed at any moment continues to the same result as an
uninterrupted one. A loss that turns NaN/Inf stops the run before it can reach
the weights or the checkpoint. Under torchrun (see :mod:`meddeblur.distributed`)
only rank 0 writes files.
"""

from __future__ import annotations

import csv
import hashlib
import io as _stdio
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from meddeblur import __version__
from meddeblur import distributed as ddp
from meddeblur.data import EVAL_DEGRADE_SEED, SPLIT_FILE, PairDataset, check_pairs, load_pairs, read_split, select, split_names, write_split
from meddeblur.degrade import parse_spec
from meddeblur.device import pick_device
from meddeblur.errors import UserError
from meddeblur.io import atomic_path, atomic_write
from meddeblur.losses import DeblurLoss, LossWeights, build_loss
from meddeblur.metrics import psnr, ssim
from meddeblur.models import BEST_WEIGHTS, ModelConfig, build_model, count_parameters, save_weights
from meddeblur.plots import plot_curves

if TYPE_CHECKING:
    from meddeblur.degrade import DegradeSpec

RUN_FILE = "run.json"
CHECKPOINT = "last.pt"
CHECKSUM = CHECKPOINT + ".sha256"
HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_psnr", "train_ssim", "val_loss", "val_psnr", "val_ssim", "seconds", "cpu_seconds")


@dataclass
class TrainOptions:
    """Every option of ``meddeblur train``; stored in the run folder and reused by ``--resume``."""

    blurred_dir: str | None
    sharp_dir: str
    out: str
    degrade: str | None = None
    arch: str = "attention-unet"
    width: int | None = None  # None: the architecture's default (64 for attention-unet*, 16 for nafnet)
    size: int | None = 256
    crop: int | None = None
    epochs: int = 100
    max_minutes: float | None = None  # wall-clock budget: no new epoch starts once the epochs so far took this long
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
    amp: bool = True  # CUDA only: bf16 (or fp16 + GradScaler) autocast
    channels_last: bool = True  # CUDA only

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
    """Lines to the terminal (through tqdm, so bars stay intact) and to ``train.log``; silent outside rank 0."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, message: str) -> None:
        if not ddp.is_main():
            return
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # non-UTF-8 file names
        tqdm.write(message)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(message + "\n")


class Diverged(ArithmeticError):
    """A training step produced a NaN/Inf loss (raised before the step touches the weights)."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"step {step}: loss {loss}")
        self.step, self.loss = step, loss


def _epoch_loader(dataset: PairDataset, batch: int, seed: int, epoch: int, shuffle: bool) -> DataLoader:
    dataset.set_epoch(epoch)
    if ddp.world_size() > 1:
        return ddp.sharded_train_loader(dataset, batch, seed, epoch) if shuffle else ddp.sharded_eval_loader(dataset, batch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(dataset, batch_size=batch, shuffle=shuffle, generator=generator, num_workers=0)


def run_epoch(model, loss_fn: DeblurLoss, loader: DataLoader, device: torch.device, optimizer=None, desc: str = "",
              scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One pass; trains when ``optimizer`` is given. Mean loss, PSNR and SSIM per image, over all processes.

    ``scaler`` (fp16 autocast only) scales the loss before backward. Raises
    :class:`Diverged` before stepping on a NaN/Inf loss.
    """
    training = optimizer is not None
    model.train(training)
    totals = {"loss": 0.0, "psnr": 0.0, "ssim": 0.0}
    seen = 0
    with tqdm(loader, desc=desc, leave=False, disable=None if ddp.is_main() else True, unit="batch") as bar, torch.set_grad_enabled(training):
        for step, (blurred, sharp) in enumerate(bar, 1):
            blurred, sharp = blurred.to(device), sharp.to(device)
            output = model(blurred)
            loss, _ = loss_fn(output, sharp)
            if training:
                # Checked in every process before anyone steps, so a NaN never reaches the weights and
                # no process is left waiting in DDP's all-reduce: one NaN/Inf makes the sum NaN/Inf everywhere.
                spread = ddp.all_reduce_sum([float(loss.detach())])[0]
                if not math.isfinite(spread):
                    raise Diverged(step, spread)
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
            with torch.no_grad():
                n = blurred.shape[0]
                totals["loss"] += float(loss) * n
                totals["psnr"] += float(psnr(output.clamp(0, 1), sharp).clamp(max=100).sum())
                totals["ssim"] += float(ssim(output.clamp(0, 1), sharp).sum())
                seen += n
            bar.set_postfix(loss=f"{totals['loss'] / seen:.4f}", psnr=f"{totals['psnr'] / seen:.2f}", ssim=f"{totals['ssim'] / seen:.4f}")
    *sums, seen = ddp.all_reduce_sum([totals["loss"], totals["psnr"], totals["ssim"], seen])
    return {k: v / max(seen, 1) for k, v in zip(totals, sums)}


# --------------------------------------------------------------------------- run folder files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_checksums(run: Path, digests: list[str]) -> None:
    with atomic_write(run / CHECKSUM, "w") as fh:  # sha256sum format: `sha256sum -c` checks it
        fh.writelines(f"{d}  {CHECKPOINT}\n" for d in dict.fromkeys(digests))


def _read_checksums(run: Path) -> list[str]:
    try:
        return [line.split()[0] for line in (run / CHECKSUM).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return []


def _save_checkpoint(run: Path, state: dict) -> None:
    """Write ``last.pt`` and its checksum so that a kill at any moment leaves a pair that verifies.

    Two files cannot be replaced at once, so while the new checkpoint is moved into
    place the checksum file accepts both the old and the new digest, then only the new.
    """
    with atomic_path(run / CHECKPOINT) as tmp:
        torch.save(state, tmp)
        digest = _sha256(tmp)
        _write_checksums(run, [digest, *_read_checksums(run)])
    _write_checksums(run, [digest])


def load_checkpoint(path: Path) -> dict:
    """The training state in ``last.pt`` (plain tensors and values only), verified against its checksum."""
    sidecar = path.with_name(path.name + ".sha256")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no checkpoint to resume from; start a new run without --resume") from None
    accepted = _read_checksums(path.parent)
    if not accepted:
        raise UserError(f"checkpoint {path} has no checksum in {sidecar.name} (incomplete, or written by an older meddeblur); "
                        f"start a new run, or if you trust the file run `sha256sum {path.name} > {sidecar.name}` in {path.parent}")
    if hashlib.sha256(data).hexdigest() not in accepted:
        raise UserError(f"checkpoint {path} is corrupt or incomplete (checksum mismatch with {sidecar.name}); "
                        "restore it from a backup or start a new run")
    buffer = _stdio.BytesIO(data)
    try:
        return torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged zip/pickle stream
        raise UserError(f"{path}: checkpoint is unreadable ({type(exc).__name__}); start a new run or restore the file") from None


def _write_history(run: Path, history: list[dict]) -> None:
    buffer = _stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    with atomic_write(run / "history.csv", "w") as fh:
        fh.write(buffer.getvalue())


def _publish(run: Path, net: torch.nn.Module, config: ModelConfig, history: list[dict], best_epoch: int | None) -> None:
    """Write the files derived from the checkpoint: best weights (if ``best_epoch`` is the current one), history, curves."""
    if best_epoch is not None:
        row = next(r for r in history if r["epoch"] == best_epoch)
        best = save_weights(net, config, run / BEST_WEIGHTS, extra={"epoch": best_epoch, **{k: row[k] for k in ("val_loss", "val_psnr", "val_ssim")}})
        info = json.loads(best.with_suffix(".json").read_text())
        with atomic_write(best.with_suffix(".json"), "w") as fh:
            json.dump({**info, "sha256": _sha256(best)}, fh, indent=2)
    _write_history(run, history)
    plot_curves(history, run / "curves.png")


def _prepare_run(options: TrainOptions) -> tuple[Path, list, list, list[str]]:
    run = Path(options.out)
    if run.exists() and not run.is_dir():
        raise UserError(f"{run}: --out is a file; pass a folder for the run")
    data_folders = {Path(d).resolve() for d in (options.blurred_dir, options.sharp_dir) if d}
    if run.resolve() in data_folders:
        raise UserError(f"{run}: --out is a data folder; pass a new folder for the run")
    if (run / CHECKPOINT).exists():
        raise UserError(f"{run}: already holds a run; continue it with --resume {run} or choose another --out")
    pairs, skipped = check_pairs(load_pairs(options.blurred_dir, options.sharp_dir, options.degrade), options.skip_bad)
    split = split_names([p.name for p in pairs], seed=options.seed)
    run.mkdir(parents=True, exist_ok=True)
    write_split(run / SPLIT_FILE, split, options.seed)
    with atomic_write(run / RUN_FILE, "w") as fh:
        json.dump({"version": __version__, "options": asdict(options)}, fh, indent=2)
    return run, *(select(pairs, split[part], str(run / SPLIT_FILE)) for part in ("train", "val")), skipped


def _open_run(options: TrainOptions) -> tuple[Path, list, list, list[str]]:
    """The pairs of an existing run folder; clears temporary files a killed run left behind."""
    run = Path(options.out)
    split = read_split(run / SPLIT_FILE)
    pairs, skipped = check_pairs(load_pairs(options.blurred_dir, options.sharp_dir, options.degrade), options.skip_bad)
    if not (run / CHECKPOINT).exists() and ((run / "history.csv").exists() or (run / BEST_WEIGHTS).exists()):
        raise UserError(f"{run / CHECKPOINT}: missing although the run has finished epochs; restore it or start a new run")
    for stale in run.glob(".*.tmp-*"):  # our atomic writes' temporaries; nobody writes this run now
        stale.unlink(missing_ok=True)
    return run, *(select(pairs, split[part], str(run / SPLIT_FILE)) for part in ("train", "val")), skipped


def read_run_options(run: str | Path) -> TrainOptions:
    """The options a run was started with."""
    path = Path(run) / RUN_FILE
    try:
        return TrainOptions.from_dict(json.loads(path.read_text())["options"])
    except FileNotFoundError:
        raise UserError(f"{path}: not found; --resume needs a run folder written by meddeblur train") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable run options ({exc}); start a new run") from None


# --------------------------------------------------------------------------- training


def train(options: TrainOptions, resume: bool = False) -> Path:
    """Train (or resume) a run and return its folder. The best weights are ``RUN/best.safetensors``.

    Under torchrun each process calls this; they join one process group for the run.
    """
    device = pick_device(options.device)
    spec = parse_spec(options.degrade) if options.degrade else None
    loss_fn = build_loss(options.loss, options.vgg19_weights, options.perceptual)  # fails before any work if VGG is missing
    with ddp.process_group(device) as device:
        # One set of options for all processes (a default --out names rank 0's clock time).
        return _train(ddp.broadcast(options), resume, device, spec, loss_fn)


def _train(options: TrainOptions, resume: bool, device: torch.device, spec: DegradeSpec | None, loss_fn: DeblurLoss) -> Path:
    ddp.per_process_batch(options.batch)  # an uneven split is an error before anything is written
    run, train_pairs, val_pairs, skipped = ddp.main_first(lambda: (_open_run if resume else _prepare_run)(options))
    # Rank 0 decides whether there is a checkpoint: every process must then load it, or all start afresh.
    has_checkpoint = ddp.broadcast(resume and (run / CHECKPOINT).exists())
    state = load_checkpoint(run / CHECKPOINT) if has_checkpoint else None
    log = RunLog(run / "train.log")
    config = ModelConfig(arch=options.arch, width=options.width)
    precision = ddp.choose_precision(device, options.amp, options.channels_last)
    torch.manual_seed(options.seed)
    net = build_model(config).to(device)
    if precision.channels_last:
        net = net.to(memory_format=torch.channels_last)
    loss_fn = loss_fn.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=options.lr, eps=1e-7)  # Keras' Adam epsilon
    # Keras ReduceLROnPlateau semantics: absolute min_delta 1e-4, and it cuts once `patience` bad
    # epochs have passed where PyTorch waits for one more, hence patience - 1.
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=options.lr_factor, patience=options.lr_patience - 1,
                                                           threshold=1e-4, threshold_mode="abs")
    scaler = ddp.grad_scaler(device, precision)
    stopper = EarlyStopping(options.patience)
    history: list[dict] = []
    first_epoch = 1
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        stopper = EarlyStopping(**state["early_stop"])
        history = list(state["history"])
        torch.set_rng_state(state["rng"])
        first_epoch = int(state["epoch"]) + 1
        # Files written after the checkpoint by a killed run may be ahead of it or missing: redo them.
        current_best = stopper.best_epoch if stopper.best_epoch == first_epoch - 1 else None
        ddp.main_first(lambda: _publish(run, net, config, history, current_best))
        log(f"resuming {run} after epoch {first_epoch - 1} (best val loss {stopper.best:.5f} at epoch {stopper.best_epoch})")
        if stopper.stopped:
            log("this run had already stopped early; nothing to do")
            return run
    elif resume:
        log(f"resuming {run}: no checkpoint yet (stopped during epoch 1), starting at epoch 1")

    trainable, _ = count_parameters(net)
    protocol = f"resized to {options.size}×{options.size}" if options.size else f"random {options.crop}×{options.crop} crops at native resolution"
    log(f"meddeblur {__version__}: {config.arch} width {config.width} ({trainable:,} parameters) on {device}; "
        f"{len(train_pairs)} train / {len(val_pairs)} val pairs, {protocol}; batch {options.batch}, Adam lr {options.lr:g}")
    if ddp.world_size() > 1:
        log(ddp.describe(device, options.batch))
    if device.type == "cuda":
        log(precision.describe())
    log(loss_fn.describe())
    if skipped:
        log(f"--skip-bad: {len(skipped)} bad image(s) left out: " + "; ".join(skipped))
    if spec is not None:
        log(f"blurred inputs synthesised from the sharp images with '{spec}': fresh for every training epoch, "
            f"fixed (seed {EVAL_DEGRADE_SEED}) for validation and test")
    train_set = PairDataset(train_pairs, size=options.size, crop=options.crop, augment=True, seed=options.seed, degrade=spec)
    val_set = PairDataset(val_pairs, size=options.size, crop=options.crop, augment=False, seed=options.seed, degrade=spec, fixed=True)
    model = ddp.with_precision(ddp.wrap_model(net, device), precision)  # what trains: DDP under torchrun
    evaluator = ddp.with_precision(net, precision)  # no DDP: processes may hold different numbers of val batches
    step_options = {"scaler": scaler} if scaler is not None else {}

    for epoch in range(first_epoch, options.epochs + 1):
        spent = sum(float(r["seconds"]) for r in history) / 60
        if options.max_minutes is not None and spent >= options.max_minutes:
            log(f"time budget: {spent:.1f} of {options.max_minutes:g} minutes used after epoch {epoch - 1}; stopping")
            break
        started, cpu_started = time.perf_counter(), time.process_time()
        desc = f"epoch {epoch}/{options.epochs}"
        kept = f"last good checkpoint {run / CHECKPOINT} kept" if state is not None or epoch > 1 else "no checkpoint written yet"
        try:
            train_stats = run_epoch(model, loss_fn, _epoch_loader(train_set, options.batch, options.seed, epoch, True), device, optimizer, desc, **step_options)
        except Diverged as error:
            raise UserError(f"training diverged at epoch {epoch} step {error.step} (loss {error.loss}); {kept} — lower --lr or check the data") from None
        if not ddp.synchronises_batchnorm(device):
            ddp.average_batchnorm_stats(net)
        val_stats = run_epoch(evaluator, loss_fn, _epoch_loader(val_set, options.batch, options.seed, epoch, False), device, None, desc + " val")
        finite = all(bool(torch.isfinite(t).all()) for t in net.state_dict().values() if t.is_floating_point())
        if not (math.isfinite(val_stats["loss"]) and ddp.all_agree(finite)):
            raise UserError(f"training diverged at epoch {epoch} (val loss {val_stats['loss']}); {kept} — lower --lr or check the data")
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step(val_stats["loss"])
        row = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train_stats.items()},
               **{f"val_{k}": v for k, v in val_stats.items()}, "seconds": round(time.perf_counter() - started, 3),
               "cpu_seconds": round(time.process_time() - cpu_started, 3)}
        history.append(row)
        improved = stopper.update(val_stats["loss"], epoch)
        if ddp.is_main():
            # The checkpoint commits the epoch; everything after it is rebuilt from it on --resume.
            _save_checkpoint(run, {
                "epoch": epoch, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "early_stop": asdict(stopper), "history": history,
                "rng": torch.get_rng_state(), "config": asdict(config), "scaler": scaler.state_dict() if scaler is not None else {},
            })
            _publish(run, net, config, history, epoch if improved else None)
        log(f"epoch {epoch}: loss {train_stats['loss']:.4f}/{val_stats['loss']:.4f} (train/val), val PSNR {val_stats['psnr']:.2f} dB, "
            f"val SSIM {val_stats['ssim']:.4f}, lr {lr:g}, {row['seconds']:.1f} s" + (" — best so far" if improved else ""))
        if stopper.stopped:
            log(f"early stopping: no val-loss improvement for {options.patience} epochs; best epoch {stopper.best_epoch} kept")
            break
    log(f"best weights: {run / BEST_WEIGHTS} (epoch {stopper.best_epoch}, val loss {stopper.best:.5f})")
    ddp.barrier()  # nobody reports success before rank 0's last files are in place
    return run
