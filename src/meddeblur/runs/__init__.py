"""Folder runs: what ``meddeblur deblur`` does with files and folders.

:func:`~meddeblur.runs.archive.deblur_archive` plans every file a run writes (:mod:`~meddeblur.runs.plan`: inputs,
outputs, resume proofs, the run's :mod:`~meddeblur.runs.recipe`), then deblurs the tasks (:mod:`~meddeblur.runs.jobs`)
in this process, in local worker processes (:mod:`~meddeblur.runs.workers`) or on Ray
(:mod:`~meddeblur.runs.ray_actors`), recording each input (:mod:`~meddeblur.runs.execute`, the JSONL
:mod:`~meddeblur.runs.log`) and drawing PSF figures on request (:mod:`~meddeblur.runs.explain`).
:func:`~meddeblur.runs.files.deblur_files` is the one-call version without resuming, for a model already loaded::

    from meddeblur import Deblurrer
    from meddeblur.runs import deblur_files

    deblur_files(Deblurrer.load(), ["photos/"], "out/")
"""

from __future__ import annotations

from typing import Any

__all__ = ["deblur_archive", "deblur_files", "ModelSpec"]


def __getattr__(name: str) -> Any:  # imported when first used: planning a run imports no torch
    if name == "deblur_archive":
        from meddeblur.runs.archive import deblur_archive

        return deblur_archive
    if name == "deblur_files":
        from meddeblur.runs.files import deblur_files

        return deblur_files
    if name == "ModelSpec":
        from meddeblur.runs.workers import ModelSpec

        return ModelSpec
    raise AttributeError(f"module 'meddeblur.runs' has no attribute {name!r}")
