"""Degradation spec strings: ``FAMILY[:key=value,...][+OP[:key=value,...]]...`` → :class:`DegradeSpec`.

Numbers follow one strict grammar, :func:`parse_number`: an optional sign, ASCII digits with at most one point, an
optional exponent, and a finite value. Python's ``float()`` is far looser — it reads ``1_6`` as 16, and takes
``inf``, ``nan``, ``1e400`` (infinite), surrounding spaces and non-ASCII digits — so a typo would become a silently
wrong blur. Spaces around the separators (``:`` ``,`` ``=`` ``+`` ``..``) are ignored; inside a number there are none.
This module is the one place the spec language is read: ``--degrade``, ``--psf`` specs (:mod:`meddeblur.psf.kernel`)
and everything built on them parse through :func:`parse_spec`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TypedDict

from meddeblur.degradation.resampling import KERNELS, LIBRARIES, supported
from meddeblur.errors import UserError

Value = float | int | str | tuple[float, float]  # a number, a (low, high) range or a word


@dataclass(frozen=True)
class Key:
    default: Value | None  # None: absent unless given
    kind: str = "real"  # "real", "int" or "word"
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False  # low itself is not allowed
    words: tuple[str, ...] = ()
    note: str = ""  # said after the bounds when a value is out of range

    def bounds(self) -> str:
        return f"{'>' if self.open_low else '>='} {_fmt(self.low)} and <= {_fmt(self.high)}" + (
            f" ({self.note})" if self.note else ""
        )


class _Bounds(TypedDict, total=False):
    """Keyword arguments that several :class:`Key` share."""

    low: float
    open_low: bool
    note: str


_POSITIVE: _Bounds = {"low": 0.0, "open_low": True}
# A Gaussian of sigma 0.1 px puts 2e-22 of its weight beside the centre, a disk of radius 0.1 px covers only the
# centre pixel: both are already a delta, and narrower ones are the same delta (a disk under 0.09 px misses every
# sample and has no weight at all; a sigma under 1e-154 overflows). So the floor loses nothing and refuses nonsense.
_WIDTH: _Bounds = {"low": 0.1, "note": "a blur narrower than 0.1 px is no blur: use none"}
_ANGLE = Key((0.0, 180.0), low=-360.0, high=360.0)
FAMILIES: dict[str, dict[str, Key]] = {
    "gauss": {"sigma": Key((0.5, 3.0), high=20.0, **_WIDTH), "sigma_y": Key(None, high=20.0, **_WIDTH), "angle": _ANGLE},
    "defocus": {"radius": Key((1.0, 5.0), high=50.0, **_WIDTH)},
    "motion": {"length": Key((3.0, 21.0), low=1.0, high=101.0), "angle": _ANGLE},
    "shake": {"extent": Key((5.0, 21.0), low=1.0, high=101.0)},
    "down": {"scale": Key(2, "int", 2, 16), "up": Key("bicubic", "word", words=("bicubic", "bilinear"))},
    # Resampled by an image library (meddeblur.degradation.resampling); "any" draws one per image.
    "resample": {
        "scale": Key(2.0, low=1.0, high=16.0),
        "down": Key("box", "word", words=(*KERNELS, "any")),
        "up": Key("bicubic", "word", words=(*KERNELS, "any")),
        "lib": Key("pil", "word", words=(*LIBRARIES, "any")),
    },
    "mixed": {},
    "real": {},
    "none": {},
}
_ALIASES = {"identity": "none"}
OPERATORS: dict[str, dict[str, Key]] = {
    "noise": {"sigma": Key((0.0, 0.01), low=0.0, high=1.0)},
    "pgnoise": {"peak": Key((100.0, 1000.0), high=1e6, **_POSITIVE), "sigma": Key(0.0, low=0.0, high=1.0)},
    "jpeg": {"quality": Key((85, 100), "int", 1, 100)},
}
# What "mixed" draws from, one family uniformly per image; Gaussians are anisotropic with p = 0.3.
MIXED: dict[str, dict[str, Value | tuple[str, ...]]] = {
    "gauss": {"sigma": (0.5, 3.0)},
    "defocus": {"radius": (1.0, 5.0)},
    "motion": {"length": (3.0, 21.0), "angle": (0.0, 180.0)},
    "shake": {"extent": (5.0, 21.0)},
    "down": {"scale": (2, 4), "up": ("bicubic", "bilinear")},
}
MIXED_ANISO: dict[str, Value | tuple[str, ...]] = {"sigma": (0.5, 3.0), "sigma_y": (0.5, 3.0), "angle": (0.0, 180.0)}
MIXED_OPS = (("noise", {"sigma": (0.0, 0.01)}), ("jpeg", {"quality": (85, 100)}))
# What "real" draws from: the degradations photographs meet, mild ones included, and an un-blurred
# share that teaches the network to leave a sharp image alone. (family, probability, parameters).
REAL: tuple[tuple[str, float, dict[str, Value | tuple[str, ...]]], ...] = (
    ("none", 0.15, {}),
    ("gauss", 0.25, {"sigma": (0.3, 3.0)}),
    ("defocus", 0.15, {"radius": (0.5, 4.0)}),
    ("motion", 0.1, {"length": (2.0, 15.0), "angle": (0.0, 180.0)}),
    ("shake", 0.1, {"extent": (3.0, 15.0)}),
    ("resample", 0.25, {"scale": (1.25, 4.0), "down": "any", "up": "any", "lib": "any"}),
)
REAL_ANISO: dict[str, Value | tuple[str, ...]] = {
    "sigma": (0.3, 3.0),
    "sigma_y": (0.3, 3.0),
    "angle": (0.0, 180.0),
}  # gauss, p = 0.3
# Each applied with probability 0.5 to a blurred image (never to "none": sharp in, the same out).
REAL_OPS = (("noise", {"sigma": (0.0, 0.012)}), ("jpeg", {"quality": (70, 98)}))


_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
#: How :func:`parse_number` describes its grammar in messages.
NUMBER_GRAMMAR = "a number is digits with at most one point and an optional exponent, e.g. 1.6, .5, -30, 2e-3"


def parse_number(text: str) -> float:
    """The finite float that ``text`` spells in the strict number grammar, else ValueError saying why.

    Grammar: ``[+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`` with ASCII digits, nothing around it.
    Refused although ``float()`` takes them: digit separators (``1_6``), spaces, ``inf``/``nan``, values beyond the
    float range (``1e400``) and non-zero values that round to zero (``1e-400``): each would be a different number
    from the one the user meant. A ValueError rather than a :class:`~meddeblur.errors.UserError`: the caller knows
    which option or file the text came from and names it.

    >>> parse_number("1.6"), parse_number("-2e-3"), parse_number(".5")
    (1.6, -0.002, 0.5)
    """
    if not isinstance(text, str) or not _NUMBER.fullmatch(text):
        raise ValueError(f"{text!r} is not a number ({NUMBER_GRAMMAR})")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is beyond the range of numbers (about 1.8e308)")
    if value == 0 and re.search(r"[1-9]", re.split(r"[eE]", text)[0]):
        raise ValueError(f"{text!r} is too close to zero to represent (under about 1e-308)")
    return value


def _fmt(v: Value) -> str:
    if isinstance(v, tuple):
        return f"{_fmt(v[0])}..{_fmt(v[1])}"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v) if isinstance(v, (int, str)) else repr(v)


def _stage_str(name: str, params: tuple[tuple[str, Value], ...]) -> str:
    return name + (":" + ",".join(f"{k}={_fmt(v)}" for k, v in params) if params else "")


@dataclass(frozen=True)
class StageSpec:
    """One ``+OP:key=value,...`` operator of a spec; params in canonical order, defaults filled in."""

    name: str
    params: tuple[tuple[str, Value], ...] = ()

    def __str__(self) -> str:
        return _stage_str(self.name, self.params)


@dataclass(frozen=True)
class DegradeSpec:
    """A parsed spec: a blur family with its values (number, (low, high) range or word), then operators."""

    family: str
    params: tuple[tuple[str, Value], ...] = ()
    ops: tuple[StageSpec, ...] = ()

    def __str__(self) -> str:
        return "+".join([_stage_str(self.family, self.params), *map(str, self.ops)])


def _help() -> str:
    def listing(table: dict[str, dict[str, Key]]) -> str:
        return ", ".join(name + (f"({','.join(keys)})" if keys else "") for name, keys in table.items())

    return (
        f"valid: FAMILY[:key=value,...][+OP[:key=value,...]]... with families {listing(FAMILIES)} "
        f"and operators {listing(OPERATORS)}; a value is a number or a range a..b ({NUMBER_GRAMMAR})"
    )


def _parse_stage(spec: str, text: str, table: dict[str, dict[str, Key]], what: str) -> tuple[str, tuple[tuple[str, Value], ...]]:
    def fail(problem: str) -> UserError:
        return UserError(f"degrade={spec!r}: {problem}; {_help()}")

    head, colon, rest = text.partition(":")
    name = head.strip().lower()
    name = _ALIASES.get(name, name)
    if not name:
        raise fail(f"empty {what}")
    if name not in table:
        if what == "family" and name in OPERATORS:
            raise fail(f"'{name}' is an operator, not a blur family; append it, e.g. 'gauss+{name}'")
        raise fail(f"unknown {what} {name!r}")
    keys = table[name]
    given: dict[str, Value] = {}
    for item in rest.split(",") if colon else ():
        key, eq, raw = (s.strip() for s in item.partition("="))
        key = key.lower()
        if not eq or not key or not raw:
            raise fail(f"{name}: expected key=value, got {item.strip()!r}")
        if key not in keys:
            raise fail(f"{name} has no key {key!r}" + (f" (keys: {', '.join(keys)})" if keys else " (it takes no keys)"))
        if key in given:
            raise fail(f"{name}: {key} given twice")
        given[key] = _parse_value(raw, keys[key], f"{name}:{key}", fail)
    if name == "gauss" and "angle" in given and "sigma_y" not in given:
        raise fail("gauss: angle needs sigma_y (an isotropic Gaussian has no direction)")
    if name == "resample" and given.get("lib", "pil") != "any":
        for key in ("down", "up"):
            if given.get(key, "any") != "any" and not supported(str(given[key]), str(given.get("lib", "pil"))):
                raise fail(f"resample: lib={given.get('lib', 'pil')} has no {key}={given[key]}")
    params = []
    for key, spec_key in keys.items():
        value = given.get(key, spec_key.default)
        if key == "angle" and name == "gauss" and "sigma_y" not in given:
            value = None
        if value is not None:
            params.append((key, value))
    return name, tuple(params)


def _parse_value(raw: str, key: Key, where: str, fail) -> Value:
    if key.kind == "word":
        if raw.lower() not in key.words:
            raise fail(f"{where}={raw!r} must be one of {', '.join(key.words)}")
        return raw.lower()
    if "..." in raw:  # "0...5": 0..0.5 or 0.0..5? Either reading could be the wrong one
        raise fail(f"{where}={raw!r} is ambiguous; write a range as a..b with no point next to the '..' (0..0.5, not 0...5)")
    parts = [p.strip() for p in raw.split("..")]
    if len(parts) > 2:
        raise fail(f"{where}={raw!r} is not a number or a range a..b")
    try:
        nums = [parse_number(p) for p in parts]
    except ValueError as error:  # the reason names the bad text: the whole value, or the part of a range
        raise fail(f"{where}={error}" if len(parts) == 1 else f"{where}={raw!r}: {error}") from None
    if key.kind == "int":
        if not all(v.is_integer() for v in nums):
            raise fail(f"{where}={raw} must be a whole number")
        nums = [int(v) for v in nums]
    if len(nums) == 2 and nums[0] > nums[1]:
        raise fail(f"{where}={raw} is a reversed range; write low..high")
    for v in nums:
        if v > key.high or v < key.low or (key.open_low and v == key.low):
            raise fail(f"{where}={raw} is out of range; it must be {key.bounds()}")
    return nums[0] if len(nums) == 1 or nums[0] == nums[1] else (nums[0], nums[1])


def parse_spec(spec: str) -> DegradeSpec:
    """Parse ``FAMILY[:key=value,...][+OP[:key=value,...]]...``; raises UserError naming the problem.

    Families: gauss (sigma, sigma_y, angle), defocus (radius), motion (length, angle),
    shake (extent), down (scale, up), resample (scale, down, up, lib), mixed, real, none/identity. Operators: noise (sigma),
    pgnoise (peak, sigma), jpeg (quality). A value is a number, a range ``a..b`` drawn
    uniformly per image (integers for scale and quality), or a word (``any``: one drawn per image).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"degrade={spec!r}: the spec is empty; {_help()}")
    # A '+' before a digit or point is a sign (1e+3, +2), not the start of an operator: operators begin with a letter.
    head, *tail = re.split(r"\+(?![0-9.])", spec.strip())
    family, params = _parse_stage(spec, head, FAMILIES, "family")
    ops = tuple(StageSpec(*_parse_stage(spec, text, OPERATORS, "operator")) for text in tail)
    return DegradeSpec(family, params, ops)
