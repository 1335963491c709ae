"""The one list of restoration methods: name → :class:`Method`. The CLI's choices, the server's ``?method=`` values,
the workers' model spec, provenance labels and the benchmarks all read it; a method spelled anywhere else is a bug
(``tests/restore/test_registry.py`` looks for one).

A method is told one of three things (:class:`Told`): nothing (blind), a known PSF, or a PSF it estimates itself.
``network`` is the trained network either way: the blind model, or, told a PSF, the kernel-conditioned one.
Adding a method is one module with a ``build(psf, resources, **options)`` function plus one line here. Builders are
named, not imported, so that reading the list (``meddeblur --help``) loads no torch.

>>> sorted(METHODS)
['network', 'pnp', 'psf', 'rl', 'wiener']
>>> [name for name, m in METHODS.items() if Told.PSF in m.told]
['network', 'wiener', 'rl', 'pnp']
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meddeblur.errors import InvalidOption

if TYPE_CHECKING:
    from meddeblur.psf.kernel import PSF
    from meddeblur.restore.base import Resources, Restorer

__all__ = [
    "Told",
    "Method",
    "METHODS",
    "NETWORK",
    "ESTIMATED",
    "KNOWN_BLUR_DEFAULT",
    "get",
    "known_blur",
    "names",
    "resolve",
    "build",
]


class Told(enum.Enum):
    """What a method is told about the blur."""

    NOTHING = "nothing"
    PSF = "psf"
    ESTIMATE = "estimate"


@dataclass(frozen=True)
class Method:
    """One restoration method: its name (CLI, API, provenance), a label for people, what it is told, and how it is built
    when told a PSF (``builder``: ``"module:function"``, called as ``function(psf, resources, **options) → Restorer``;
    None for methods never told one). A classical method also names its numpy ``function`` (``fn(image, kernel,
    **params)`` on (H, W, C) arrays) and the parameter ``grid`` the benchmarks tune it over on validation images."""

    name: str
    label: str
    summary: str
    told: frozenset[Told]
    builder: str | None = None
    function: str | None = None
    grid: tuple[dict[str, Any], ...] = ()


#: The trained network: the blind model, or the kernel-conditioned one when told a PSF; what restores when nothing is said.
NETWORK = "network"
#: The method that estimates the PSF itself.
ESTIMATED = "psf"

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            NETWORK,
            "network",
            "the trained network: blind, or the kernel-conditioned model when told the PSF",
            frozenset({Told.NOTHING, Told.PSF}),
            "meddeblur.restore.network:build",
        ),
        Method(
            "wiener",
            "Wiener",
            "Wiener deconvolution with the PSF (NSR 0.01)",
            frozenset({Told.PSF}),
            "meddeblur.restore.deconvolution:build_wiener",
            "meddeblur.restore.classical:wiener",
            tuple({"nsr": v} for v in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)),
        ),
        Method(
            "rl",
            "Richardson-Lucy",
            "Richardson–Lucy deconvolution with the PSF (30 iterations)",
            frozenset({Told.PSF}),
            "meddeblur.restore.deconvolution:build_rl",
            "meddeblur.restore.classical:richardson_lucy",
            tuple({"iterations": v} for v in (5, 10, 20, 40, 80)),
        ),
        Method(
            "pnp",
            "plug-and-play",
            "8 iterations of the exact FFT data step with the PSF and a learned denoiser",
            frozenset({Told.PSF}),
            "meddeblur.restore.pnp:build",
        ),
        Method(
            ESTIMATED,
            "estimated PSF",
            "estimate each image's PSF, restore with it, check the result (else the blind network)",
            frozenset({Told.ESTIMATE}),
        ),
    )
}

#: What a known PSF is restored with when no method is named (and what the estimated-PSF method restores with).
KNOWN_BLUR_DEFAULT = NETWORK


def names(told: Told | None = None) -> tuple[str, ...]:
    """The method names (told ``told``, if given), in the registry's order."""
    return tuple(name for name, m in METHODS.items() if told is None or told in m.told)


def get(name: str) -> Method:
    """The method called ``name``; :class:`~meddeblur.errors.InvalidOption` listing the choices otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise InvalidOption(f"method={name!r}: choose one of {', '.join(METHODS)}", value=name, option="method") from None


def known_blur(name: str) -> Method:
    """The method ``name``, which must restore a known PSF; InvalidOption naming those that do otherwise."""
    method = get(name)
    if Told.PSF not in method.told:
        raise InvalidOption(
            f"method={name!r} does not restore a known PSF: choose one of {', '.join(names(Told.PSF))}",
            value=name,
            option="method",
        )
    return method


def resolve(reference: str) -> Any:
    """The object a ``"module:name"`` reference names (a builder or a classical function), imported on first use."""
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


def build(name: str, psf: PSF, resources: Resources, **options: Any) -> Restorer:
    """The restorer of method ``name`` told ``psf``; options (e.g. ``nsr``, ``iterations``) go to the method's builder."""
    method = known_blur(name)
    assert method.builder is not None  # every method told a PSF has a builder
    try:
        return resolve(method.builder)(psf, resources, **options)
    except TypeError as exc:  # an option this method does not take
        raise InvalidOption(f"method={name!r}: {exc}", value=sorted(options), option="method") from None
