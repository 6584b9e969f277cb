"""Dataset folders: loading, resizing, dataset.toml, groups.csv, unlabeled images, bad input, the cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import harness.data.datasets as data
from harness.data.datasets import DataError, load_dataset, stratum_of
from harness.plugins import build_registry
from plugins.datasets import folder, phantom

# Only the two built-in dataset sources: fast, and independent of other plugins.
REGISTRY = build_registry(entry_points=[], extra_plugins=[("folder", folder), ("phantom", phantom)], env={})


def load(spec: str | None, **options):
    return load_dataset(spec, registry=REGISTRY, **options)


def write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_folder(root: Path, specs: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    """images/<id>.png (random, height x width) and masks/0/<id>.png (0/255, a rectangle; empty for normal)."""
    rng = np.random.default_rng(seed)
    for item_id, (h, w) in specs.items():
        write_image(root / "images" / f"{item_id}.png", rng.integers(0, 256, (h, w), dtype=np.uint8))
        mask = np.zeros((h, w), np.uint8)
        if not item_id.startswith("normal"):
            mask[h // 4 : h // 2, w // 4 : w // 2] = 255
        write_image(root / "masks" / "0" / f"{item_id}.png", mask)
    return root


SPECS = {"benign (1)": (30, 40), "benign (2)": (20, 20), "malignant (1)": (50, 30), "normal (1)": (24, 36)}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "ds", SPECS)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_load_folder(folder: Path, cache: Path) -> None:
    ds = load(str(folder), image_size=32, cache_dir=cache)
    assert ds.name == "ds"
    assert ds.ids == sorted(SPECS)
    assert ds.images.shape == (4, 1, 32, 32) and str(ds.images.dtype) == "torch.uint8"
    assert ds.masks.shape == (4, 1, 32, 32) and str(ds.masks.dtype) == "torch.bool"
    assert ds.strata == ["benign", "benign", "malignant", "normal"]
    assert ds.cases == ds.ids
    assert [m.shape for m in ds.native_masks] == [SPECS[i] for i in ds.ids]
    assert not ds.native_masks[3].any() and not ds.masks[3].any()
    assert ds.masks[0].any() and ds.boxes == [(0, 0, 32, 32)] * 4
    raw = (folder / "images" / "benign (1).png").read_bytes()
    assert ds.content_hashes["benign (1)"] == hashlib.sha256(raw).hexdigest()
    assert ds.options["resize"] == "squash" and ds.options["image_size"] == 32
    assert ds.spacing is None and len(ds.unlabeled) == 0


def test_pad_keeps_aspect_ratio(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "ds"
    write_image(root / "images" / "a.png", np.full((20, 40), 200, np.uint8))
    write_image(root / "masks" / "0" / "a.png", np.full((20, 40), 255, np.uint8))
    ds = load(str(root), image_size=32, resize="pad", cache_dir=cache)
    assert ds.boxes == [(8, 0, 16, 32)]
    image, mask = ds.images[0, 0].numpy(), ds.masks[0, 0].numpy()
    assert (image[8:24] == 200).all() and (image[:8] == 0).all() and (image[24:] == 0).all()
    assert mask[8:24].all() and not mask[:8].any() and not mask[24:].any()
    squash = load(str(root), image_size=32, resize="squash", cache_dir=cache)
    assert squash.boxes == [(0, 0, 32, 32)] and squash.masks.all()


def test_stratum_of() -> None:
    assert stratum_of("benign (4)") == "benign"
    assert stratum_of("case12_a") == "case"
    assert stratum_of("0001") == "all"


def test_masks_zero_one_and_threshold(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "ds"
    write_image(root / "images" / "a.png", np.zeros((16, 16), np.uint8))
    write_image(root / "masks" / "0" / "a.png", np.eye(16, dtype=np.uint8))  # values {0, 1}
    assert load(str(root), image_size=16, cache_dir=cache).native_masks[0].sum() == 16
    grey = np.zeros((16, 16), np.uint8)
    grey[:4], grey[4:8] = 100, 200
    write_image(root / "masks" / "0" / "a.png", grey)
    with pytest.raises(DataError, match="--mask-threshold"):
        load(str(root), image_size=16, cache_dir=cache)
    ds = load(str(root), image_size=16, mask_threshold=150, cache_dir=cache)
    assert ds.native_masks[0].sum() == 4 * 16


def _truncate(root: Path) -> str:
    path = root / "images" / "benign (1).png"
    path.write_bytes(path.read_bytes()[:60])
    return "benign (1).png"


def _garbage(root: Path) -> str:
    (root / "images" / "benign (2).png").write_bytes(b"not a png at all")
    return "benign (2).png"


def _size_mismatch(root: Path) -> str:
    write_image(root / "masks" / "0" / "benign (1).png", np.zeros((10, 10), np.uint8))
    return "benign (1).png"


def _bad_mask_values(root: Path) -> str:
    write_image(root / "masks" / "0" / "malignant (1).png", np.arange(50 * 30, dtype=np.uint8).reshape(50, 30))
    return "malignant (1).png"


def _image_without_mask(root: Path) -> str:
    (root / "masks" / "0" / "normal (1).png").unlink()
    return "normal (1).png"


def _mask_without_image(root: Path) -> str:
    (root / "images" / "normal (1).png").unlink()
    return "normal (1).png"


def _same_id_two_extensions(root: Path) -> str:
    Image.open(root / "images" / "benign (2).png").save(root / "images" / "benign (2).jpg")
    return "benign (2)"


def _empty_folder(root: Path) -> str:
    for path in [*(root / "images").iterdir(), *(root / "masks" / "0").iterdir()]:
        path.unlink()
    return "images"


def _masks_not_in_zero(root: Path) -> str:
    for path in (root / "masks" / "0").iterdir():
        path.rename(root / "masks" / path.name)
    (root / "masks" / "0").rmdir()
    return "masks/0"


def _unsupported_file(root: Path) -> str:
    (root / "images" / "notes.txt").write_text("hello")
    return "notes.txt"


@pytest.mark.parametrize(
    "breaker",
    [
        _truncate,
        _garbage,
        _size_mismatch,
        _bad_mask_values,
        _image_without_mask,
        _mask_without_image,
        _same_id_two_extensions,
        _empty_folder,
        _masks_not_in_zero,
        _unsupported_file,
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(folder: Path, cache: Path, breaker) -> None:
    named = breaker(folder)
    with pytest.raises(DataError) as info:
        load(str(folder), image_size=32, cache_dir=cache)
    assert named in str(info.value)
    assert not cache.exists()


def test_problems_are_listed_together(folder: Path, cache: Path) -> None:
    _truncate(folder)
    _bad_mask_values(folder)
    with pytest.raises(DataError) as info:
        load(str(folder), image_size=32, cache_dir=cache)
    assert len(info.value.problems) == 2 and "2 problem(s)" in str(info.value)


def test_a_bad_file_after_a_good_load_writes_no_entry(folder: Path, cache: Path) -> None:
    load(str(folder), image_size=32, cache_dir=cache)
    before = sorted(cache.rglob("*"))
    _truncate(folder)
    with pytest.raises(DataError):
        load(str(folder), image_size=32, cache_dir=cache)
    assert sorted(cache.rglob("*")) == before


def test_unlabeled_folder(folder: Path, cache: Path) -> None:
    plain = load(str(folder), image_size=16, cache_dir=cache)
    rng = np.random.default_rng(1)
    for name in ("u1", "u2", "u3"):
        write_image(folder / "unlabeled" / f"{name}.png", rng.integers(0, 256, (20, 24), dtype=np.uint8))
    ds = load(str(folder), image_size=16, cache_dir=cache)
    assert ds.unlabeled.shape == (3, 1, 16, 16) and ds.unlabeled_ids == ["u1", "u2", "u3"]
    assert ds.ids == plain.ids and set(ds.content_hashes) == {*ds.ids, "u1", "u2", "u3"}
    assert ds.fingerprint == plain.fingerprint  # splits cover labeled images only
    write_image(folder / "unlabeled" / "benign (1).png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="also in images/"):
        load(str(folder), image_size=16, cache_dir=cache)


def test_include_strata(folder: Path, cache: Path) -> None:
    ds = load(str(folder), image_size=16, include_strata=["benign", "malignant"], cache_dir=cache)
    assert ds.ids == ["benign (1)", "benign (2)", "malignant (1)"]
    assert ds.options["include_strata"] == ["benign", "malignant"]
    full = load(str(folder), image_size=16, cache_dir=cache)
    assert ds.fingerprint != full.fingerprint
    with pytest.raises(DataError, match="its strata are benign, malignant, normal"):
        load(str(folder), image_size=16, include_strata=["cyst"], cache_dir=cache)


def test_dataset_toml_defaults_and_explicit_arguments_win(folder: Path, cache: Path) -> None:
    (folder / "dataset.toml").write_text(
        'name = "mini"\nresize = "pad"\nchannels = 3\nnormalisation = "published"\nspacing = 0.1\n'
        'include_strata = ["benign", "cancer"]\nstrata = { malignant = "cancer" }\n'
    )
    ds = load(str(folder), image_size=16, cache_dir=cache)
    assert ds.name == "mini" and ds.spacing == 0.1
    assert ds.strata == ["benign", "benign", "cancer"]
    assert ds.options["resize"] == "pad" and ds.options["channels"] == 3
    assert ds.options["normalisation"] == "published"
    assert ds.boxes[0] != (0, 0, 16, 16)
    explicit = load(str(folder), image_size=16, resize="squash", include_strata=["benign"], cache_dir=cache)
    assert explicit.options["resize"] == "squash" and len(explicit) == 2
    (folder / "dataset.toml").write_text('resize = "stretch"\n')
    with pytest.raises(DataError, match="dataset.toml: resize"):
        load(str(folder), image_size=16, cache_dir=cache)
    (folder / "dataset.toml").write_text("colour = 1\n")
    with pytest.raises(DataError, match="unknown key 'colour'"):
        load(str(folder), image_size=16, cache_dir=cache)


def test_groups_csv(folder: Path, cache: Path) -> None:
    (folder / "groups.csv").write_text("id,stratum,case\nbenign (1).png,b,p1\nbenign (2),b,p1\nnormal (1),,p2\n")
    ds = load(str(folder), image_size=16, cache_dir=cache)
    assert ds.strata == ["b", "b", "malignant", "normal"]
    assert ds.cases == ["p1", "p1", "malignant (1)", "p2"]
    (folder / "groups.csv").write_text("id,case\nghost,p1\n")
    with pytest.raises(DataError, match="'ghost' is not an image"):
        load(str(folder), image_size=16, cache_dir=cache)


def test_cache_hit_and_invalidation(folder: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    real = data.decode_image

    def counting(raw: bytes, path: Path):
        decoded.append(path.stem)
        return real(raw, path)

    monkeypatch.setattr(data, "decode_image", counting)
    first = load(str(folder), image_size=32, cache_dir=cache)
    assert sorted(decoded) == sorted(SPECS)
    decoded.clear()
    second = load(str(folder), image_size=32, cache_dir=cache)
    assert decoded == []
    assert (first.images == second.images).all() and (first.masks == second.masks).all()
    assert all((a == b).all() for a, b in zip(first.native_masks, second.native_masks, strict=True))
    assert first.boxes == second.boxes and first.fingerprint == second.fingerprint

    write_image(folder / "images" / "benign (2).png", np.full((20, 20), 77, np.uint8))
    third = load(str(folder), image_size=32, cache_dir=cache)
    assert decoded == ["benign (2)"]  # only the changed file
    assert (third.images[1] == 77).all() and third.fingerprint != first.fingerprint
    decoded.clear()
    load(str(folder), image_size=16, cache_dir=cache)  # other parameters: another entry
    assert len(decoded) == len(SPECS)


def test_sources_by_name_and_path(folder: Path, tmp_path: Path, cache: Path) -> None:
    # the installed entry points (the real registry) provide both sources
    assert load_dataset(None, image_size=16, params={"count": 6, "size": 32}).name == "phantom"
    with pytest.raises(DataError, match="installed: .*folder.*phantom"):
        load("no-such-dataset", image_size=16)
    with pytest.raises(DataError, match="does not exist"):
        load(str(tmp_path / "missing" / "ds"), image_size=16)
    with pytest.raises(DataError, match="is a file"):
        load(str(folder / "images" / "benign (1).png"), image_size=16)
    with pytest.raises(DataError, match="--resize"):
        load(str(folder), image_size=16, resize="crop", cache_dir=cache)
    assert not cache.exists()


def test_raw_busi_layout_gets_a_hint(tmp_path: Path) -> None:
    write_image(tmp_path / "raw" / "benign" / "benign (1)_mask.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="import-busi"):
        load(str(tmp_path / "raw"), image_size=16)
