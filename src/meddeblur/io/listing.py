"""The images of a folder: what ``deblur``, ``assess``, training and evaluation read from a folder."""

from __future__ import annotations

import os
from pathlib import Path

from meddeblur.errors import NotFound, UserError
from meddeblur.io.formats import IMAGE_EXTENSIONS

__all__ = ["list_images"]


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Entries with an image extension directly inside ``folder`` (hidden ones skipped), sorted by name.

    Sub-folders are skipped (the listing is not recursive), but anything else named
    like an image is listed, broken links, FIFOs and all, so that reading it fails
    with a message naming it rather than the image silently going missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        if not folder.exists():
            raise NotFound(f"{folder}: no such folder; give a folder of images", value=folder)
        raise UserError(f"{folder}: not a folder; give a folder of images", value=folder)
    try:
        entries = list(folder.iterdir())
    except PermissionError:
        raise UserError(f"{folder}: permission denied listing the folder; make it readable") from None
    except OSError as exc:
        raise UserError(f"{folder}: cannot list the folder ({exc.strerror or exc}); check it") from None
    # Hidden files include our own in-progress ".name.tmp-*" outputs.
    candidates = (p for p in entries if not p.name.startswith("."))
    files = [p for p in candidates if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()]
    files.sort(key=lambda p: p.name)
    if not files:
        raise NotFound(f"{folder}: no images (png/jpg/jpeg/tif/tiff/bmp/dcm) found; check the folder", value=folder)
    return files
