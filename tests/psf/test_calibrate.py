"""Device calibration: slanted-edge MTF50 on generated charts, the PSF it builds, refusals, the target and the CLI."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from meddeblur.cli.main import main
from meddeblur.degradation.pipeline import degrade
from meddeblur.errors import InvalidOption
from meddeblur.psf import EdgeError, calibrate, directional_mtf, edge_chart, load_psf, measure_edges, mtf50, write_target
from meddeblur.psf.target import SQUARE_MM, TILT, target_page


def photograph(chart: np.ndarray, spec: str, seed: int = 0) -> np.ndarray:
    """``chart`` (H, W, 3) through a device described in the --degrade language (blur, JPEG; 8-bit like a photo)."""
    tensor = torch.from_numpy(np.ascontiguousarray(chart.transpose(2, 0, 1)))
    out, _ = degrade(tensor, spec, torch.Generator().manual_seed(seed))
    return out.numpy().transpose(1, 2, 0)


@pytest.mark.parametrize("blur", ["gauss:sigma=0.8", "gauss:sigma=1.5", "gauss:sigma=3", "defocus:radius=1", "defocus:radius=2.5",
                                  "defocus:radius=4"])
@pytest.mark.parametrize("jpeg", ["", "+jpeg:quality=90"])
def test_calibrate_recovers_the_mtf50_of_a_known_blur(blur: str, jpeg: str) -> None:
    true = load_psf(blur).mtf50
    psf = calibrate(photograph(edge_chart(200, 200, kind="edge"), blur + jpeg))
    measured = psf.extra["calibration"]["measured_mtf50_cycles_per_pixel"]
    assert measured == pytest.approx(true, rel=0.05)
    assert psf.mtf50 == pytest.approx(measured, rel=0.01)  # the PSF written has the MTF50 measured
    kh, kw = psf.kernel.shape
    assert kh == kw and kh % 2 == 1 and psf.kernel.min() >= 0 and psf.kernel.sum() == pytest.approx(1.0)


def test_a_gaussian_psf_comes_back_close_to_the_kernel_itself() -> None:
    true = load_psf("gauss:sigma=1.5").kernel
    psf = calibrate(photograph(edge_chart(200, 200), "gauss:sigma=1.5+jpeg:quality=90"))
    r = max(psf.kernel.shape[0], true.shape[0]) // 2
    padded = [np.pad(k, r - k.shape[0] // 2) for k in (psf.kernel, true)]
    assert np.abs(padded[0] - padded[1]).sum() < 0.08  # L1 distance of two unit-sum kernels (0 = identical, 2 = disjoint)


def test_all_four_sides_of_the_square_are_measured_whatever_their_orientation_and_polarity() -> None:
    edges = measure_edges(photograph(edge_chart(240, 240), "gauss:sigma=1.2"))
    assert sorted(e.orientation for e in edges) == ["horizontal", "horizontal", "vertical", "vertical"]
    assert all(abs(abs(e.tilt) - TILT) < 0.1 for e in edges)
    normals = sorted(round(e.normal_angle / 90) % 4 for e in edges)  # dark to bright: outwards from the dark square
    assert normals == [0, 1, 2, 3]
    assert max(e.mtf50 for e in edges) / min(e.mtf50 for e in edges) < 1.02


def test_anisotropic_follows_an_elliptical_blur_that_the_symmetric_psf_averages() -> None:
    blur = "gauss:sigma=2,sigma_y=1,angle=0"
    photo = photograph(edge_chart(240, 240), blur)
    freqs = np.linspace(0, 0.5, 401)
    true = load_psf(blur).kernel
    wanted = [mtf50(freqs, directional_mtf(true, angle, freqs)) for angle in (0, 90)]
    elliptical = calibrate(photo, anisotropic=True)
    got = [mtf50(freqs, directional_mtf(elliptical.kernel, angle, freqs)) for angle in (0, 90)]
    assert got == pytest.approx(wanted, rel=0.05)
    symmetric = calibrate(photo)
    assert [mtf50(freqs, directional_mtf(symmetric.kernel, angle, freqs)) for angle in (0, 90)] != pytest.approx(wanted, rel=0.2)
    assert elliptical.extra["calibration"]["model"] == "elliptical"


def test_anisotropic_needs_edges_in_two_directions() -> None:
    with pytest.raises(InvalidOption, match="near-vertical and near-horizontal"):
        calibrate(photograph(edge_chart(160, 160, kind="edge"), "gauss:sigma=1"), anisotropic=True)


def test_roi_limits_the_search_and_keeps_image_coordinates() -> None:
    photo = photograph(edge_chart(240, 240), "gauss:sigma=1")
    edges = measure_edges(photo, roi=(0, 60, 110, 180))  # the square's left side only
    assert [e.orientation for e in edges] == ["vertical"]
    x0, y0, x1, y1 = edges[0].roi
    assert 0 <= x0 < 48 < x1 <= 110 and 60 <= y0 < y1 <= 180  # the side lies near x = 48
    with pytest.raises(InvalidOption, match="roi="):
        measure_edges(photo, roi=(0, 0, 500, 10))


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("image, says", [
    (np.full((120, 120, 3), 0.5, np.float32), "no edge found"),
    (np.random.default_rng(0).random((120, 120, 3)).astype(np.float32), "no edge long enough"),
    (edge_chart(200, 200, side=18), "no edge long enough"),  # a square of 18-px sides: too short
    (edge_chart(200, 200, tilt=0.4, kind="edge"), "too close to vertical"),
    (edge_chart(200, 200, tilt=43, kind="edge"), "too close to 45°"),
    (edge_chart(200, 200, tilt=26.565, kind="edge"), "bins empty"),  # tan = 1/2: pixels fall on two phases only
    (edge_chart(200, 200, kind="edge", levels=(0.0, 1.0)), "clipped"),
])
def test_images_without_a_usable_edge_are_refused_in_one_line(image: np.ndarray, says: str) -> None:
    photo = photograph(image, "gauss:sigma=1.2")
    with pytest.raises(EdgeError) as error:
        calibrate(photo)
    assert says in _one_line(error)


def test_a_curved_edge_is_refused() -> None:
    yy, xx = np.mgrid[0:200, 0:200]
    disk = np.where((yy - 100) ** 2 + (xx - 90) ** 2 < 60 ** 2, 0.2, 0.8).astype(np.float32)
    with pytest.raises(EdgeError) as error:
        calibrate(photograph(np.repeat(disk[..., None], 3, -1), "gauss:sigma=1.5"))
    assert "curved" in _one_line(error)


def test_target_page_has_a_10_mm_square_tilted_5_degrees() -> None:
    dpi = 300
    page = target_page(dpi)
    px = dpi / 25.4
    assert page.shape == (round(70 * px), round(100 * px)) and page.dtype == np.uint8
    top = page[: round(38 * px)]  # above the instructions
    assert (255 - top.astype(float)).sum() / 255 == pytest.approx((SQUARE_MM * px) ** 2, rel=0.01)
    edges = measure_edges(top.astype(np.float32)[..., None].repeat(3, -1) / 255 * 0.8 + 0.1)
    assert len(edges) == 4 and all(abs(abs(e.tilt) - TILT) < 0.1 for e in edges)


def test_target_png_says_its_dpi_and_refuses_a_bad_one(tmp_path) -> None:
    path = write_target(tmp_path / "target.png", 300)
    with Image.open(path) as image:
        assert image.info["dpi"] == pytest.approx((300, 300), abs=0.01)
        assert json.loads(image.info["meddeblur"])["operation"] == "calibration target"
    for dpi in (72, 10000, 600.5, True):
        with pytest.raises(InvalidOption, match="dpi="):
            write_target(tmp_path / "bad.png", dpi)
    assert not (tmp_path / "bad.png").exists()


def _save(array: np.ndarray, path) -> None:
    Image.fromarray(np.round(array * 255).astype(np.uint8)).save(path)


def test_cli_writes_a_psf_that_load_psf_reads_and_replaces_only_its_own_files(tmp_path, capsys) -> None:
    photo = tmp_path / "edge.png"
    _save(photograph(edge_chart(200, 200), "gauss:sigma=1.5+jpeg:quality=90"), photo)
    out, plot = tmp_path / "device.psf.json", tmp_path / "mtf.png"
    assert main(["calibrate", str(photo), "-o", str(out), "--plot", str(plot)]) == 0
    psf = load_psf(out)
    assert psf.mtf50 == pytest.approx(load_psf("gauss:sigma=1.5").mtf50, rel=0.05)
    record = json.loads(out.read_text())
    assert record["mtf50_cycles_per_pixel"] == pytest.approx(psf.mtf50)
    assert len(record["calibration"]["edges"]) == 4
    assert "MTF50 0.12" in capsys.readouterr().out
    assert plot.stat().st_size > 0
    assert main(["calibrate", str(photo), "-o", str(out), "--plot", str(plot), "--anisotropic"]) == 0  # its own files: replaced
    assert load_psf(out).extra["calibration"]["model"] == "elliptical"
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": true}')
    capsys.readouterr()
    assert main(["calibrate", str(photo), "-o", str(foreign)]) == 2
    assert "was not written by meddeblur" in capsys.readouterr().err and foreign.read_text() == '{"mine": true}'


def test_cli_refuses_in_one_line_with_exit_2(tmp_path, capsys) -> None:
    flat = tmp_path / "flat.png"
    _save(np.full((64, 64, 3), 0.5), flat)
    photo = tmp_path / "edge.png"
    _save(photograph(edge_chart(160, 160, kind="edge"), "gauss:sigma=1"), photo)
    for args, says in ((["calibrate", str(flat), "-o", str(tmp_path / "x.json")], "flat.png: no edge found"),
                       (["calibrate", str(photo), "-o", str(tmp_path / "x.json"), "--anisotropic"], "--anisotropic needs"),
                       (["calibrate", str(photo)], "-o"),
                       (["calibrate", str(photo), "-o", str(tmp_path / "x.npy")], "written as .json"),
                       (["calibrate", str(photo), "-o", str(tmp_path / "x.json"), "--plot", str(photo)], "is the input photo"),
                       (["calibrate", "--target", str(tmp_path / "t.png"), "--dpi", "50"], "--dpi 50"),
                       (["calibrate", "--target", str(tmp_path / "t.png"), "-o", str(tmp_path / "x.json")], "drop -o"),
                       (["calibrate", "--dpi", "600"], "--target")):
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "t.png").exists()


def test_cli_target_writes_the_png_and_prints_the_instructions(tmp_path, capsys) -> None:
    target = tmp_path / "target.png"
    assert main(["calibrate", "--target", str(target), "--dpi", "300"]) == 0
    assert "Print at 100 %" in capsys.readouterr().out
    with Image.open(target) as image:
        assert image.size == (round(100 * 300 / 25.4), round(70 * 300 / 25.4))
    target.write_bytes(b"not meddeblur's")
    assert main(["calibrate", "--target", str(target), "--dpi", "300"]) == 2  # another program's file: kept
    assert main(["calibrate", "--target", str(target), "--dpi", "300", "--overwrite"]) == 0
    assert main(["calibrate", "--target", str(target), "--dpi", "300"]) == 0  # its own file: replaced


def test_the_calibration_benchmark_runs_end_to_end(isic_images, tmp_path) -> None:
    calibration = importlib.import_module("benchmarks.calibration")
    assert calibration.main(["--parts", "soft", "--restorer", "wiener", "--limit", "1", "--val-limit", "1", "--out", str(tmp_path)]) == 0
    soft = json.loads((tmp_path / "calibration.json").read_text())["soft"]
    assert soft["test_images"] == 1 and set(soft["params"]["wiener"]) == {"nsr", "val_psnr"}
    row = soft["per_image"][0]
    assert 0.7 <= row["sigma"] <= 1.0 and row["calibrated_mtf50"] == pytest.approx(row["true_mtf50"], rel=0.05)
    assert soft["summary"]["wiener_calibrated_gain"] == pytest.approx(row["wiener_calibrated_psnr"] - row["device_psnr"], abs=1e-3)
    assert "## Soft device" in (tmp_path / "calibration.md").read_text()


def test_cli_plans_the_psf_and_its_figure_together_before_measuring(tmp_path, capsys) -> None:
    photo = tmp_path / "edge.png"
    _save(photograph(edge_chart(160, 160), "gauss:sigma=1.5"), photo)
    out, folder = tmp_path / "p.psf.json", tmp_path / "folder.png"
    folder.mkdir()
    assert main(["calibrate", str(photo), "-o", str(out), "--plot", f"{folder}/"]) == 2
    assert "folder.png: is a folder in the way" in capsys.readouterr().err
    assert not out.exists()  # the JSON is not written first and the figure found impossible after
    figure = tmp_path / "mtf.png"
    assert main(["calibrate", str(photo), "-o", str(out), "--plot", str(figure)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    # meddeblur's files, but of another kind: a calibration figure never replaces the calibrated PSF's place and back.
    assert main(["calibrate", str(photo), "-o", str(tmp_path / "q.psf.json"), "--plot", str(tmp_path / "r.png")]) == 0
    capsys.readouterr()
    deblurred = tmp_path / "deblurred.png"
    from meddeblur.io.encode import write_image
    from meddeblur.io.provenance import make_record

    write_image(deblurred, np.full((8, 8, 3), 0.5, np.float32), provenance=make_record("abc"))
    assert main(["calibrate", str(photo), "-o", str(out), "--plot", str(deblurred)]) == 2
    assert "is meddeblur's deblur output, not a calibration figure output" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_the_commands_the_target_prints_are_valid_commands() -> None:
    import shlex

    from meddeblur.cli.parser import build_parser
    from meddeblur.psf.target import INSTRUCTIONS

    commands = [line.split("meddeblur ", 1)[1].split("  (")[0] for line in INSTRUCTIONS if "meddeblur " in line and ". meddeblur" in line]
    assert [command.split()[0] for command in commands] == ["calibrate", "deblur"]
    for command in commands:
        build_parser().parse_args(shlex.split(command.replace("IMAGES", "photo.png")))  # exits 2 on a missing -o, say
