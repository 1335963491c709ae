"""The OpenAPI description of ``POST /v1/deblur`` beyond what FastAPI infers from its query parameters: the body
(the image, a PSF spec or kernel file, the method), the headers and the JSON answer, and the refusals."""

from __future__ import annotations

from typing import Any

from meddeblur.psf.kernel import PSF
from meddeblur.restore import registry

_ERROR_SCHEMA = {
    "content": {
        "application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}
    }
}
_PSF_RECORD = {
    "type": ["object", "null"],
    "description": "the PSF the image was restored with (null: none, or estimated: see "
    "`restoration`): source (a spec, or a kernel file's name), params, size [rows, columns], digest, "
    "mtf50_cycles_per_pixel and `from` (server default, spec or kernel file)",
}


def method_help() -> str:
    """``?method=``: every method of the registry, with what it is told and does."""
    return "; ".join(f"{name}: {method.summary}" for name, method in registry.METHODS.items())


def psf_help(default: PSF | None, uploads: bool) -> str:
    """``psf``: the spec language, this server's default and whether kernel files are taken."""
    told = ", ".join(registry.names(registry.Told.PSF))
    said = (
        f"the blur, known: a spec such as gauss:sigma=1.6, defocus:radius=2.5 or motion:length=9,angle=30 (query or form "
        f"field), for the methods told a PSF ({told}; left out with a PSF: {registry.KNOWN_BLUR_DEFAULT}). "
    )
    said += (
        f"This server's default PSF, used when psf is left out: {default.source} ({default.kernel.shape[1]}x"
        f"{default.kernel.shape[0]} px); psf= (empty) restores without it. "
        if default is not None
        else "This server has no default PSF (meddeblur serve --psf). "
    )
    said += (
        "A kernel file (.npy, grey .png, or the .json of meddeblur calibrate; at most 4 MiB) may be sent as the "
        "multipart field psf."
        if uploads
        else "Kernel files are taken only by a server with an API key."
    )
    return said


def deblur_openapi(default: PSF | None, uploads: bool) -> dict[str, Any]:
    """The ``openapi_extra`` of ``POST /v1/deblur`` for a server with this default PSF and kernel-upload rule."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": "PNG, JPEG, TIFF or BMP (decoded by content)",
                            },
                            "psf": {
                                "oneOf": [{"type": "string"}, {"type": "string", "format": "binary"}],
                                "description": psf_help(default, uploads),
                            },
                            "method": {"type": "string", "enum": list(registry.METHODS), "description": method_help()},
                        },
                    }
                },
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "responses": {
            "200": {
                "description": "The deblurred image (input's format and bit depth unless `format`); headers X-Method (what "
                "restored it), X-Model-Id (the weights it ran with, as in the image's provenance; absent for "
                "Wiener and Richardson-Lucy, which have none), X-PSF (JSON: the PSF it was restored with, when told one), "
                "X-Processing-Time-Ms, X-Deblur-Time-Ms, X-Image-Size, and with method=psf X-Restoration "
                "(JSON: the estimated PSF, the consistency check, result and reason; a PSF map only as "
                "its grid size — the whole record is in the image's provenance and the JSON answer)",
                "content": {
                    **{
                        t: {"schema": {"type": "string", "format": "binary"}}
                        for t in ("image/png", "image/jpeg", "image/tiff", "image/bmp")
                    },
                    # change_map, change_levels or explain: the same image in JSON, with what was asked for.
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "image": {"type": "string", "format": "byte"},
                                "media_type": {"type": "string"},
                                "filename": {"type": "string"},
                                "width": {"type": "integer"},
                                "height": {"type": "integer"},
                                "bit_depth": {"type": "integer"},
                                "model_id": {"type": ["string", "null"]},
                                "model": {"type": ["string", "null"], "description": "the model it ran with, in words"},
                                "made_by": {
                                    "type": "object",
                                    "description": "model_id and model that made these pixels: "
                                    "with method=psf the blind network's where it fell back, none where the "
                                    "image was left unchanged",
                                },
                                "method": {"type": "string"},
                                "psf": _PSF_RECORD,
                                "change": {
                                    "type": "object",
                                    "description": "mean and max absolute change in 8-bit levels, "
                                    "share of pixels changed by more than 4 levels",
                                    "properties": {k: {"type": "number"} for k in ("mean", "max", "share_over_4")},
                                },
                                "change_map": {
                                    "type": "string",
                                    "format": "byte",
                                    "description": "PNG: heat map (the "
                                    "image's width x height, top left) and its colour bar in levels (right)",
                                },
                                "change_map_media_type": {"type": "string"},
                                "change_levels": {
                                    "type": "string",
                                    "format": "byte",
                                    "description": "change_levels=true: "
                                    "PNG of the change per pixel, level = (red * 256 + green) / 256",
                                },
                                "change_levels_media_type": {"type": "string"},
                                "change_percentile": {
                                    "type": "number",
                                    "description": "the 99th percentile of the change, levels",
                                },
                                "change_scale": {
                                    "type": "integer",
                                    "description": "a colour scale for it: the 99th "
                                    "percentile rounded up to 5, 10, 20, 50, 100, 200 or 255 levels",
                                },
                                "restoration": {
                                    "type": "object",
                                    "description": "method=psf: the estimated PSF (source "
                                    "spec, params, size, digest, MTF50, family, confidence), the consistency "
                                    "check and `result` (restored, unchanged or blind) with its `reason`",
                                },
                                "psf_image": {
                                    "type": ["string", "null"],
                                    "format": "byte",
                                    "description": "explain=true: "
                                    "PNG of the PSF's kernel beside its MTF (null when there was none)",
                                },
                                "psf_image_media_type": {"type": "string"},
                            },
                        }
                    },
                },
            },
            "400": {
                "description": "empty upload, no file field, bad format, method or psf (a known-blur method without a PSF, "
                "a PSF with method=psf)",
                **_ERROR_SCHEMA,
            },
            "401": {"description": "API key missing or wrong (only when the server has one)", **_ERROR_SCHEMA},
            "403": {
                "description": "cross-site request from a browser; a kernel file sent to a server without an API key",
                **_ERROR_SCHEMA,
            },
            "408": {"description": "upload not received within --body-timeout", **_ERROR_SCHEMA},
            "413": {
                "description": "upload larger than --max-upload-mb, a kernel file over 4 MiB, or more pixels than --max-pixels",
                **_ERROR_SCHEMA,
            },
            "415": {
                "description": "not an image, or an unsupported format (GIF, WebP, DICOM, ...); not a kernel file",
                **_ERROR_SCHEMA,
            },
            "422": {"description": "truncated or corrupt image, smaller than 16 px or than the PSF", **_ERROR_SCHEMA},
            "503": {
                "description": "queue full, too many uploads at once, or the --deadline cannot be met: retry after the "
                "Retry-After header's seconds",
                **_ERROR_SCHEMA,
            },
        },
    }
