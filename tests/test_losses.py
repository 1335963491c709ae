"""The reference loss: weights, VGG19 loading/lookup, freezing and gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from meddeblur import losses
from meddeblur.errors import UserError
from meddeblur.losses import (
    CAFFE_SCALE,
    DeblurLoss,
    LossWeights,
    VGG19Features,
    build_loss,
    find_vgg19_weights,
    load_vgg19_features,
)
from meddeblur.metrics import ssim


@pytest.fixture(scope="module")
def vgg_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in VGG19Features().state_dict().items()}


@pytest.fixture
def vgg_file(tmp_path: Path, vgg_state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "vgg19.pth"
    torch.save(vgg_state, path)
    return path


@pytest.fixture
def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)


def test_state_dict_uses_torchvision_keys(vgg_state: dict[str, torch.Tensor]) -> None:
    assert sorted(vgg_state, key=lambda k: (int(k.split(".")[1]), k)) == [
        f"features.{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14) for p in ("bias", "weight")
    ]


def test_load_and_perceptual(vgg_file: Path, vgg_state, images) -> None:
    vgg = load_vgg19_features(vgg_file)
    assert torch.equal(vgg.features[14].weight, vgg_state["features.14.weight"])
    feats = vgg(images[0])
    assert [tuple(f.shape) for f in feats] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8)]
    assert all((f >= 0).all() for f in feats)  # post-ReLU taps
    loss = DeblurLoss(vgg=vgg)
    assert loss.perceptual(*images).item() > 0
    assert loss.perceptual(images[0], images[0].clone()).item() == 0


def test_terms_combine_with_weights(vgg_file: Path, images) -> None:
    w = LossWeights(ssim=0.85, l1=0.15, perceptual=1e-3)
    loss = DeblurLoss(w, load_vgg19_features(vgg_file))
    total, terms = loss(*images)
    assert total.dim() == 0
    assert set(terms) == {"ssim", "l1", "mse", "psnr", "perceptual"}
    assert terms["mse"] == terms["psnr"] == 0.0  # weight 0 by default: not computed
    assert all(isinstance(v, float) for v in terms.values())
    expect = 0.85 * (1 - terms["ssim"]) + 0.15 * terms["l1"] + 1e-3 * terms["perceptual"]
    assert total.item() == pytest.approx(expect, rel=1e-5)
    assert terms["ssim"] == pytest.approx(ssim(*images).mean().item(), abs=1e-7)
    assert terms["l1"] == pytest.approx((images[0] - images[1]).abs().mean().item(), abs=1e-7)
    assert terms["perceptual"] > 0


def test_mse_term(images) -> None:
    loss = DeblurLoss(LossWeights(ssim=0.0, l1=0.5, perceptual=0.0, mse=2.0))
    total, terms = loss(*images)
    mse = ((images[0] - images[1]) ** 2).mean().item()
    assert terms["mse"] == pytest.approx(mse, rel=1e-6)
    assert total.item() == pytest.approx(0.5 * terms["l1"] + 2.0 * mse, rel=1e-6)
    assert loss.describe().startswith("loss = 0.5·L1 + 2·MSE")


def test_psnr_term_is_the_mean_per_image_psnr(images) -> None:
    from meddeblur.metrics import psnr

    loss = DeblurLoss(LossWeights(ssim=0.0, l1=0.0, perceptual=0.0, psnr=0.5))
    pred, target = images
    total, terms = loss(pred, target)
    assert terms["psnr"] == pytest.approx(psnr(pred, target).mean().item(), abs=1e-3)
    assert total.item() == pytest.approx(-0.5 * terms["psnr"], rel=1e-6)
    assert DeblurLoss(LossWeights(0.0, 0.0, 0.0, psnr=1.0))(target, target)[1]["psnr"] == pytest.approx(60.0)  # PSNR_LOSS_EPS cap
    assert loss.describe().startswith("loss = 0.5·(−PSNR dB)")


def test_mse_leaves_the_identity_where_l1_stays() -> None:
    # Why the term exists (DeblurLoss docstring): one detail the target wants sharper, one already as sharp as
    # its target. A first small unsharp-masking step raises L1 (every pixel it changes wrongly costs a full unit)
    # and lowers MSE (those pixels' cost is quadratic, so near 0 for a small step).
    image = torch.zeros(1, 1, 24, 24)
    image[..., 6, 6] = image[..., 17, 17] = 0.5
    target = image.clone()
    target[..., 6, 6] = 0.6
    blurred = torch.nn.functional.avg_pool2d(image, 5, 1, 2, count_include_pad=False)
    amount = torch.tensor(1e-3, requires_grad=True)
    for weights, falls in ((LossWeights(ssim=0.0, l1=1.0, perceptual=0.0), False),
                           (LossWeights(ssim=0.0, l1=0.0, perceptual=0.0, mse=1.0), True)):
        pred = image + amount * (image - blurred)
        (grad,) = torch.autograd.grad(DeblurLoss(weights)(pred, target)[0], amount)
        assert (grad.item() < 0) is falls, (weights, grad.item())


def test_perceptual_scale(vgg_file: Path, images) -> None:
    vgg = load_vgg19_features(vgg_file)
    raw = sum(torch.mean((a - b) ** 2) for a, b in zip(vgg(images[0]), vgg(images[1])))
    got = DeblurLoss(vgg=vgg).perceptual(*images)
    assert got.item() == pytest.approx(CAFFE_SCALE * raw.item(), rel=1e-5)
    assert CAFFE_SCALE == pytest.approx(3321.2169)  # (255 * 0.226) ** 2


def test_zero_weight_skips_term(vgg_file: Path, images, monkeypatch) -> None:
    loss = DeblurLoss(LossWeights(perceptual=0.0), load_vgg19_features(vgg_file))

    def boom(*_a, **_k):
        raise AssertionError("perceptual computed despite weight 0")

    monkeypatch.setattr(loss, "perceptual", boom)
    total, terms = loss(*images)
    assert terms["perceptual"] == 0.0
    assert total.item() == pytest.approx(0.85 * (1 - terms["ssim"]) + 0.15 * terms["l1"], rel=1e-6)
    assert "perceptual term off" in loss.describe()


def test_without_vgg(images) -> None:
    loss = DeblurLoss()
    total, terms = loss(*images)
    assert terms["perceptual"] == 0.0
    assert total.item() == pytest.approx(0.85 * (1 - terms["ssim"]) + 0.15 * terms["l1"], rel=1e-6)
    assert loss.describe() == (
        "loss = 0.85·(1−SSIM) + 0.15·L1 (perceptual term off: no VGG19 weights given)"
    )


def test_describe_with_vgg(vgg_file: Path) -> None:
    text = DeblurLoss(vgg=load_vgg19_features(vgg_file)).describe()
    assert text == f"loss = 0.85·(1−SSIM) + 0.15·L1 + 1e-06·VGG19 perceptual (weights: {vgg_file})"


def test_gradient_flows_and_vgg_frozen(vgg_file: Path, images) -> None:
    loss = DeblurLoss(vgg=load_vgg19_features(vgg_file))
    loss.train()
    assert loss.vgg is not None and not loss.vgg.training
    assert all(not p.requires_grad for p in loss.vgg.parameters())
    pred = images[0].clone().requires_grad_(True)
    total, _ = loss(pred, images[1])
    total.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.vgg.parameters())


def test_full_torchvision_dict_loads(tmp_path: Path, vgg_state) -> None:
    full = dict(vgg_state)
    # Deeper conv layers and the classifier exist in real files and must be ignored.
    full["features.16.weight"] = torch.zeros(1)
    full["features.34.bias"] = torch.zeros(1)
    full["classifier.0.weight"] = torch.zeros(2, 2)
    full["classifier.6.bias"] = torch.zeros(2)
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(full, path)
    vgg = load_vgg19_features(path)
    assert torch.equal(vgg.features[0].bias, vgg_state["features.0.bias"])


def test_features_only_and_safetensors(tmp_path: Path, vgg_state) -> None:
    from safetensors.torch import save_file

    bare = {k.removeprefix("features."): v for k, v in vgg_state.items()}
    torch.save(bare, tmp_path / "bare.pt")
    assert torch.equal(load_vgg19_features(tmp_path / "bare.pt").features[2].weight,
                       vgg_state["features.2.weight"])
    save_file(vgg_state, str(tmp_path / "w.safetensors"))
    assert torch.equal(load_vgg19_features(tmp_path / "w.safetensors").features[5].weight,
                       vgg_state["features.5.weight"])


def _assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg


def test_bad_files(tmp_path: Path, vgg_state) -> None:
    wrong = dict(vgg_state)
    wrong["features.5.weight"] = torch.zeros(128, 32, 3, 3)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(UserError) as err:
        load_vgg19_features(tmp_path / "wrong.pth")
    _assert_one_line(err, "wrong.pth", "features.5.weight")

    partial = {k: v for k, v in vgg_state.items() if not k.startswith("features.14.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(UserError) as err:
        load_vgg19_features(tmp_path / "partial.pth")
    _assert_one_line(err, "partial.pth", "missing")

    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(UserError) as err:
        load_vgg19_features(tmp_path / "list.pth")
    _assert_one_line(err, "list.pth", "state dict")

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint\nat all")
    with pytest.raises(UserError) as err:
        load_vgg19_features(tmp_path / "junk.pth")
    _assert_one_line(err, "junk.pth", "cannot read")


def test_find_explicit(tmp_path: Path, vgg_file: Path) -> None:
    assert find_vgg19_weights(vgg_file) == vgg_file
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError) as err:
        find_vgg19_weights(missing)
    _assert_one_line(err, str(missing), "vgg19_weights=")


def test_find_hub_cache(tmp_path: Path, monkeypatch, vgg_state) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = tmp_path / "hub" / "checkpoints" / losses.VGG19_HUB_FILENAME
    with pytest.raises(UserError) as err:
        find_vgg19_weights(None)
    _assert_one_line(err, str(expected), "vgg19_weights=FILE")

    expected.parent.mkdir(parents=True)
    torch.save(vgg_state, expected)
    assert find_vgg19_weights(None) == expected


def test_find_respects_torch_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(UserError) as err:
        find_vgg19_weights(None)
    _assert_one_line(err, str(tmp_path / "th" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"))


def test_build_loss(tmp_path: Path, monkeypatch, vgg_file: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty"))
    assert build_loss(LossWeights(), None, use_perceptual=False).vgg is None
    with pytest.raises(UserError):
        build_loss(LossWeights(), None, use_perceptual=True)
    loss = build_loss(LossWeights(), vgg_file, use_perceptual=True)
    assert loss.vgg is not None and loss.vgg.source == vgg_file
