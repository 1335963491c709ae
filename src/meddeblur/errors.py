"""Errors a user can fix: :class:`UserError` and one subclass per kind of problem.

The CLI prints ``str(error)`` as a single line and exits with code 2, whatever the class; the
server answers each class with its own HTTP status (``meddeblur.server.imaging.STATUSES``).
Each error carries the offending ``value`` (a path, an option's value, a module name):

>>> from meddeblur.errors import NotFound, UserError
>>> error = NotFound("scan.png: no such file; check the path", value="scan.png")
>>> isinstance(error, UserError), error.value
(True, 'scan.png')
"""

from __future__ import annotations

__all__ = [
    "UserError",
    "NotFound",
    "UnsupportedFormat",
    "CorruptFile",
    "CorruptImage",
    "EmptyFile",
    "TooLarge",
    "TooSmall",
    "InvalidOption",
    "MissingExtra",
]


class UserError(Exception):
    """A problem caused by the user's input (path, image, weights, option).

    The message must name the offending file or option and say what to do; ``value`` is the
    offending value itself (None where there is no single one).
    """

    def __init__(self, message: str, value: object = None) -> None:
        super().__init__(message)
        self.value = value


class NotFound(UserError):
    """A file, folder or model that does not exist (or a broken symbolic link to one)."""


class UnsupportedFormat(UserError):
    """A readable file of a type or variant meddeblur does not handle (GIF, float TIFF, multi-frame DICOM, pickle, ...)."""


class CorruptFile(UserError):
    """A file of a supported type whose content is damaged or inconsistent (weights, ONNX, run records)."""


class CorruptImage(CorruptFile):
    """An image that cannot be decoded: truncated, corrupt, or inconsistent with its own header."""


class EmptyFile(CorruptImage):
    """A file of 0 bytes."""


class TooLarge(UserError):
    """An image with more pixels than the limit (``max_pixels``), refused from its header."""


class TooSmall(UserError):
    """An image with a side below the minimum the network needs (16 px)."""


class InvalidOption(UserError, ValueError):
    """An option (parameter or flag) with a value out of its range or in conflict with another; ``option`` names it.

    Also a ``ValueError``, what Python code expects from a bad argument.
    """

    def __init__(self, message: str, value: object = None, option: str | None = None) -> None:
        super().__init__(message, value)
        self.option = option


class MissingExtra(UserError):
    """An optional dependency is not installed; ``extra`` is what to install: ``pip install 'meddeblur[EXTRA]'``."""

    def __init__(self, message: str, value: object = None, extra: str | None = None) -> None:
        super().__init__(message, value)
        self.extra = extra


#: Optional dependency (top-level module) → the extra that installs it.
EXTRAS = {
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "fastapi_offline": "serve",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "pydicom": "dicom",
    "matplotlib": "plots",
    "skimage": "classical",
    "monai": "monai",
    "ray": "ray",
    "dicomweb_client": "pacs",
    "pynetdicom": "pacs",
}


def require(module: str, purpose: str) -> None:
    """Raise :class:`MissingExtra` naming the extra to install when ``module`` cannot be imported.

    ``purpose`` says what needs it, e.g. ``"meddeblur serve"`` or ``"reading DICOM files"``.
    """
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        extra = EXTRAS.get(module.split(".")[0], "all")
        raise MissingExtra(
            f"{purpose} needs {module.split('.')[0]}, which is not installed; install it with: pip install 'meddeblur[{extra}]'",
            value=module,
            extra=extra,
        )
