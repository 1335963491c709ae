"""meddeblur.monai inside real MONAI pipelines: LoadImaged → … → Deblurd in a Compose, a Dataset and its DataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

monai = pytest.importorskip("monai", reason="meddeblur.monai needs the [monai] extra (part of [test])")
from monai.data import DataLoader, Dataset, MetaTensor  # noqa: E402
from monai.transforms import Compose, EnsureTyped, LoadImaged, ScaleIntensityRanged  # noqa: E402

import meddeblur  # noqa: E402
from meddeblur.data.synthetic import synthetic_dermoscopy  # noqa: E402
from meddeblur.monai import PROVENANCE_KEY, Deblur, Deblurd  # noqa: E402

# MONAI's DICOM reader looks for NVIDIA's nvImageCodec whenever pydicom is installed, and warns that it is absent.
pytestmark = pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")


@pytest.fixture(scope="module")
def deblurrer():
    return meddeblur.Deblurrer.load(device="cpu")


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("monai")
    paths = []
    for seed in range(2):
        path = folder / f"lesion{seed}.png"
        Image.fromarray(np.round(synthetic_dermoscopy(40, 56, seed=seed) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def test_deblurd_in_a_compose_keeps_metadata_and_adds_provenance(pngs, deblurrer):
    pipeline = Compose([
        LoadImaged(keys="image", image_only=True, ensure_channel_first=True),
        ScaleIntensityRanged(keys="image", a_min=0, a_max=255, b_min=0, b_max=1),
        Deblurd(keys="image", deblurrer=deblurrer),
        EnsureTyped(keys="image"),
    ])
    out = pipeline({"image": str(pngs[0]), "label": 1})
    image = out["image"]
    assert isinstance(image, MetaTensor) and image.shape == (3, 56, 40) and image.dtype == torch.float32  # MONAI: (C, W, H)
    assert image.meta["filename_or_obj"] == str(pngs[0]) and out["label"] == 1
    assert image.meta[PROVENANCE_KEY]["model_id"] == deblurrer.model_id
    assert "not for diagnosis alone" in image.meta[PROVENANCE_KEY]["note"]
    assert image.meta[PROVENANCE_KEY] == deblurrer.provenance
    # The same pixels as the Deblurrer gives on the plain tensor: the transform adds no processing of its own.
    loaded = Compose(pipeline.transforms[:2])({"image": str(pngs[0])})["image"]
    assert torch.equal(image.as_tensor(), deblurrer(loaded.as_tensor()))
    assert not torch.equal(image.as_tensor(), loaded.as_tensor())  # and it did deblur


def test_value_range_takes_loadimage_floats_as_they_come(pngs, deblurrer):
    raw = LoadImaged(keys="image", image_only=True, ensure_channel_first=True)({"image": str(pngs[1])})["image"]  # 0..255 floats
    out = Deblur(value_range=(0, 255), deblurrer=deblurrer)(raw)
    direct = deblurrer(raw.as_tensor() / 255) * 255
    assert isinstance(out, MetaTensor) and float((out.as_tensor() - direct).abs().max()) < 1e-3
    assert out.meta["filename_or_obj"] == str(pngs[1]) and PROVENANCE_KEY not in raw.meta  # the input's meta is not touched
    with pytest.raises(ValueError, match=r"value_range=\(0.0, 1.0\) \(found \d+\.\.\d+\).*value_range=\(0, 255\)"):
        Deblur(deblurrer=deblurrer)(raw)


def test_numpy_integers_and_plain_tensors_in_a_dataset_and_dataloader(deblurrer):
    grey = (synthetic_dermoscopy(48, 32, seed=3)[..., :1] * 65535).round().astype(np.uint16).transpose(2, 0, 1)  # (1, H, W)
    rgb = (synthetic_dermoscopy(48, 32, seed=4) * 255).round().astype(np.uint8).transpose(2, 0, 1)
    out = Compose([Deblur(deblurrer=deblurrer)])(grey)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint16 and out.shape == grey.shape
    assert np.array_equal(out[0], deblurrer(grey[0]))  # as the Deblurrer does a grey (H, W) array
    data = [{"image": rgb, "id": 0}, {"image": torch.from_numpy(rgb.astype(np.float32) / 255), "id": 1}]
    loader = DataLoader(Dataset(data, transform=Deblurd(keys="image", deblurrer=deblurrer)), batch_size=1)
    batches = list(loader)
    assert [b["image_meta_dict"][PROVENANCE_KEY]["model_id"][0] for b in batches] == [deblurrer.model_id] * 2
    assert batches[0]["image"].dtype == torch.uint8 and batches[1]["image"].dtype == torch.float32


def test_what_the_network_cannot_take_is_a_precise_value_error(deblurrer):
    transform = Deblur(deblurrer=deblurrer)
    with pytest.raises(ValueError, match=r"img: a 2-D channel-first image \(C, H, W\).*\(1, 32, 32, 8\).*slices"):
        transform(torch.zeros(1, 32, 32, 8))
    with pytest.raises(ValueError, match="img: dtype int32 is not supported"):
        transform(np.zeros((3, 32, 32), np.int32))
    with pytest.raises(ValueError, match="NaN or infinity"):
        transform(torch.full((3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="value_range"):
        Deblur(value_range=(1, 1), deblurrer=deblurrer)


def test_a_none_meta_dict_is_taken_as_absent(deblurrer):
    rgb = (synthetic_dermoscopy(32, 40, seed=5) * 255).round().astype(np.uint8).transpose(2, 0, 1)
    out = Deblurd(keys="image", deblurrer=deblurrer)({"image": rgb, "image_meta_dict": None})
    assert out["image_meta_dict"] == {PROVENANCE_KEY: deblurrer.provenance}
    kept = Deblurd(keys="image", deblurrer=deblurrer)({"image": rgb, "image_meta_dict": {"spacing": 0.1}})["image_meta_dict"]
    assert kept == {"spacing": 0.1, PROVENANCE_KEY: deblurrer.provenance}
    with pytest.raises(ValueError, match=r"data\['image_meta_dict'\]: the metadata of 'image' must be a dict \(or None\), got list"):
        Deblurd(keys="image", deblurrer=deblurrer)({"image": rgb, "image_meta_dict": ["not", "a", "dict"]})


@pytest.mark.parametrize("dtype, conversion", [(torch.uint8, "img.float() / 255"), (torch.uint16, "img.float() / 65535"),
                                               (torch.int32, "img.float(), scaled")])
def test_integer_tensors_are_refused_by_the_transform_as_by_the_deblurrer(deblurrer, dtype, conversion):
    image = torch.zeros(3, 32, 40, dtype=dtype)
    for transform in (Deblur(deblurrer=deblurrer), Deblurd(keys="image", deblurrer=deblurrer)):
        for given in (image, MetaTensor(image)):
            with pytest.raises(ValueError) as refused:
                transform({"image": given} if isinstance(transform, Deblurd) else given)
            message = str(refused.value)
            assert message.startswith("img: integer tensors are refused; convert it to float in [0, 1] first") and conversion in message
            assert "\n" not in message
    with pytest.raises(ValueError, match=r"image: integer tensors are refused; convert it to float in \[0, 1\] first \(image\.float\(\)"):
        deblurrer(image)  # the same rule, in the Deblurrer's words
    with pytest.raises(ValueError, match=r"convert it to float in value_range=\(0, 255\) first \(img\.float\(\), scaled\)"):
        Deblur(value_range=(0, 255), deblurrer=deblurrer)(image)
    # numpy integers stay what image files hold: scaled by their range, in both
    pixels = np.zeros((3, 32, 40), np.uint8)
    assert Deblur(deblurrer=deblurrer)(pixels).dtype == np.uint8 and deblurrer(pixels[0]).dtype == np.uint8
