"""Training the blur estimator (:mod:`meddeblur.psf.estimate`) on synthetic blur of sharp images.

Samples are the restorer's training crops (:class:`meddeblur.data.sampling.ScaledCrops`: native images at random
down-scales, sources sometimes softened or JPEG-compressed, then the ``real`` degradation mix with noise and JPEG),
``CELL`` px square, reduced to their log power spectra and labelled by :func:`meddeblur.psf.estimate.label_of`.
A fixed set is drawn once and trained on for several epochs: drawing a sample (crop, blur, JPEG, spectrum) costs
~100× a training step of the small network, and the set is small enough to hold in memory (16 kB a sample).

Loss: cross-entropy over the families plus the weighted L1 error of the true family's parameters (log sizes,
doubled-angle pairs). Validation samples come from the validation images, drawn with another seed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from meddeblur.data.pairs import read_split, select, sharp_only
from meddeblur.data.sampling import ScaledCrops
from meddeblur.degradation.spec import parse_spec
from meddeblur.psf.estimate import CELL, label_of
from meddeblur.psf.estimator_net import FAMILIES, LAYOUT, BlurEstimatorNet
from meddeblur.psf.spectrum import log_power_spectrum

__all__ = ["EstimatorSamples", "draw_samples", "EstimatorOptions", "train_estimator", "estimation_scores"]


class EstimatorSamples(Dataset):
    """(spectrum (W, W), family index, parameter targets (8,), their weights (8,), family name) per sample of ``crops``."""

    def __init__(self, crops: ScaledCrops) -> None:
        self.crops = crops

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, str]:
        blurred, _, record, _ = self.crops.draw(index)
        family, values, weights = label_of(record.family, record.params, record.kernel)
        return log_power_spectrum(blurred), family, values, weights, record.family


def draw_samples(
    sharp_dir: str | Path, names: list[str], count: int, seed: int, workers: int = 2, degrade: str = "real"
) -> dict[str, Any]:
    """``count`` labelled samples from the images ``names`` of ``sharp_dir``: tensors ``spectra``, ``family``, ``values``,
    ``weights`` and the list ``source`` (the degradation family each came from)."""
    pairs = select(sharp_only(sharp_dir), names, "split")
    crops = ScaledCrops(pairs, CELL, (1.0, 4.0), parse_spec(degrade), seed=seed, samples=count, soften=0.3, compress=0.2)
    loader = DataLoader(EstimatorSamples(crops), batch_size=64, num_workers=workers, collate_fn=_collate)
    parts = list(loader)
    return {
        "spectra": torch.cat([p[0] for p in parts]),
        "family": torch.cat([p[1] for p in parts]),
        "values": torch.cat([p[2] for p in parts]),
        "weights": torch.cat([p[3] for p in parts]),
        "source": [s for p in parts for s in p[4]],
    }


def _collate(batch: list) -> tuple:
    spectra, family, values, weights, source = zip(*batch)
    return (
        torch.from_numpy(np.stack(spectra)),
        torch.tensor(family),
        torch.from_numpy(np.stack(values)),
        torch.from_numpy(np.stack(weights)),
        list(source),
    )


def _loss(outputs: torch.Tensor, family: torch.Tensor, values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    classify = F.cross_entropy(outputs[:, LAYOUT["logits"]], family)
    regress = (weights * (outputs[:, 4:] - values).abs()).sum(dim=1).mean()
    return classify + regress


@torch.no_grad()
def estimation_scores(network: BlurEstimatorNet, samples: dict[str, Any]) -> dict[str, Any]:
    """Family accuracy and, per true family, the median relative size error (σ, radius, length) on ``samples``."""
    network.eval()
    outputs = torch.cat([network(chunk[:, None]) for chunk in samples["spectra"].split(256)])
    predicted = outputs[:, LAYOUT["logits"]].argmax(dim=1)
    scores: dict[str, Any] = {
        "samples": len(predicted),
        "family_accuracy": round(float((predicted == samples["family"]).float().mean()), 4),
        "per_source": {},
    }
    size_index = {1: 4, 2: 8, 3: 9}  # the output holding log σ_major / log radius / log length
    for source in sorted(set(samples["source"])):
        rows = torch.tensor([s == source for s in samples["source"]])
        family = samples["family"][rows]
        entry = {"samples": int(rows.sum()), "family_accuracy": round(float((predicted[rows] == family).float().mean()), 4)}
        index = size_index.get(int(family[0]))
        if index is not None:
            truth = samples["values"][rows][:, index - 4].exp()
            guess = outputs[rows][:, index].exp()
            entry["median_relative_size_error"] = round(float(((guess - truth).abs() / truth).median()), 4)
        scores["per_source"][source] = entry
    return scores


@dataclass(frozen=True)
class EstimatorOptions:
    """How long and how hard to train: samples drawn, epochs over them, learning rate, batch and a time budget."""

    samples: int = 24000
    val_samples: int = 1500
    epochs: int = 30
    lr: float = 2e-3
    batch: int = 128
    max_minutes: float = 30.0
    seed: int = 0
    workers: int = 2
    init: Path | None = None  # continue from these weights (a committed stage), else start from scratch
    samples_cache: Path | None = None  # drawn samples kept here (never committed) and reused by a run with the same draw


def _samples(sharp_dir: str | Path, split: dict[str, list[str]], options: EstimatorOptions) -> tuple[dict, dict]:
    """(train, val) samples: drawn, or read back from ``options.samples_cache`` when it holds this very draw."""
    key = {
        "sharp_dir": str(Path(sharp_dir).resolve()),
        "train": split["train"],
        "val": split["val"],
        "samples": options.samples,
        "val_samples": options.val_samples,
        "seed": options.seed,
    }
    cache = options.samples_cache
    if cache is not None and cache.is_file():
        stored = torch.load(cache, weights_only=True)
        if stored.get("key") == key:
            return stored["train"], stored["val"]
    train = draw_samples(sharp_dir, split["train"], options.samples, options.seed, options.workers)
    val = draw_samples(sharp_dir, split["val"], options.val_samples, options.seed + 1_000_003, options.workers)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "train": train, "val": val}, cache.with_suffix(".tmp"))
        cache.with_suffix(".tmp").replace(cache)
    return train, val


def train_estimator(
    sharp_dir: str | Path,
    split_file: str | Path,
    out: str | Path,
    options: EstimatorOptions = EstimatorOptions(),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Draw samples from the train/val images of ``split_file``, train, write ``out`` (.safetensors + .json); returns the record."""
    from safetensors.torch import save_file

    started = time.perf_counter()
    train, val = _samples(sharp_dir, read_split(split_file), options)
    log(f"{options.samples} + {options.val_samples} samples ready in {time.perf_counter() - started:.0f} s")
    torch.manual_seed(options.seed)
    network = BlurEstimatorNet()
    if options.init is not None:
        from safetensors.torch import load_file

        network.load_state_dict(load_file(str(options.init)))
        log(f"from {options.init}: val family accuracy {estimation_scores(network, val)['family_accuracy']:.3f}")
    optimizer = torch.optim.AdamW(network.parameters(), lr=options.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(options.samples / options.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, options.lr, total_steps=options.epochs * steps_per_epoch)
    history = []
    for epoch in range(options.epochs):
        network.train()
        order = torch.randperm(options.samples, generator=torch.Generator().manual_seed(options.seed + epoch))
        total = 0.0
        for start in range(0, options.samples, options.batch):
            rows = order[start : start + options.batch]
            loss = _loss(
                network(train["spectra"][rows][:, None]), train["family"][rows], train["values"][rows], train["weights"][rows]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(rows)
        scores = estimation_scores(network, val)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": round(total / options.samples, 4),
                "val_family_accuracy": scores["family_accuracy"],
            }
        )
        log(f"epoch {epoch + 1}: loss {total / options.samples:.4f}, val family accuracy {scores['family_accuracy']:.3f}")
        if (time.perf_counter() - started) / 60 > options.max_minutes:
            log(f"stopping: the {options.max_minutes}-minute budget is spent")
            break
    scores = estimation_scores(network, val)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(out))
    record = {
        "families": list(FAMILIES),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in options.__dict__.items()},
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "history": history,
        "validation": scores,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return record
