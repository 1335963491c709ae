"""Training data: blurred/sharp pairs by name, or sharp images degraded on the fly; the seeded split, augmentation."""

from __future__ import annotations

import json
import math
import os
import re
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from meddeblur.degradation.pipeline import Degradation, degradation_seed, degrade
from meddeblur.degradation.resampling import resize_area
from meddeblur.degradation.spec import DegradeSpec
from meddeblur.errors import UserError
from meddeblur.files import atomic_write
from meddeblur.io.decode import read_image, read_rgb
from meddeblur.io.listing import list_images
from meddeblur.metrics import psnr, ssim

BLURRED_SUFFIXES = ("_blurry", "_blurred", "_blur", "_zamucena")
SHARP_SUFFIXES = ("_sharp", "_ostra", "_gt")
SPLIT_FILE = "split.json"
SPLIT_FRACTIONS = (0.7, 0.2, 0.1)
#: Validation/test images made from sharp ones use this seed, whatever the run's --seed, so
#: every run (and the benchmark) scores on identical degraded images.
EVAL_DEGRADE_SEED = 20_261_123


@dataclass(frozen=True)
class Pair:
    """One example: the key both file names reduce to, and the two files.

    ``blurred`` is None for sharp-only data, whose blurred input is synthesised.
    """

    name: str
    blurred: Path | None
    sharp: Path


def pair_key(path: Path, suffixes: tuple[str, ...]) -> str:
    """File stem with one trailing role suffix removed (case-insensitive)."""
    stem = path.stem
    pattern = "(" + "|".join(re.escape(s) for s in sorted(suffixes, key=len, reverse=True)) + ")$"
    return re.sub(pattern, "", stem, flags=re.IGNORECASE)


def _keyed(folder: Path, suffixes: tuple[str, ...]) -> tuple[dict[str, Path], list[str]]:
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in list_images(folder):
        groups[pair_key(path, suffixes)].append(path)
    ambiguous = [" / ".join(p.name for p in paths) for paths in groups.values() if len(paths) > 1]
    return {k: v[0] for k, v in groups.items() if len(v) == 1}, ambiguous


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def pair_images(blurred_dir: str | Path, sharp_dir: str | Path) -> list[Pair]:
    """Match ``blurred_dir`` and ``sharp_dir`` files by name after stripping role suffixes.

    Any unmatched or ambiguous name is an error listing all of them (the reference
    only warned, which silently shrank the data set).
    """
    blurred_dir, sharp_dir = Path(blurred_dir), Path(sharp_dir)
    blurred, blurred_ambiguous = _keyed(blurred_dir, BLURRED_SUFFIXES)
    sharp, sharp_ambiguous = _keyed(sharp_dir, SHARP_SUFFIXES)
    problems = []
    if blurred_ambiguous:
        problems.append(f"ambiguous in {blurred_dir}: {_listing(blurred_ambiguous)}")
    if sharp_ambiguous:
        problems.append(f"ambiguous in {sharp_dir}: {_listing(sharp_ambiguous)}")
    only_blurred = sorted(blurred[k].name for k in blurred.keys() - sharp.keys())
    only_sharp = sorted(sharp[k].name for k in sharp.keys() - blurred.keys())
    if only_blurred:
        problems.append(f"no sharp partner in {sharp_dir} for {_listing(only_blurred)}")
    if only_sharp:
        problems.append(f"no blurred partner in {blurred_dir} for {_listing(only_sharp)}")
    if problems:
        raise UserError("cannot pair images: " + "; ".join(problems) + " — rename or remove these files")
    return [Pair(k, blurred[k], sharp[k]) for k in sorted(blurred)]


def sharp_only(sharp_dir: str | Path) -> list[Pair]:
    """Sharp-only data: one :class:`Pair` per image (``blurred`` None), named by stem."""
    pairs = [Pair(pair_key(path, SHARP_SUFFIXES), None, path) for path in list_images(sharp_dir)]
    names = [p.name for p in pairs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(
            f"ambiguous in {sharp_dir}: several files named {_listing(duplicates)} (other extension or suffix); rename or remove them"
        )
    return pairs


def load_pairs(blurred_dir: str | Path | None, sharp_dir: str | Path, degrade: str | None) -> list[Pair]:
    """Sharp-only examples when a degradation makes the inputs, else blurred/sharp pairs by name."""
    if degrade:
        return sharp_only(sharp_dir)
    assert blurred_dir is not None  # without a degradation the data comes in pairs
    return pair_images(blurred_dir, sharp_dir)


def fixed_degradation(sharp: torch.Tensor, spec: DegradeSpec, name: str) -> tuple[torch.Tensor, Degradation]:
    """The validation/test degradation of image ``name``: (3, H, W) → (blurred (3, H, W), what was done).

    Seeded by the name and :data:`EVAL_DEGRADE_SEED` only, so it is identical across runs.
    """
    generator = torch.Generator().manual_seed(degradation_seed(EVAL_DEGRADE_SEED, zlib.crc32(os.fsencode(name))))
    blurred, done = degrade(sharp, spec, generator)
    return blurred, done[0]


def check_pairs(pairs: list[Pair], skip_bad: bool = False) -> tuple[list[Pair], list[str]]:
    """Decode every image before any work starts: (usable pairs, one message per bad file or mismatch).

    Without ``skip_bad`` any problem is one error listing every bad file at once;
    with it the bad pairs are dropped and their messages returned for the log.
    """
    problems, kept = [], []
    for pair in pairs:
        shapes, bad = [], []
        for path in (pair.blurred, pair.sharp) if pair.blurred is not None else (pair.sharp,):
            try:
                shapes.append(read_image(path).rgb.shape)
            except UserError as error:
                bad.append(str(error).split(";")[0])
        if not bad and len(shapes) == 2 and shapes[0] != shapes[1]:
            bad.append(
                f"{pair.blurred}: {shapes[0][1]}×{shapes[0][0]} but its sharp partner {pair.sharp.name} is {shapes[1][1]}×{shapes[1][0]}"
            )
        problems.extend(bad)
        if not bad:
            kept.append(pair)
    if problems and not skip_bad:
        raise UserError(
            f"{len(problems)} bad image(s) in the data: "
            + "; ".join(problems[:8])
            + (f"; … ({len(problems) - 8} more)" if len(problems) > 8 else "")
            + " — fix or remove them, or pass skip_bad=True"
        )
    return kept, problems


def data_dirs(
    data: str | Path | None, blurred: str | Path | None, sharp: str | Path | None, degrade: str | None = None
) -> tuple[Path | None, Path]:
    """Resolve ``--data DIR`` (with ``blurred/`` and ``sharp/``) or ``--blurred``/``--sharp``.

    With ``degrade`` only sharp images are needed: ``--sharp DIR``, or ``--data DIR``
    meaning ``DIR/sharp`` when that exists, else ``DIR`` itself. Returns (blurred, sharp).
    """
    if data is not None and (blurred is not None or sharp is not None):
        raise UserError("give either data=DIR or blurred=DIR with sharp=DIR, not both")
    if data is not None and not Path(data).is_dir():
        raise UserError(
            f"{data}: no such folder; `data` needs a folder holding blurred/ and sharp/ (or sharp images with `degrade`)"
        )
    if degrade:
        if blurred is not None:
            raise UserError(f"degrade={degrade} makes the blurred inputs from sharp images; drop blurred={blurred}")
        if data is not None:
            return None, Path(data) / "sharp" if (Path(data) / "sharp").is_dir() else Path(data)
        if sharp is None:
            raise UserError("no data given: pass sharp=DIR (sharp images to degrade) or data=DIR")
        return None, Path(sharp)
    if data is not None:
        return Path(data) / "blurred", Path(data) / "sharp"
    if blurred is None or sharp is None:
        raise UserError(
            "no data given: pass data=DIR (with blurred/ and sharp/), both blurred=DIR and sharp=DIR, or sharp=DIR with degrade=SPEC"
        )
    return Path(blurred), Path(sharp)


def split_names(
    names: list[str], seed: int = 42, fractions: tuple[float, float, float] = SPLIT_FRACTIONS
) -> dict[str, list[str]]:
    """Shuffle ``names`` with ``seed`` and cut 70/20/10 into train/val/test (each non-empty)."""
    if len(names) < 3:
        raise UserError(f"only {len(names)} image pair(s): need at least 3 for a train/val/test split")
    order = np.random.default_rng(seed).permutation(sorted(names))
    n_val = max(1, round(fractions[1] * len(names)))
    n_test = max(1, round(fractions[2] * len(names)))
    n_train = len(names) - n_val - n_test
    return {
        "train": sorted(order[:n_train].tolist()),
        "val": sorted(order[n_train : n_train + n_val].tolist()),
        "test": sorted(order[n_train + n_val :].tolist()),
    }


def write_split(path: str | Path, split: dict[str, list[str]], seed: int) -> None:
    """Write the split (and the seed that made it) as JSON, atomically."""
    with atomic_write(path, "w") as fh:
        json.dump({"seed": seed, **split}, fh, indent=2)


def read_split(path: str | Path) -> dict[str, list[str]]:
    """Read a split written by :func:`write_split`."""
    try:
        data = json.loads(Path(path).read_text())
        return {k: list(data[k]) for k in ("train", "val", "test")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: unreadable split file ({exc}); re-run training or use split=all") from None


def select(pairs: list[Pair], names: list[str], source: str) -> list[Pair]:
    """The pairs named in ``names``; every name must be present."""
    by_name = {p.name: p for p in pairs}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(
            f"{source}: {len(missing)} split image(s) not in the data ({_listing(missing)}); point at the training data or use split=all"
        )
    return [by_name[n] for n in names]


def augment_pair(blurred: torch.Tensor, sharp: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Same random h-flip, v-flip and rot90 (k ∈ 0..3) on both (C, H, W) tensors."""

    def coin() -> bool:
        return bool(torch.randint(0, 2, (1,), generator=generator))

    if coin():
        blurred, sharp = blurred.flip(-1), sharp.flip(-1)
    if coin():
        blurred, sharp = blurred.flip(-2), sharp.flip(-2)
    k = int(torch.randint(0, 4, (1,), generator=generator))
    if k:
        blurred, sharp = torch.rot90(blurred, k, (-2, -1)), torch.rot90(sharp, k, (-2, -1))
    return blurred.contiguous(), sharp.contiguous()


class _Samples(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def pair_samples(pairs: list[Pair], size: int | None, spec: DegradeSpec | None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, blurred, sharp) as (H, W, 3) float arrays, as evaluation sees them: resized to ``size``×``size`` by area
    first (None: as stored), then degraded with ``spec`` (sharp-only data; fixed per image, :func:`fixed_degradation`)."""
    for pair in pairs:
        sharp = read_rgb(pair.sharp)
        blurred = read_rgb(pair.blurred) if pair.blurred is not None else None
        if size:
            sharp = resize_area(sharp, (size, size))
            blurred = resize_area(blurred, (size, size)) if blurred is not None else None
        if blurred is None:
            assert spec is not None  # sharp-only data comes with its degradation
            made, _ = fixed_degradation(torch.from_numpy(np.ascontiguousarray(sharp.transpose(2, 0, 1))), spec, pair.name)
            blurred = made.numpy().transpose(1, 2, 0)
        yield pair.name, blurred, sharp


def input_scores(dataset: _Samples) -> dict[str, float]:
    """Mean PSNR / SSIM of a dataset's degraded inputs against their targets: the level a model must beat.

    Samples whose input equals the target (an un-blurred share) are left out: their PSNR is infinite.
    """
    blurred, sharp = (torch.stack(t) for t in zip(*(dataset[i] for i in range(len(dataset)))))
    blurred = blurred[:, : sharp.shape[1]]  # a PSF model's input also holds its kernel canvas
    degraded = ~(blurred == sharp).flatten(1).all(1)
    if not degraded.any():
        return {"psnr": math.nan, "ssim": math.nan}
    blurred, sharp = blurred[degraded], sharp[degraded]
    return {"psnr": float(psnr(blurred, sharp).mean()), "ssim": float(ssim(blurred, sharp).mean())}


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


class PairDataset(Dataset):
    """(blurred, sharp) float tensors shaped (3, H, W) in [0, 1].

    ``size``: images resized to size×size (area interpolation when shrinking), the
    reference protocol. ``crop``: a random crop×crop window at native resolution
    (centre crop when ``augment`` is off). With ``degrade``, pairs have no blurred
    file: the sharp image (after resize/crop/augmentation) is degraded — afresh each
    epoch for training, or once and identically across runs when ``fixed`` (val/test).
    Randomness comes from ``seed``, the epoch (:meth:`set_epoch`) and the index only,
    so a resumed run sees exactly the samples an uninterrupted one would.
    """

    def __init__(
        self,
        pairs: list[Pair],
        size: int | None = 256,
        crop: int | None = None,
        augment: bool = False,
        seed: int = 0,
        degrade: DegradeSpec | None = None,
        fixed: bool = False,
    ) -> None:
        if (size is None) == (crop is None):
            raise ValueError("give exactly one of size or crop")
        if degrade is None and any(p.blurred is None for p in pairs):
            raise ValueError("sharp-only pairs need a degradation spec")
        self.pairs, self.size, self.crop, self.augment, self.seed = pairs, size, crop, augment, seed
        self.degrade, self.fixed = degrade, fixed
        self.epoch = 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index in self._cache:
            return self._cache[index]
        pair = self.pairs[index]
        sharp = read_rgb(pair.sharp)
        blurred = read_rgb(pair.blurred) if pair.blurred is not None else sharp
        if blurred.shape != sharp.shape:
            raise UserError(
                f"{pair.blurred}: size {blurred.shape[1]}×{blurred.shape[0]} differs from its sharp partner {pair.sharp.name} ({sharp.shape[1]}×{sharp.shape[0]}); fix the pair"
            )
        if self.size is None:
            if min(sharp.shape[:2]) < self.crop:
                raise UserError(
                    f"{pair.sharp}: image {sharp.shape[1]}×{sharp.shape[0]} is smaller than crop={self.crop}; lower `crop`"
                )
            return _to_tensor(blurred), _to_tensor(sharp)
        sharp_t = _to_tensor(resize_area(sharp, (self.size, self.size)))
        blurred_t = sharp_t if pair.blurred is None else _to_tensor(resize_area(blurred, (self.size, self.size)))
        if self.degrade is not None and pair.blurred is None and self.fixed:
            blurred_t = fixed_degradation(sharp_t, self.degrade, pair.name)[0]
        # Resized pairs are small: keep them decoded (and fixed degradations made) for the whole run.
        self._cache[index] = blurred_t, sharp_t
        return blurred_t, sharp_t

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        blurred, sharp = self._load(index)
        generator = torch.Generator().manual_seed(degradation_seed(self.seed, self.epoch, index))
        if self.crop is not None:
            height, width = blurred.shape[-2:]
            if self.augment:
                top = int(torch.randint(0, height - self.crop + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - self.crop + 1, (1,), generator=generator))
            else:
                top, left = (height - self.crop) // 2, (width - self.crop) // 2
            window = (..., slice(top, top + self.crop), slice(left, left + self.crop))
            blurred, sharp = blurred[window], sharp[window]
        if self.augment:
            blurred, sharp = augment_pair(blurred, sharp, generator)
        pair = self.pairs[index]
        if pair.blurred is None and not (self.fixed and self.size is not None):
            assert self.degrade is not None  # sharp-only pairs come with their degradation
            if self.fixed:
                blurred = fixed_degradation(sharp, self.degrade, pair.name)[0]
            else:
                blurred = degrade(sharp, self.degrade, generator)[0]
        return blurred, sharp
