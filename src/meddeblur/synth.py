"""``meddeblur synth``: a paired data set made by degrading sharp images."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from meddeblur import __version__
from meddeblur.data.pairs import check_pairs, sharp_only
from meddeblur.degradation.pipeline import degradation_seed, degrade
from meddeblur.degradation.resampling import resize_area
from meddeblur.degradation.spec import parse_spec
from meddeblur.errors import InvalidOption, UserError
from meddeblur.files import atomic_path, atomic_write, check_creatable_folder
from meddeblur.io.decode import read_rgb
from meddeblur.io.encode import write_image


def _check_targets(out: Path, names: list[str]) -> None:
    """Fail before writing anything if an output folder or file is in the way, rather than half-way."""
    for sub in ("blurred", "sharp", "kernels"):
        folder = out / sub
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{folder}: is a file where the {sub}/ output folder goes; remove it or choose another `out`")
        for name in names:
            target = folder / (f"{name}.npy" if sub == "kernels" else f"{name}.png")
            if target.is_dir():
                raise UserError(f"{target}: output is an existing folder; remove it or choose another `out`")
    if (out / "manifest.json").is_dir():
        raise UserError(f"{out / 'manifest.json'}: output is an existing folder; remove it or choose another `out`")
    check_creatable_folder(out, "`out`")


def synthesize(sharp_dir: str | Path, out: str | Path, spec: str, seed: int = 0, size: int | None = None) -> dict:
    """Write ``out/blurred``, ``out/sharp`` (PNG), ``out/kernels`` (.npy) and ``out/manifest.json``.

    Each image's draw is seeded by ``seed`` and its name, so one image's degradation does
    not depend on which other images are in the folder. Returns the manifest.
    """
    if size is not None and size < 16:
        raise InvalidOption(f"size={size}: must be at least 16 pixels", value=size, option="size")
    if seed < 0:
        raise InvalidOption(f"seed={seed}: must be 0 or a positive integer", value=seed, option="seed")
    parsed = parse_spec(spec)
    sharp_dir, out = Path(sharp_dir), Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: output is a file; pass a new folder as `out`")
    if not out.exists() and os.path.lexists(out):
        raise UserError(f"{out}: output is a broken symbolic link; pass a new folder as `out`")
    for folder, option in ((sharp_dir, "`sharp`"), (out, "`out`")):
        try:
            folder.resolve()
        except (OSError, RuntimeError):  # a symbolic link loop (RuntimeError before Python 3.13)
            raise UserError(f"{folder}: symbolic link loop; fix the link or give another {option} folder") from None
    try:
        inside = sharp_dir.resolve() in {(out / sub).resolve() for sub in ("", "sharp", "blurred", "kernels")}
    except (OSError, RuntimeError):
        raise UserError(f"{out}: a symbolic link loop inside the output folder; remove it or choose another `out`") from None
    if inside:
        raise UserError(f"{out}: would write into the input folder {sharp_dir}; choose another -o")
    pairs, _ = check_pairs(sharp_only(sharp_dir))
    _check_targets(out, [p.name for p in pairs])
    entries = []
    for pair in tqdm(pairs, desc="synthesising", unit="image", disable=None):
        sharp = read_rgb(pair.sharp)
        if size:
            sharp = resize_area(sharp, (size, size))
        # fsencode: the bytes of the name on disk, also for names that are not UTF-8 (identical otherwise).
        generator = torch.Generator().manual_seed(degradation_seed(seed, zlib.crc32(os.fsencode(pair.name))))
        blurred, done = degrade(torch.from_numpy(np.ascontiguousarray(sharp.transpose(2, 0, 1))), parsed, generator)
        write_image(out / "blurred" / f"{pair.name}.png", blurred.numpy().transpose(1, 2, 0))
        # Sharp images are re-encoded as PNG (lossless) so that pairs share one format and size.
        write_image(out / "sharp" / f"{pair.name}.png", sharp)
        with atomic_path(out / "kernels" / f"{pair.name}.npy") as tmp:
            np.save(tmp, done[0].kernel)
        entries.append(
            {
                "name": pair.name,
                "source": str(pair.sharp),
                "height": sharp.shape[0],
                "width": sharp.shape[1],
                "kernel": f"kernels/{pair.name}.npy",
                **done[0].to_json(),
            }
        )
    manifest = {"meddeblur": __version__, "spec": str(parsed), "seed": seed, "size": size, "images": entries}
    with atomic_write(out / "manifest.json", "w") as fh:
        json.dump(manifest, fh, indent=2)
    return manifest
