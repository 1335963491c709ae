"""The training loop: the reference schedule (Adam, early stopping, LR plateau) or a step-based cosine recipe.

The recipes themselves (what ``meddeblur train`` does by default, and ``--recipe reference``) are in
:mod:`meddeblur.training.recipes`; the step-level control of the cosine recipe in :mod:`meddeblur.training.schedule`;
its training distribution in :mod:`meddeblur.data.sampling`; the run folder and its crash safety in
:mod:`meddeblur.training.runs`. A loss that turns NaN/Inf stops the run before it can reach the weights or the
checkpoint. Under torchrun (:mod:`meddeblur.training.distributed`) every process runs this loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from meddeblur import __version__
from meddeblur.data.pairs import EVAL_DEGRADE_SEED, PairDataset, input_scores
from meddeblur.data.sampling import EpochSamples, ScaledCrops
from meddeblur.degradation.spec import parse_spec
from meddeblur.device import pick_device
from meddeblur.errors import UserError
from meddeblur.losses import DeblurLoss, build_loss
from meddeblur.models import (
    BEST_WEIGHTS,
    PSF_ARCHITECTURES,
    ModelConfig,
    build_model,
    count_parameters,
    grow_model,
    grown_config,
    lift_to_psf,
    load_model,
)
from meddeblur.models.psf_nafnet import parameter_groups
from meddeblur.training import distributed as ddp
from meddeblur.training.epoch import Diverged, EarlyStopping, drops_last, epoch_loader, needs_drop_single, run_epoch
from meddeblur.training.finetune import end_lines, kept_start_line, publish_start
from meddeblur.training.held_out import held_out_line
from meddeblur.training.options import TrainOptions
from meddeblur.training.runs import (
    CHECKPOINT,
    RunLog,
    checkpoint_config,
    load_checkpoint,
    open_run,
    prepare_run,
    publish,
    save_checkpoint,
)
from meddeblur.training.schedule import TrainControl

if TYPE_CHECKING:
    from meddeblur.degradation.spec import DegradeSpec

__all__ = ["train", "run_epoch", "init_weights", "Diverged", "EarlyStopping"]


def init_weights(init: str, arch: str | None = None, width: int | None = None) -> tuple[dict, ModelConfig, Path]:
    """(state dict, config, file) of ``init``: "default" (the shipped model), a .safetensors file or a run folder.

    The architecture comes from the weights' own config; an ``arch`` or ``width`` that differs is a UserError,
    except ``arch="psf-nafnet"`` from ``nafnet`` weights: they are lifted (:func:`meddeblur.models.lift_to_psf`).
    """
    network, config, path = load_model(None if init == "default" else init)
    state = network.state_dict()
    if arch in PSF_ARCHITECTURES and config.arch == "nafnet":
        state, config = lift_to_psf(state, config)  # starts as exactly the blind model, then learns to use the PSF
    for name, wanted in (("arch", arch), ("width", width)):
        if wanted is not None and wanted != getattr(config, name):
            raise UserError(
                f"{name}={wanted} conflicts with init={init} ({path.name}: {config.arch} width {config.width}); "
                f"drop `{name}`, the architecture comes from the weights"
            )
    return state, config, path


def _starting_point(options: TrainOptions) -> tuple[tuple[dict, ModelConfig, Path] | None, ModelConfig]:
    """(``init``'s (state dict, config, file) or None, the config of the network to train)."""
    initial = init_weights(options.init, options.arch, options.width) if options.init else None
    return initial, grown_config(initial[1], **options.blocks) if initial else ModelConfig(
        arch=options.arch, width=options.width, **options.blocks
    )


def _layout(config: ModelConfig) -> str:
    return f"blocks {','.join(map(str, config.enc_blocks or ()))} | {config.middle_blocks} | {','.join(map(str, config.dec_blocks or ()))}"


def _horizon(options: TrainOptions) -> str:
    parts = ([f"{options.steps} steps"] if options.steps else []) + (
        [f"{options.max_minutes:g} minutes"] if options.max_minutes else []
    )
    return " or ".join(parts)


def _datasets(options: TrainOptions, spec: DegradeSpec | None, train_pairs: list, val_pairs: list) -> tuple:
    """(train, val) datasets: random-scale native crops for sharp-only data with ``scales``, else :class:`PairDataset`."""
    epoch_samples = options.epoch_steps * options.batch if options.epoch_steps else None
    with_psf = options.arch in PSF_ARCHITECTURES
    if options.scales and spec is not None:
        crop = cast(int, options.crop)  # given with scales (the recipes set both)
        return (
            ScaledCrops(
                train_pairs,
                crop,
                options.scales,
                spec,
                options.seed,
                epoch_samples,
                options.soften,
                options.compress,
                psf=with_psf,
                perturb=options.perturb_psf,
                estimated=options.estimated_psf,
            ),
            ScaledCrops(val_pairs, crop * 2, (1.0, 1.0), spec, options.seed, fixed=True, psf=with_psf),
        )
    if with_psf:
        raise UserError(
            f"arch={options.arch} is told each image's blur: train it on sharp images with a degradation "
            "(sharp folder with `degrade`, random-scale crops), not on blurred/sharp pairs or resized images"
        )
    train_set: PairDataset | EpochSamples = PairDataset(
        train_pairs, size=options.size, crop=options.crop, augment=True, seed=options.seed, degrade=spec
    )
    if epoch_samples:
        train_set = EpochSamples(train_set, epoch_samples)
    return train_set, PairDataset(
        val_pairs, size=options.size, crop=options.crop, augment=False, seed=options.seed, degrade=spec, fixed=True
    )


# --------------------------------------------------------------------------- training


def train(options: TrainOptions, resume: bool = False) -> Path:
    """Train (or resume) a run and return its folder. The best weights are ``RUN/best.safetensors``.

    Under torchrun each process calls this; they join one process group for the run.
    """
    device = pick_device(options.device)
    if options.threads:
        torch.set_num_threads(options.threads)
    spec = parse_spec(options.degrade) if options.degrade else None
    loss_fn = build_loss(options.loss, options.vgg19_weights, options.perceptual)  # fails before any work if VGG is missing
    with ddp.process_group(device) as device:
        # One set of options for all processes (a default --out names rank 0's clock time).
        return _train(ddp.broadcast(options), resume, device, spec, loss_fn)


def _train(options: TrainOptions, resume: bool, device: torch.device, spec: DegradeSpec | None, loss_fn: DeblurLoss) -> Path:
    ddp.per_process_batch(options.batch)  # an uneven split is an error before anything is written
    start = None if resume else _starting_point(options)  # bad `init` or blocks fail before a run folder exists
    run, train_pairs, val_pairs, skipped = ddp.main_first(lambda: (open_run if resume else prepare_run)(options))
    # Rank 0 decides whether there is a checkpoint: every process must then load it, or all start afresh.
    has_checkpoint = ddp.broadcast(resume and (run / CHECKPOINT).exists())
    state = load_checkpoint(run / CHECKPOINT, check_best=True) if has_checkpoint else None
    log = RunLog(run / "train.log")
    initial, config = (
        (None, checkpoint_config(state, run, options.arch)) if state is not None else start or _starting_point(options)
    )
    precision = ddp.choose_precision(device, options.amp, options.channels_last)
    torch.manual_seed(options.seed)
    net = (grow_model(initial[0], initial[1], config) if initial else build_model(config)).to(device)
    if initial is not None:
        grown = (
            f", grown from {_layout(initial[1])} to {_layout(config)} (new blocks start as the identity)"
            if config != initial[1]
            else ""
        )
        log(f"starting from the weights of {initial[2]} (init={options.init}){grown}")
    if precision.channels_last:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit Module.to(memory_format=)
    loss_fn = loss_fn.to(device)
    groups = parameter_groups(net) if config.arch in PSF_ARCHITECTURES else net.parameters()
    if options.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            groups, lr=options.lr, betas=(0.9, 0.9), weight_decay=options.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(groups, lr=options.lr, eps=1e-7)  # Keras' Adam epsilon
    control = None
    spent_column = "cpu_seconds" if options.budget_clock == "cpu" else "seconds"
    if options.schedule == "cosine":
        control = TrainControl(
            net,
            optimizer,
            options.lr,
            options.steps,
            options.max_minutes * 60 if options.max_minutes else None,
            options.warmup,
            options.clip,
            options.ema,
            progress_bar=ddp.is_main(),
            clock=time.process_time if options.budget_clock == "cpu" else time.perf_counter,
        )
    # Keras ReduceLROnPlateau semantics: absolute min_delta 1e-4, and it cuts once `patience` bad
    # epochs have passed where PyTorch waits for one more, hence patience - 1.
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=options.lr_factor, patience=options.lr_patience - 1, threshold=1e-4, threshold_mode="abs"
    )
    scaler = ddp.grad_scaler(device, precision)
    stopper = EarlyStopping(options.patience)
    history: list[dict] = []
    first_epoch = 1
    if state is not None:
        try:
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError):
            raise UserError(
                f"{run / CHECKPOINT}: does not fit the run's model ({config.arch} width {config.width}); "
                "it belongs to another run — restore this run's checkpoint or start a new run"
            ) from None
        if control is not None:
            control.load_state_dict(state["control"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        stopper = EarlyStopping(**state["early_stop"])
        history = list(state["history"])
        torch.set_rng_state(state["rng"])
        first_epoch = int(state["epoch"]) + 1
        # Files written after the checkpoint by a killed run may be ahead of it or missing: redo them.
        current_best = stopper.best_epoch if stopper.best_epoch == first_epoch - 1 else None
        ddp.main_first(lambda: publish(run, control.evaluated() if control is not None else net, config, history, current_best))
        log(f"resuming {run} after epoch {first_epoch - 1} (best val loss {stopper.best:.5f} at epoch {stopper.best_epoch})")
        if stopper.stopped:
            log("this run had already stopped early; nothing to do")
            return run
    elif resume:
        log(f"resuming {run}: no checkpoint yet (stopped during epoch 1), starting at epoch 1")

    trainable, _ = count_parameters(net)
    protocol = (
        f"resized to {options.size}×{options.size}"
        if options.size
        else f"random {options.crop}×{options.crop} crops at native resolution"
    )
    if options.scales and spec is not None:
        protocol = (
            f"{options.crop}×{options.crop} crops at a down-scale of {options.scales[0]:g}–{options.scales[1]:g}×, "
            f"source softened p={options.soften:g}, compressed p={options.compress:g}"
        )
    log(
        f"meddeblur {__version__} (recipe {options.recipe}): {config.arch} width {config.width} ({trainable:,} parameters) on {device}, "
        f"{torch.get_num_threads()} thread(s); {len(train_pairs)} train / {len(val_pairs)} val images, {protocol}; batch {options.batch}, "
        f"{'AdamW' if options.optimizer == 'adamw' else 'Adam'} lr {options.lr:g}, "
        + (
            f"cosine over {_horizon(options)}, warm-up {options.warmup}, clip {options.clip}, EMA {options.ema}"
            if control
            else "LR plateau"
        )
    )
    if ddp.world_size() > 1:
        log(ddp.describe(device, options.batch))
    if device.type == "cuda":
        log(precision.describe())
    log(loss_fn.describe())
    if skipped:
        log(f"skip_bad=True: {len(skipped)} bad image(s) left out: " + "; ".join(skipped))
    if spec is not None:
        log(
            f"blurred inputs synthesised from the sharp images with '{spec}': fresh for every training epoch, "
            f"fixed (seed {EVAL_DEGRADE_SEED}) for validation and test"
        )
    train_set, val_set = _datasets(options, spec, train_pairs, val_pairs)
    model = ddp.with_precision(ddp.wrap_model(net, device), precision)  # what trains: DDP under torchrun
    # No DDP: processes may hold different numbers of val batches. The EMA, when there is one, is what is scored and saved.
    scored = control.evaluated() if control is not None else net
    evaluator = ddp.with_precision(scored, precision)
    step_options: dict[str, Any] = {"scaler": scaler} if scaler is not None else {}
    if control is not None:
        step_options["control"] = control
    baseline = input_scores(val_set)
    # What the starting weights score, so that every later line (and the summary) shows whether training helps.
    start_scores = state.get("start_scores") if state is not None else None
    if state is None and initial is not None:
        start_scores = run_epoch(
            evaluator, loss_fn, epoch_loader(val_set, options.batch, options.seed, 0, False), device, None, "start val"
        )
    start_note = f", start {start_scores['psnr']:.2f}" if start_scores else ""
    kept_at = (
        f", sharp inputs kept at {start_scores['sharp_psnr']:.2f} dB" if start_scores and "sharp_psnr" in start_scores else ""
    )
    log(
        f"validation: {len(val_set)} fixed samples, input PSNR {baseline['psnr']:.2f} dB (degraded ones)"
        + (f"; starting weights {start_scores['psnr']:.2f} dB{kept_at}" if start_scores else "")
    )

    for epoch in range(first_epoch, options.epochs + 1):
        # Rank 0's clock decides for all: processes that disagree would wait for each other forever.
        spent = ddp.broadcast(sum(float(r[spent_column] or 0) for r in history) / 60)
        if (options.max_minutes is not None and spent >= options.max_minutes) or (control is not None and control.finished()):
            used = [f"{spent:.1f} of {options.max_minutes:g} minutes"] if options.max_minutes is not None else []
            used += [f"{control.step} of {options.steps} steps"] if control and options.steps else []
            log(f"budget used after epoch {epoch - 1}: {', '.join(used)}; stopping")
            break
        started, cpu_started = time.perf_counter(), time.process_time()
        desc = f"epoch {epoch}/{options.epochs}"
        kept = f"last good checkpoint {run / CHECKPOINT} kept" if state is not None or epoch > 1 else "no checkpoint written yet"
        try:
            loader = epoch_loader(train_set, options.batch, options.seed, epoch, True, needs_drop_single(config, options))
            train_stats = run_epoch(model, loss_fn, loader, device, optimizer, desc, **step_options)
        except Diverged as error:
            raise UserError(
                f"training diverged at epoch {epoch} step {error.step} (loss {error.loss}); {kept} — lower `lr` or check the data"
            ) from None
        if not ddp.synchronises_batchnorm(device):
            ddp.average_batchnorm_stats(net)
        val_stats = run_epoch(
            evaluator, loss_fn, epoch_loader(val_set, options.batch, options.seed, epoch, False), device, None, desc + " val"
        )
        finite = all(bool(torch.isfinite(t).all()) for t in net.state_dict().values() if t.is_floating_point())
        if not (math.isfinite(val_stats["loss"]) and ddp.all_agree(finite)):
            raise UserError(
                f"training diverged at epoch {epoch} (val loss {val_stats['loss']}); {kept} — lower `lr` or check the data"
            )
        lr = optimizer.param_groups[0]["lr"]
        if control is None:
            scheduler.step(val_stats["loss"])
        batches = (
            len(train_set) // options.batch
            if needs_drop_single(config, options) and drops_last(len(train_set), options.batch)
            else math.ceil(len(train_set) / options.batch)
        )
        steps = (int(history[-1]["steps"] or 0) if history else 0) + batches if control is None else control.step
        row = {
            "epoch": epoch,
            "steps": steps,
            "lr": lr,
            **{f"train_{k}": train_stats[k] for k in ("loss", "psnr", "ssim")},
            **{f"val_{k}": val_stats[k] for k in ("loss", "psnr", "ssim")},
            "val_input_psnr": baseline["psnr"],
            "val_sharp_psnr": val_stats.get("sharp_psnr", math.nan),
            "seconds": round(time.perf_counter() - started, 3),
            "cpu_seconds": round(time.process_time() - cpu_started, 3),
        }
        history.append(row)
        if control is not None:  # the budget counts validation and checkpoints too, as --max-minutes does; rank 0's count
            control.seconds = ddp.broadcast(sum(float(r[spent_column] or 0) for r in history))
        improved = stopper.update(val_stats["loss"], epoch)
        if ddp.is_main():
            # The checkpoint commits the epoch; everything after it is rebuilt from it on --resume.
            save_checkpoint(
                run,
                {
                    "epoch": epoch,
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "early_stop": asdict(stopper),
                    "history": history,
                    "rng": torch.get_rng_state(),
                    "config": asdict(config),
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "control": control.state_dict() if control is not None else {},
                    "start_scores": start_scores,
                },
            )
            publish(run, scored, config, history, epoch if improved else None)
        sharp = f", sharp inputs kept at {val_stats['sharp_psnr']:.2f} dB" if "sharp_psnr" in val_stats else ""
        log(
            f"epoch {epoch}: step {steps}, loss {train_stats['loss']:.4g}/{val_stats['loss']:.4g} (train/val), "
            f"val PSNR {val_stats['psnr']:.2f} dB (input {baseline['psnr']:.2f}{start_note}){sharp}, "
            f"val SSIM {val_stats['ssim']:.4f}, lr {lr:g}, {row['seconds']:.1f} s" + (" — best so far" if improved else "")
        )
        if stopper.stopped:
            log(f"early stopping: no val-loss improvement for {options.patience} epochs; best epoch {stopper.best_epoch} kept")
            break
    if control is not None:
        control.close()
    what = "mix" if options.scales and spec is not None else "set"
    best_row = next((r for r in history if int(r["epoch"]) == stopper.best_epoch), None)
    if kept_start_line(start_scores, best_row, what) is not None and ddp.is_main():
        initial, _ = _starting_point(options)  # never a step back: the starting weights (grown as trained) are the best
        assert initial is not None and start_scores is not None  # start_scores exist only for a run with `init`
        publish_start(run, grow_model(initial[0], initial[1], config), config, start_scores)
    for line in end_lines(
        run, history, stopper.best_epoch, stopper.best, baseline, start_scores, what, options.warmup, options.max_minutes
    ):
        log(line)
    if spec is None and options.blurred_dir and ddp.is_main() and (run / BEST_WEIGHTS).is_file():
        log(
            held_out_line(
                run, options.blurred_dir, options.sharp_dir, run / BEST_WEIGHTS, options.init, options.size, device.type
            )
        )
    ddp.barrier()  # nobody reports success before rank 0's last files are in place
    return run
