"""What one request restores with: a method of the registry and, for the methods told the blur, a PSF.

The PSF comes, in this order, from the request's ``psf`` field (query or form): a spec such as ``gauss:sigma=1.6``, or
a kernel file uploaded as the multipart field ``psf``; else from the server's ``--psf`` default. The rules
(docs/commands.md, "Methods and a known blur"):

* ``method`` is any name of :data:`meddeblur.restore.registry.METHODS`. Left out, a request told a PSF is restored by
  :data:`~meddeblur.restore.registry.KNOWN_BLUR_DEFAULT`, one told none by the blind network.
* ``psf`` left out: the server's default, for every method that takes a PSF; ``psf`` empty: no PSF, even where the
  server has a default (the blind network); a ``psf`` equal to the default's name (its spec, or its file's name)
  is the default — the page sends back what it shows.
* A method that needs a PSF and has none, and a PSF given to the method that estimates its own, are refused (400).

A request's ``psf`` text is only ever parsed as a spec, never opened as a path: the server's disk is not the
client's to name. A kernel file is parsed by the CLI's own loader (:func:`meddeblur.psf.kernel.load_psf`, whose
readers check size and header before reading) from a private temporary file, and is refused above
:data:`MAX_KERNEL_BYTES` (a kernel is kilobytes; a calibrated device's ``.json`` a few dozen).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meddeblur.errors import UserError
from meddeblur.io.formats import PSF_FILE_SUFFIXES, names_psf_file
from meddeblur.psf.kernel import PSF, load_psf, psf_from_spec
from meddeblur.restore import registry
from meddeblur.server.engine import WITHOUT_PSF
from meddeblur.server.imaging import UploadError, display_name, status_for

#: Largest kernel file taken as an upload: a 401×401 kernel as float64 ``.npy`` is 1.3 MB; more is not a kernel.
MAX_KERNEL_BYTES = 4 * 1024 * 1024
#: Where a request's PSF came from (the ``from`` of its record: ``X-PSF``, the JSON answer, the page).
DEFAULT, SPEC, KERNEL_FILE = "server default", "spec", "kernel file"
_SPEC_EXAMPLE = "e.g. gauss:sigma=1.6, defocus:radius=2.5 or motion:length=9,angle=30"


@dataclass(frozen=True)
class Choice:
    """One request's method and PSF (None: restored blind, or the PSF is estimated); ``given``: where the PSF came from."""

    method: str
    psf: PSF | None = None
    given: str | None = None

    @property
    def estimates(self) -> bool:
        return registry.Told.ESTIMATE in registry.get(self.method).told

    def psf_record(self) -> dict[str, Any] | None:
        """What answers say of the PSF used: :meth:`PSF.describe` (source, params, size, digest, MTF50) and ``from``."""
        return None if self.psf is None else {**self.psf.describe(), "from": self.given}


def load_default_psf(spec_or_file: str) -> PSF:
    """``serve --psf``, loaded and checked once at start-up by the CLI's loader (:class:`UserError` in one line).

    A file's PSF is named by the file's name alone: answers and the open page never show the server's folders.
    """
    psf = load_psf(spec_or_file)
    if names_psf_file(spec_or_file):  # what load_psf read as a file
        psf = dataclasses.replace(psf, source=Path(spec_or_file).name)
    return psf


def methods_listed() -> str:
    """Every method with what it does, for refusals: the registry's own words."""
    return "; ".join(f"{name} ({method.summary})" for name, method in registry.METHODS.items())


def method_named(text: str | None) -> str | None:
    """``text`` if it names a method of the registry (None: not given); 400 listing the methods otherwise."""
    if text is not None and text not in registry.METHODS:
        raise UploadError(400, f"method={text}: choose one of {methods_listed()}")
    return text


def spec_psf(text: str, default: PSF | None, uploads: bool) -> tuple[PSF | None, str | None]:
    """(the PSF, where it came from) of a request's ``psf`` text: empty → (None, None); the default's name → the
    default; otherwise a spec (400 in one line when it is not one). ``uploads``: whether kernel files may be sent."""
    text = text.strip()
    if not text:
        return None, None
    if default is not None and text == default.source:
        return default, DEFAULT
    if Path(text).suffix.lower() in PSF_FILE_SUFFIXES or "/" in text or "\\" in text:
        send = (
            "send the kernel file itself as the multipart field 'psf'"
            if uploads
            else "this server takes kernel files only from callers with its API key; ask for it, or for the file as serve --psf"
        )
        raise UploadError(400, f"psf={text}: give a PSF spec ({_SPEC_EXAMPLE}), not a file name; {send}")
    try:
        return psf_from_spec(text), SPEC
    except UserError as error:
        raise UploadError(400, " ".join(str(error).split())) from None


def _kernel_suffix(head: bytes) -> str | None:
    """The kernel file type by content: the client's file name may say anything."""
    if head.startswith(b"\x93NUMPY"):
        return ".npy"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head.lstrip()[:1] == b"{":
        return ".json"
    return None


def read_kernel(data: bytes, filename: str | None) -> PSF:
    """The PSF of an uploaded kernel file, by :func:`load_psf` from a private temporary folder (removed at once).

    Refusals are one line naming the client's file name, never the temporary path: 413 above :data:`MAX_KERNEL_BYTES`,
    415 for what is not a ``.npy``, grey ``.png`` or PSF ``.json``, and the loader's own refusals (400, 415, 422).
    The PSF's ``source`` is the client's (safe) file name.
    """
    name = display_name(filename) if filename else "kernel file"
    if len(data) > MAX_KERNEL_BYTES:
        raise UploadError(
            413,
            f"psf: {name} is {len(data) / 2**20:.1f} MiB, more than the {MAX_KERNEL_BYTES / 2**20:g} MiB a "
            "kernel file may be; crop the kernel to the blur's support",
        )
    if not data:
        raise UploadError(
            400, f"psf: {name} is empty; send a kernel file (.npy, grey .png, or the .json meddeblur calibrate writes)"
        )
    suffix = _kernel_suffix(data[:16])
    if suffix is None:
        raise UploadError(
            415, f"psf: {name} is not a kernel file; send a 2-D .npy array, a grey .png or the .json meddeblur calibrate writes"
        )
    with tempfile.TemporaryDirectory(prefix="meddeblur-psf-") as folder:  # mkdtemp: readable by this user only
        path = Path(folder) / f"kernel{suffix}"
        path.write_bytes(data)
        try:
            psf = load_psf(path)
        except UserError as error:
            raise UploadError(status_for(error), " ".join(str(error).replace(str(path), name).split())) from None
    return dataclasses.replace(psf, source=name)


def choose(method: str | None, psf: PSF | None, given: str | None, stated: bool, default: PSF | None) -> Choice:
    """The :class:`Choice` for a request naming ``method`` (None: not named) and ``psf`` (``stated``: whether the
    request had a ``psf`` field at all; an empty one states "none"); 400 in one line for what cannot be done."""
    if method is not None and registry.Told.ESTIMATE in registry.get(method).told:
        if psf is not None:
            raise UploadError(
                400,
                f"psf={psf.source}: method={method} estimates the PSF from each image; leave psf out, or "
                f"restore with this PSF by method {', '.join(registry.names(registry.Told.PSF))}",
            )
        return Choice(method)
    if not stated and default is not None:
        psf, given = default, DEFAULT
    if method is None:
        method = registry.KNOWN_BLUR_DEFAULT if psf is not None else registry.NETWORK
    if psf is None and registry.Told.NOTHING not in registry.get(method).told:
        if stated and default is not None:
            why = (
                f"and psf is empty: give a spec ({_SPEC_EXAMPLE}), or leave psf out for this server's default ({default.source})"
            )
        else:
            why = f"and this server has no default PSF (meddeblur serve --psf): give psf=SPEC ({_SPEC_EXAMPLE})"
        raise UploadError(
            400, f"method={method} restores a known blur {why}; or choose method {' or '.join(WITHOUT_PSF)}, which need none"
        )
    return Choice(method, psf, given if psf is not None else None)
