"""Tiled full-resolution inference: layout, blending, agreement with a whole-image pass, bounded memory.

Why tiled and whole outputs can differ at all: a pixel near a tile edge depends on pixels
beyond it (receptive field ±94 px for a 4-level Attention U-Net), and NAFNet's channel
attention averages over the tile instead of the image. Random weights make the first effect
far stronger than trained ones do (no learnt locality), so the Attention U-Net comparison
uses an overlap (192) above twice the receptive field radius; the same tiles without overlap
differ by 10–40/255 (asserted > 1/255 below), which shows the comparison has teeth. The
2-level NAFNet has a small receptive field (±~10 px) and agrees at a 32-pixel overlap.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from meddeblur.inference.batch import deblur_tensor
from meddeblur.inference.tiling import blend_weights, deblur_tiled, tile_starts
from meddeblur.models import ModelConfig, build_model, size_multiple

NAFNET_SMALL = ModelConfig(arch="nafnet", width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1))


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _nafnet_small() -> nn.Module:
    """The small NAFNet with every parameter moved off its (identity) initialisation."""
    model = build_model(NAFNET_SMALL).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize("length,tile,overlap,multiple", [
    (16, 64, 16, 16), (64, 64, 16, 16), (80, 64, 16, 16), (336, 256, 192, 16), (3008, 512, 128, 16),
    (4000, 512, 128, 16), (204, 96, 32, 4), (1000, 100, 0, 4),
])
def test_tiles_cover_the_axis_aligned_and_overlapping(length, tile, overlap, multiple):
    starts = tile_starts(length, tile, overlap, multiple)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length and starts == sorted(set(starts))
    assert all(s % multiple == 0 for s in starts)
    assert all(a + size - b >= overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("height,width,tile,overlap", [(336, 320, 256, 192), (3008, 4000, 512, 128), (160, 208, 96, 32)])
def test_blend_weights_are_positive_everywhere(height, width, tile, overlap):
    total = torch.zeros(height, width, dtype=torch.float64)
    th, tw = min(tile, height), min(tile, width)
    for y in tile_starts(height, th, overlap, 16):
        for x in tile_starts(width, tw, overlap, 16):
            total[y:y + th, x:x + tw] += torch.outer(blend_weights(height, y, th, overlap), blend_weights(width, x, tw, overlap))
    assert total.min() > 1e-6  # no pixel is left to tile edges alone
    edge = blend_weights(1000, 100, 512, 128)
    assert edge[0] < 1e-7 and edge[-1] < 1e-7 and torch.all(edge[128:-128] == 1)
    assert torch.all(blend_weights(1000, 0, 512, 128)[:-128] == 1)  # the image border is not tapered


@pytest.mark.parametrize("height,width", [(101, 77), (333, 257), (17, 300)])
def test_identity_model_gives_back_the_input(height, width):
    x = torch.rand(1, 3, height, width)
    y = deblur_tiled(Identity(), x, tile=64, overlap=32, multiple=16)
    assert y.shape == x.shape and (y - x).abs().max() <= 1e-6


def test_constant_model_stays_constant_so_every_pixel_is_covered():
    class Half(nn.Module):
        def forward(self, x):
            return torch.full_like(x, 0.5)

    y = deblur_tiled(Half(), torch.rand(1, 3, 301, 299), tile=64, overlap=48)
    assert torch.isfinite(y).all() and (y - 0.5).abs().max() <= 1e-6


def test_attention_unet_tiled_matches_whole_image():
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=4)).eval()
    x = torch.rand(1, 3, 330, 310)  # padded to 336×320: 2×2 tiles of 256
    whole = deblur_tensor(model, x)
    tiled = deblur_tiled(model, x, tile=256, overlap=192)
    assert tiled.shape == x.shape and (tiled - whole).abs().max() < 1 / 255
    assert (deblur_tiled(model, x, tile=256, overlap=0) - whole).abs().max() > 1 / 255


def test_nafnet_tiled_matches_whole_image():
    model = _nafnet_small()
    multiple = size_multiple(NAFNET_SMALL)
    x = torch.rand(1, 3, 150, 200)
    whole = deblur_tensor(model, x, multiple=multiple)
    assert (whole - x).abs().mean() > 0.02  # not (near) the identity: tiling mistakes would show
    tiled = deblur_tiled(model, x, tile=96, overlap=32, multiple=multiple)
    difference = (tiled - whole).abs().max()
    assert 0 < difference < 1 / 255  # > 0: tiles were really used (channel attention sees the tile)


def test_image_within_one_tile_is_processed_whole():
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=4)).eval()
    x = torch.rand(1, 3, 101, 77)
    assert torch.equal(deblur_tiled(model, x, tile=128, overlap=32), deblur_tensor(model, x))


def test_batched_tiles_and_batched_images_give_the_same_result():
    model = _nafnet_small()
    x = torch.rand(2, 3, 100, 140)  # 2×3 tiles per image
    one = deblur_tiled(model, x, tile=64, overlap=16, multiple=4)
    assert torch.allclose(deblur_tiled(model, x, tile=64, overlap=16, multiple=4, batch=4), one, atol=1e-5)
    assert torch.allclose(deblur_tiled(model, x[1:], tile=64, overlap=16, multiple=4), one[1:], atol=1e-6)


def test_overlap_can_be_a_fraction_of_the_tile():
    x = torch.rand(1, 3, 200, 200)
    assert (deblur_tiled(Identity(), x, tile=64, overlap=0.25) - x).abs().max() <= 1e-6


@pytest.mark.parametrize("kwargs", [dict(tile=64, overlap=64), dict(tile=64, overlap=56), dict(tile=64, overlap=-1),
                                    dict(tile=64, overlap=16, batch=0)])
def test_bad_tiling_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        deblur_tiled(Identity(), torch.rand(1, 3, 200, 200), **kwargs)


def test_4000x3000_image_runs_in_bounded_memory():
    """Peak RSS of a fresh process tiling a 4000×3000 image (identity network: the tiling's own
    overhead: input, padded copy, canvas, weights). The real networks: benchmarks/tiling_memory.py."""
    script = textwrap.dedent("""
        import resource, torch
        from meddeblur.inference.tiling import deblur_tiled
        class Identity(torch.nn.Module):
            def forward(self, x):
                return x
        x = torch.rand(1, 3, 3000, 4000)
        y = deblur_tiled(Identity(), x)
        assert y.shape == x.shape and (y - x).abs().max() <= 1e-6
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    peak_bytes = int(done.stdout.split()[-1]) * 1024  # Linux reports KiB
    assert peak_bytes < 3 * 1024 ** 3


def test_tiling_memory_benchmark_runs(tmp_path):
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "benchmarks.tiling_memory", "--only", "nafnet (default config)", "--size", "300", "200", "--tile", "128",
                           "--overlap", "32", "--quiet-wait", "0", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr
    row = json.loads((tmp_path / "tiling_memory.json").read_text())["rows"]["nafnet (default config)"]
    assert row["tiles"] == 6 and 0 < row["peak_rss_mib"] < 3 * 1024
