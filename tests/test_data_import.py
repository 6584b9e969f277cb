"""``import_busi``: the raw BUSI layout to images/ + masks/0/, masks merged with OR, atomic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data.busi_import import import_busi
from harness.data.datasets import DataError


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def raw_busi(root: Path) -> Path:
    """A tiny raw release: one benign image with three mask files, one malignant, one normal."""
    rng = np.random.default_rng(0)
    for cls, n in (("benign", 1), ("malignant", 1), ("normal", 1)):
        save(root / cls / f"{cls} ({n}).png", rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        save(root / cls / f"{cls} ({n})_mask.png", np.zeros((12, 16), np.uint8))
    first, second, third = (np.zeros((12, 16), np.uint8) for _ in range(3))
    first[0:3, 0:3], second[5:7, 5:9], third[10:12, 14:16] = 255, 255, 255
    save(root / "benign" / "benign (1)_mask.png", first)
    save(root / "benign" / "benign (1)_mask_1.png", second)
    save(root / "benign" / "benign (1)_mask_2.png", third)
    malignant = np.zeros((12, 16), np.uint8)
    malignant[2:9, 3:12] = 255
    save(root / "malignant" / "malignant (1)_mask.png", malignant)
    return root


def test_import_merges_masks_and_copies_images(tmp_path: Path) -> None:
    src = raw_busi(tmp_path / "Dataset_BUSI_with_GT" / "inner")  # a wrapper folder is descended into
    dst = tmp_path / "busi"
    result = import_busi(tmp_path / "Dataset_BUSI_with_GT", dst)
    assert result.per_class == {"benign": 1, "malignant": 1, "normal": 1} and result.n_images == 3
    assert result.merged == {"benign (1)": 3}
    names = sorted(p.name for p in (dst / "images").iterdir())
    assert names == ["benign (1).png", "malignant (1).png", "normal (1).png"]
    assert (dst / "images" / "benign (1).png").read_bytes() == (src / "benign" / "benign (1).png").read_bytes()
    merged = np.asarray(Image.open(dst / "masks" / "0" / "benign (1).png"))
    assert set(np.unique(merged)) == {0, 255}
    assert merged[0:3, 0:3].all() and merged[5:7, 5:9].all() and merged[10:12, 14:16].all()
    assert (merged > 0).sum() == 9 + 8 + 4
    assert not np.asarray(Image.open(dst / "masks" / "0" / "normal (1).png")).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset_BUSI_with_GT", "busi"]  # no temp folder left


def test_import_into_an_existing_empty_folder(tmp_path: Path) -> None:
    dst = tmp_path / "busi"
    dst.mkdir()
    import_busi(raw_busi(tmp_path / "raw"), dst)
    assert len(list((dst / "masks" / "0").iterdir())) == 3


def test_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    dst = tmp_path / "busi"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        import_busi(raw_busi(tmp_path / "raw"), dst)
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    "breaker, message",
    [
        (lambda src: (src / "normal" / "normal (1)_mask.png").unlink(), "image without mask"),
        (lambda src: (src / "normal" / "normal (1).png").unlink(), "mask without image"),
        (lambda src: save(src / "malignant" / "malignant (1)_mask.png", np.zeros((5, 5), np.uint8)), "must match"),
        (lambda src: (src / "benign" / "benign (1)_mask_1.png").write_bytes(b"junk"), "unreadable"),
    ],
)
def test_bad_release_leaves_nothing_behind(tmp_path: Path, breaker, message: str) -> None:
    src = raw_busi(tmp_path / "raw")
    breaker(src)
    with pytest.raises(DataError, match=message):
        import_busi(src, tmp_path / "out" / "busi")
    assert not (tmp_path / "out").exists()
