"""Choosing the torch device from ``--device``."""

from __future__ import annotations

import torch

from meddeblur.errors import InvalidOption

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA, then Apple MPS, then CPU; an unavailable explicit choice is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name not in DEVICE_CHOICES:
        raise InvalidOption(f"device={name}: choose one of {', '.join(DEVICE_CHOICES)}", value=name, option="device")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidOption(
            "device=cuda: no CUDA GPU is available here; use device=cpu or device=auto", value="cuda", option="device"
        )
    if name == "mps" and not _mps_available():
        raise InvalidOption(
            "device=mps: Apple MPS is not available here; use device=cpu or device=auto", value="mps", option="device"
        )
    return torch.device(name)


def describe_machine() -> dict:
    """CPU model, cores and library versions, recorded beside every measured figure."""
    import os
    import platform

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def machine_line() -> str:
    """``"AMD EPYC, 2 cores, torch 2.13.0+cpu"``: the machine as results files and tables name it."""
    described = describe_machine()
    return f"{described['cpu']}, {described['cores']} cores, torch {described['torch']}"
