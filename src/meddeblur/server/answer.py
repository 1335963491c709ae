"""What ``POST /v1/deblur`` answers besides the image bytes: the JSON answer and the ``X-PSF``/``X-Restoration`` headers.

Separate from :mod:`meddeblur.server.app`, which routes the request and decides what to answer: this only puts a
:class:`~meddeblur.server.imaging.Deblurred` result into the shapes a client reads.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.server.choice import Choice
from meddeblur.server.imaging import Deblurred

__all__ = ["json_answer", "made_by", "psf_header", "restoration_header"]

# A PSF's params ride in X-PSF only while short: a kernel file's record may hold more than a header should carry.
_HEADER_PARAMS_BYTES = 512


def json_answer(
    result: Deblurred, filename: str, engine: Deblurrer, choice: Choice, change_map: bool, change_levels: bool, explain: bool
) -> dict[str, Any]:
    """The JSON answer (``change_map``, ``change_levels`` or ``explain``): the image and its change map as base64, the
    change figures in 8-bit levels, what restored it (method, model, PSF); with ``method=psf`` the restoration record,
    with ``explain`` the PSF's figure."""
    answer: dict[str, Any] = {
        "image": base64.b64encode(result.data).decode("ascii"),
        "media_type": result.media_type,
        "filename": filename,
        "width": result.width,
        "height": result.height,
        "bit_depth": result.bit_depth,
        "model_id": engine.provenance.get("model_id"),
        "model": engine.provenance.get("model"),
        "made_by": made_by(engine, result.restoration),
        "method": choice.method,
        "psf": choice.psf_record(),
    }
    if change_map:
        answer.update(
            change=result.change,
            change_map=base64.b64encode(result.change_map or b"").decode("ascii"),
            change_map_media_type="image/png",
        )
    if change_levels and result.change_view is not None:
        view = result.change_view
        answer.update(
            change=result.change,
            change_levels=base64.b64encode(view["levels"]).decode("ascii"),
            change_levels_media_type="image/png",
            change_percentile=view["percentile"],
            change_scale=view["scale"],
        )
    if result.restoration is not None:
        answer["restoration"] = result.restoration
    if explain:
        answer.update(
            psf_image=base64.b64encode(result.psf_image).decode("ascii") if result.psf_image else None,
            psf_image_media_type="image/png",
        )
    return answer


def made_by(engine: Deblurrer, restoration: dict[str, Any] | None) -> dict[str, Any]:
    """The weights that made the answered pixels, for people (the page's header): ``model_id`` and the provenance's
    model stay the run's configuration, but where ``method=psf`` fell back to the blind network, the blind network
    made them, and where it left the image as it was, no model did."""
    result = (restoration or {}).get("result")
    if result == "blind":
        return {"model_id": engine.provenance["parameters"].get("fallback_model_id"), "model": "the blind network"}
    if result == "unchanged":
        return {"model_id": None, "model": "no model: the image was left as it was"}
    return {"model_id": engine.provenance.get("model_id"), "model": engine.provenance.get("model")}


def restoration_header(restoration: dict[str, Any]) -> str:
    """``X-Restoration``: the record as compact ASCII JSON, a PSF map only as its grid size (a header must stay small)."""
    brief = dict(restoration)
    if isinstance(brief.get("psf_map"), dict):
        brief["psf_map"] = {"grid": [len(brief["psf_map"].get("cell_rows", [])), len(brief["psf_map"].get("cell_cols", []))]}
    return json.dumps(brief, separators=(",", ":"), ensure_ascii=True)


def psf_header(record: dict[str, Any]) -> str:
    """``X-PSF``: the PSF's record as compact ASCII JSON, its params only while short."""
    brief = dict(record)
    if len(json.dumps(brief.get("params"), ensure_ascii=True)) > _HEADER_PARAMS_BYTES:
        brief["params"] = "in the image's provenance"
    return json.dumps(brief, separators=(",", ":"), ensure_ascii=True)
