"""A training run's folder: options, split, checkpoint with checksum, history, best weights and log.

Layout: ``run.json`` (options), ``split.json``, ``history.csv``, ``curves.png``, ``train.log``, ``last.pt`` (full
training state, tensors and plain values only so it loads with ``weights_only=True``) with its SHA-256 in
``last.pt.sha256``, and ``best.safetensors`` + ``best.json``.

Crash safety: every file is replaced atomically, and ``last.pt`` is the commit point of an epoch: it is written
first, then best weights, history and curves, which are derived from it (:func:`publish`). Resuming rewrites those
derived files from the checkpoint, so a run killed at any moment continues to the same result as an uninterrupted
one. Under torchrun only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io as _stdio
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from meddeblur import __version__
from meddeblur.data.pairs import SPLIT_FILE, check_pairs, load_pairs, read_split, select, split_names, write_split
from meddeblur.errors import MissingExtra, UserError
from meddeblur.files import atomic_write, remove_quietly
from meddeblur.models import BEST_WEIGHTS, ModelConfig, save_weights
from meddeblur.training import distributed as ddp
from meddeblur.training.options import TrainOptions

__all__ = [
    "RUN_FILE",
    "RUN_FILES",
    "CHECKPOINT",
    "CHECKSUM",
    "HISTORY_FIELDS",
    "RunLog",
    "save_checkpoint",
    "load_checkpoint",
    "verify_best",
    "publish_best",
    "publish",
    "prepare_run",
    "open_run",
    "read_run_options",
    "checkpoint_config",
]

RUN_FILE = "run.json"
CHECKPOINT = "last.pt"
CHECKSUM = CHECKPOINT + ".sha256"
#: Every file a run writes into its folder: any of them there means the folder holds a run.
RUN_FILES = (
    RUN_FILE,
    SPLIT_FILE,
    CHECKPOINT,
    CHECKSUM,
    "history.csv",
    "curves.png",
    "train.log",
    BEST_WEIGHTS,
    Path(BEST_WEIGHTS).with_suffix(".json").name,
)
HISTORY_FIELDS = (
    "epoch",
    "steps",
    "lr",
    "train_loss",
    "train_psnr",
    "train_ssim",
    "val_loss",
    "val_psnr",
    "val_ssim",
    "val_input_psnr",
    "val_sharp_psnr",
    "seconds",
    "cpu_seconds",
)


class RunLog:
    """Lines to the terminal (through tqdm, so bars stay intact) and to ``train.log``; silent outside rank 0."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, message: str) -> None:
        if not ddp.is_main():
            return
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # non-UTF-8 file names
        tqdm.write(message)
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(message + "\n")
        except OSError as exc:  # a full disk: one line naming the log, not a traceback
            raise UserError(
                f"{self.path}: cannot write ({exc.strerror or exc}); free some space or choose another `out`"
            ) from None


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


def save_checkpoint(run: Path, state: dict) -> None:
    """Write ``last.pt`` and its checksum so that a kill at any moment leaves a pair that verifies, and a failed write
    (a full disk) leaves the pair it found.

    Two files cannot be replaced at once. The new checkpoint is written out in full first, to its temporary file
    (synced: a full disk shows here, before any digest names it); then the checksum file accepts both the old and the
    new digest while the checkpoint is moved into place, and then only the new. A failure on the way removes what this
    attempt wrote — the temporary file, and the checksum file it created or widened — so no digest names a checkpoint
    that is not there. The state is serialised in memory first: torch's own file writer reports a full disk as a bare
    RuntimeError.
    """
    buffer = _stdio.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    try:
        found: bytes | None = (run / CHECKSUM).read_bytes()
    except FileNotFoundError:
        found = None
    except OSError:  # there but unreadable: nothing to put back, and nothing this attempt may remove
        found = b""
    widened = False
    try:
        with atomic_write(run / CHECKPOINT) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            _write_checksums(run, [digest, *_read_checksums(run)])
            widened = True
    except BaseException:
        if widened and found is None:  # the checksum file is this attempt's own: no checkpoint is left for it to name
            remove_quietly(run / CHECKSUM)
        elif widened and found:  # the old checkpoint is still in place: its checksum file goes back to what it was
            # Should even that fail, the widened file still verifies it.
            with contextlib.suppress(OSError, UserError), atomic_write(run / CHECKSUM) as fh:
                fh.write(found)
        raise
    # Should this fail, the checksum file still accepts both digests, so the new checkpoint verifies.
    _write_checksums(run, [digest])


def load_checkpoint(path: Path, check_best: bool = False) -> dict:
    """The training state in ``last.pt`` (plain tensors and values only), verified against its checksum.

    ``check_best`` (resuming): the run's best weights too, with :func:`verify_best`.
    """
    sidecar = path.with_name(path.name + ".sha256")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no checkpoint to resume from; start a new run without resume=True") from None
    accepted = _read_checksums(path.parent)
    if not accepted:
        raise UserError(
            f"checkpoint {path} has no checksum in {sidecar.name} (incomplete, or written by an older meddeblur); "
            f"start a new run, or if you trust the file run `sha256sum {path.name} > {sidecar.name}` in {path.parent}"
        )
    if hashlib.sha256(data).hexdigest() not in accepted:
        raise UserError(
            f"checkpoint {path} is corrupt or incomplete (checksum mismatch with {sidecar.name}); "
            "restore it from a backup or start a new run"
        )
    buffer = _stdio.BytesIO(data)
    try:
        state = torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged zip/pickle stream
        raise UserError(f"{path}: checkpoint is unreadable ({type(exc).__name__}); start a new run or restore the file") from None
    if check_best:
        verify_best(path.parent, state)
    return state


def verify_best(run: Path, state: dict) -> None:
    """UserError naming ``best.safetensors`` if it no longer matches the SHA-256 in ``best.json``.

    Only when resuming would keep it as it is, i.e. the best epoch is not the checkpoint's (that one is written
    again from the checkpoint): a truncated or replaced file must not be reported as the run's best weights.
    """
    best_epoch, last_epoch = int(state.get("early_stop", {}).get("best_epoch", 0)), int(state.get("epoch", 0))
    if best_epoch in (0, last_epoch):
        return
    best, info_path = run / BEST_WEIGHTS, (run / BEST_WEIGHTS).with_suffix(".json")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        raise UserError(
            f"{info_path}: missing or unreadable, so {best.name} (epoch {best_epoch}) cannot be checked; restore "
            "both from a backup or start a new run"
        ) from None
    expected = info.get("sha256") if isinstance(info, dict) else None
    if expected is None:
        return  # written before best.json held a checksum: nothing to compare with
    actual = _sha256(best) if best.is_file() else None
    if actual != expected:
        what = "is missing" if actual is None else "does not match the sha256 in best.json (truncated or changed)"
        raise UserError(
            f"{best}: {what}; restore it from a backup or start a new run — resuming would report it as the "
            f"best weights of epoch {best_epoch}"
        )


def _write_history(run: Path, history: list[dict]) -> None:
    buffer = _stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    with atomic_write(run / "history.csv", "w") as fh:
        fh.write(buffer.getvalue())


def publish_best(run: Path, net: torch.nn.Module, config: ModelConfig, extra: dict) -> Path:
    """Write ``net`` as the run's best weights, ``extra`` (epoch, scores) and the file's SHA-256 in ``best.json``
    (which :func:`verify_best` checks on resume)."""
    best = save_weights(net, config, run / BEST_WEIGHTS, extra=extra)
    info = json.loads(best.with_suffix(".json").read_text())
    with atomic_write(best.with_suffix(".json"), "w") as fh:
        json.dump({**info, "sha256": _sha256(best)}, fh, indent=2)
    return best


def publish(run: Path, net: torch.nn.Module, config: ModelConfig, history: list[dict], best_epoch: int | None) -> None:
    """Write the files derived from the checkpoint: best weights (if ``best_epoch`` is the current one), history, curves."""
    if best_epoch is not None:
        row = next(r for r in history if r["epoch"] == best_epoch)
        publish_best(run, net, config, {"epoch": best_epoch, **{k: row[k] for k in ("val_loss", "val_psnr", "val_ssim")}})
    _write_history(run, history)
    try:
        from meddeblur.plots import plot_curves
    except MissingExtra:  # a core install trains too; curves.png needs the [plots] extra, history.csv has the same numbers
        return
    plot_curves(history, run / "curves.png")


def prepare_run(options: TrainOptions) -> tuple[Path, list, list, list[str]]:
    run = Path(options.out)
    if run.exists() and not run.is_dir():
        raise UserError(f"{run}: `out` is a file; pass a folder for the run")
    data_folders = {Path(d).resolve() for d in (options.blurred_dir, options.sharp_dir) if d}
    if run.resolve() in data_folders:
        raise UserError(f"{run}: `out` is a data folder; pass a new folder for the run")
    used = [name for name in RUN_FILES if os.path.lexists(run / name)]
    if used:
        raise UserError(f"{run}: already holds a run ({', '.join(used)}); continue it with resume={run} or choose another `out`")
    pairs, skipped = check_pairs(load_pairs(options.blurred_dir, options.sharp_dir, options.degrade), options.skip_bad)
    split = split_names([p.name for p in pairs], seed=options.seed)
    if (
        options.arch.startswith("attention-unet")
        and (options.size or options.crop or 0) < 32
        and len(split["train"]) < 2
        and not options.epoch_steps
    ):
        raise UserError(
            f"{len(pairs)} image(s) leave {len(split['train'])} for training: {options.arch} uses BatchNorm, which cannot "
            "normalise one image shrunk to 1×1; add images, size=32 or more, or arch=nafnet"
        )
    run.mkdir(parents=True, exist_ok=True)
    write_split(run / SPLIT_FILE, split, options.seed)
    with atomic_write(run / RUN_FILE, "w") as fh:
        json.dump({"version": __version__, "options": _stored_options(options)}, fh, indent=2)
    train, val = (select(pairs, split[part], str(run / SPLIT_FILE)) for part in ("train", "val"))
    return run, train, val, skipped


def _stored_options(options: TrainOptions) -> dict:
    """The options as run.json keeps them: file and folder paths absolute, so ``resume`` works from any folder
    (the run's own messages show them as given)."""
    stored = asdict(options)
    for name in ("blurred_dir", "sharp_dir", "vgg19_weights", "init"):
        value = stored.get(name)
        if value and (name != "init" or value != "default"):
            stored[name] = os.path.abspath(value)
    return stored


def open_run(options: TrainOptions) -> tuple[Path, list, list, list[str]]:
    """The pairs of an existing run folder; clears temporary files a killed run left behind."""
    run = Path(options.out)
    split = read_split(run / SPLIT_FILE)
    pairs, skipped = check_pairs(load_pairs(options.blurred_dir, options.sharp_dir, options.degrade), options.skip_bad)
    if not (run / CHECKPOINT).exists() and ((run / "history.csv").exists() or (run / BEST_WEIGHTS).exists()):
        raise UserError(f"{run / CHECKPOINT}: missing although the run has finished epochs; restore it or start a new run")
    for stale in run.glob(".*.tmp-*"):  # our atomic writes' temporaries; nobody writes this run now
        stale.unlink(missing_ok=True)
    train, val = (select(pairs, split[part], str(run / SPLIT_FILE)) for part in ("train", "val"))
    return run, train, val, skipped


def read_run_options(run: str | Path) -> TrainOptions:
    """The options a run was started with."""
    path = Path(run) / RUN_FILE
    try:
        return TrainOptions.from_dict(json.loads(path.read_text())["options"])
    except FileNotFoundError:
        raise UserError(f"{path}: not found; `resume` needs a run folder written by meddeblur train") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable run options ({exc}); start a new run") from None


def checkpoint_config(state: dict, run: Path, arch: str) -> ModelConfig:
    """The model config in the checkpoint ``state`` of ``run``, which must be an ``arch`` (what run.json says)."""
    try:
        config = ModelConfig.from_dict(state["config"])
    except (KeyError, ValueError, TypeError):
        raise UserError(
            f"{run / CHECKPOINT}: holds no valid model config; restore this run's checkpoint or start a new run"
        ) from None
    if config.arch != arch:
        raise UserError(
            f"{run / CHECKPOINT} holds a {config.arch} but {run / RUN_FILE} says {arch}: "
            "the two files come from different runs; restore this run's files or start a new run"
        )
    return config
