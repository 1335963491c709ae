import numpy as np
import pytest
import torch

from meddeblur.data.pairs import BLURRED_SUFFIXES, SHARP_SUFFIXES, PairDataset, augment_pair, pair_images, pair_key, split_names
from meddeblur.errors import UserError
from meddeblur.io.encode import write_image


def _image(path, seed=0, size=(24, 20)):
    rng = np.random.default_rng(seed)
    write_image(path, rng.random((*size, 3)).astype(np.float32))


@pytest.mark.parametrize("name,suffixes,key", [
    ("lesion_01_blurry.png", BLURRED_SUFFIXES, "lesion_01"),
    ("lesion_01_blurred.jpg", BLURRED_SUFFIXES, "lesion_01"),
    ("lesion_01_blur.tif", BLURRED_SUFFIXES, "lesion_01"),
    ("lesion_01_zamucena.bmp", BLURRED_SUFFIXES, "lesion_01"),
    ("lesion_01_BLUR.png", BLURRED_SUFFIXES, "lesion_01"),
    ("lesion_01_sharp.png", SHARP_SUFFIXES, "lesion_01"),
    ("lesion_01_ostra.jpeg", SHARP_SUFFIXES, "lesion_01"),
    ("lesion_01_gt.tiff", SHARP_SUFFIXES, "lesion_01"),
    ("lesion_01.png", SHARP_SUFFIXES, "lesion_01"),
    ("blur_lesion.png", BLURRED_SUFFIXES, "blur_lesion"),  # only a trailing suffix counts
])
def test_pair_key_strips_one_role_suffix(tmp_path, name, suffixes, key):
    assert pair_key(tmp_path / name, suffixes) == key


def test_pairing_across_formats_and_suffixes(tmp_path):
    for i, (b, s) in enumerate([("a_blurred.png", "a_sharp.png"), ("b_zamucena.jpg", "b_ostra.png"), ("c.tif", "c_gt.bmp")]):
        _image(tmp_path / "blurred" / b, i)
        _image(tmp_path / "sharp" / s, i)
    pairs = pair_images(tmp_path / "blurred", tmp_path / "sharp")
    assert [(p.name, p.blurred.name, p.sharp.name) for p in pairs] == [
        ("a", "a_blurred.png", "a_sharp.png"), ("b", "b_zamucena.jpg", "b_ostra.png"), ("c", "c.tif", "c_gt.bmp")]


def test_unmatched_names_are_an_error_listing_all(tmp_path):
    for name in ("a_blur.png", "x_blur.png", "y_blur.png"):
        _image(tmp_path / "blurred" / name)
    for name in ("a_sharp.png", "z_sharp.png"):
        _image(tmp_path / "sharp" / name)
    with pytest.raises(UserError) as error:
        pair_images(tmp_path / "blurred", tmp_path / "sharp")
    message = str(error.value)
    assert "\n" not in message
    assert "x_blur.png" in message and "y_blur.png" in message and "z_sharp.png" in message


def test_ambiguous_names_are_an_error(tmp_path):
    for name in ("a_blur.png", "a_blurred.png"):
        _image(tmp_path / "blurred" / name)
    _image(tmp_path / "sharp" / "a.png")
    with pytest.raises(UserError, match="ambiguous.*a_blur.png / a_blurred.png"):
        pair_images(tmp_path / "blurred", tmp_path / "sharp")


def test_split_is_70_20_10_deterministic_and_disjoint():
    names = [f"img{i:03d}" for i in range(200)]
    split = split_names(names, seed=42)
    assert [len(split[k]) for k in ("train", "val", "test")] == [140, 40, 20]
    assert split == split_names(list(reversed(names)), seed=42)  # input order does not matter
    assert split != split_names(names, seed=43)
    assert set(split["train"]) | set(split["val"]) | set(split["test"]) == set(names)
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])


def test_small_split_keeps_every_part_non_empty():
    split = split_names([f"p{i}" for i in range(8)], seed=42)
    assert all(split[k] for k in ("train", "val", "test"))
    with pytest.raises(UserError):
        split_names(["a", "b"])


def test_augmentation_applies_same_transform_to_both():
    image = torch.arange(3 * 8 * 6, dtype=torch.float32).reshape(3, 8, 6)
    seen = set()
    for seed in range(40):
        blurred, sharp = augment_pair(image, image + 1000, torch.Generator().manual_seed(seed))
        assert torch.equal(blurred + 1000, sharp)
        seen.add(tuple(blurred.flatten()[:4].tolist()) + tuple(blurred.shape))
    assert len(seen) == 8  # all 8 dihedral transforms occur (rot90 × flips)


def test_dataset_resizes_and_repeats_augmentation_per_epoch(tmp_path):
    for i in range(3):
        _image(tmp_path / "b" / f"p{i}.png", i, size=(48, 40))
        _image(tmp_path / "s" / f"p{i}.png", i + 10, size=(48, 40))
    pairs = pair_images(tmp_path / "b", tmp_path / "s")
    dataset = PairDataset(pairs, size=32, augment=True, seed=1)
    dataset.set_epoch(3)
    first = dataset[0]
    again = PairDataset(pairs, size=32, augment=True, seed=1)
    again.set_epoch(3)
    assert first[0].shape == (3, 32, 32)
    assert torch.equal(first[0], again[0][0]) and torch.equal(first[1], again[0][1])
    crops = PairDataset(pairs, size=None, crop=16, augment=True, seed=1)
    blurred, sharp = crops[1]
    assert blurred.shape == sharp.shape == (3, 16, 16)
