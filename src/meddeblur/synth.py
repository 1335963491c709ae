"""``meddeblur synth``: a paired data set made by degrading sharp images."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from meddeblur import __version__
from meddeblur.data import check_pairs, sharp_only
from meddeblur.degrade import degradation_seed, degrade, parse_spec
from meddeblur.errors import UserError
from meddeblur.io import atomic_path, atomic_write, read_rgb, resize_area, write_image


def synthesize(sharp_dir: str | Path, out: str | Path, spec: str, seed: int = 0, size: int | None = None) -> dict:
    """Write ``out/blurred``, ``out/sharp`` (PNG), ``out/kernels`` (.npy) and ``out/manifest.json``.

    Each image's draw is seeded by ``seed`` and its name, so one image's degradation does
    not depend on which other images are in the folder. Returns the manifest.
    """
    parsed = parse_spec(spec)
    sharp_dir, out = Path(sharp_dir), Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: output is a file; pass a new folder with -o")
    if sharp_dir.resolve() in {(out / sub).resolve() for sub in ("", "sharp", "blurred", "kernels")}:
        raise UserError(f"{out}: would write into the input folder {sharp_dir}; choose another -o")
    pairs, _ = check_pairs(sharp_only(sharp_dir))
    entries = []
    for pair in tqdm(pairs, desc="synthesising", unit="image", disable=None):
        sharp = read_rgb(pair.sharp)
        if size:
            sharp = resize_area(sharp, (size, size))
        generator = torch.Generator().manual_seed(degradation_seed(seed, zlib.crc32(pair.name.encode())))
        blurred, done = degrade(torch.from_numpy(np.ascontiguousarray(sharp.transpose(2, 0, 1))), parsed, generator)
        write_image(out / "blurred" / f"{pair.name}.png", blurred.numpy().transpose(1, 2, 0))
        # Sharp images are re-encoded as PNG (lossless) so that pairs share one format and size.
        write_image(out / "sharp" / f"{pair.name}.png", sharp)
        with atomic_path(out / "kernels" / f"{pair.name}.npy") as tmp:
            np.save(tmp, done[0].kernel)
        entries.append({"name": pair.name, "source": str(pair.sharp), "height": sharp.shape[0], "width": sharp.shape[1],
                        "kernel": f"kernels/{pair.name}.npy", **done[0].to_json()})
    manifest = {"meddeblur": __version__, "spec": str(parsed), "seed": seed, "size": size, "images": entries}
    with atomic_write(out / "manifest.json", "w") as fh:
        json.dump(manifest, fh, indent=2)
    return manifest
