"""Splits: partition, stratification, grouping by duplicates and cases, nested labels, files, imports."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from harness.api import SegDataset
from harness.data.datasets import DataError, assemble_dataset
from harness.data.splits import fold_parts, load_split, make_split, n_folds, save_split, split_from_lists, split_hash

FRACTIONS = (0.125, 0.25, 0.5, 1.0)


def synthetic(
    counts: dict[str, int] | None = None,
    dups: list[tuple[str, str]] = (),
    cases: dict[str, str] | None = None,
    size: int = 32,
) -> SegDataset:
    """Distinct smooth random images; each (a, b) in ``dups`` makes b a copy of a (another file)."""
    counts = counts or {"benign": 24, "malignant": 12, "normal": 8}
    ids = [f"{s} ({k + 1})" for s, n in counts.items() for k in range(n)]
    rng = np.random.default_rng(0)
    images = {}
    for i in ids:
        field = ndimage.gaussian_filter(rng.standard_normal((size, size)), 2.5)
        images[i] = ((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)
    for a, b in dups:
        images[b] = images[a].copy()
    masks = [np.zeros((size, size), bool) for _ in ids]
    return assemble_dataset(
        name="synthetic",
        ids=ids,
        native_images=[images[i] for i in ids],
        native_masks=masks,
        strata=[i.split()[0] for i in ids],
        cases=[(cases or {}).get(i, i) for i in ids],
        content_hashes={i: f"hash-{i}" for i in ids},
        options={"image_size": size, "resize": "squash"},
    )


DUPS = [("benign (1)", "benign (2)"), ("benign (2)", "benign (3)"), ("benign (5)", "malignant (1)")]
CASES = {"normal (1)": "p1", "normal (2)": "p1", "benign (9)": "p1"}


@pytest.fixture(scope="module")
def grouped() -> SegDataset:
    return synthetic(dups=DUPS, cases=CASES)


@pytest.fixture(scope="module")
def kfold(grouped: SegDataset) -> dict:
    return make_split(grouped, k=4, label_draws=2)


def part_of(fold: dict) -> dict[str, str]:
    return {i: name for name in ("train", "val", "test") for i in fold[name]}


def test_kfold_partitions_the_data(grouped: SegDataset, kfold: dict) -> None:
    assert kfold["protocol"] == "kfold" and n_folds(kfold) == 4 and not kfold["selection_is_test"]
    tests = [i for fold in kfold["folds"] for i in fold["test"]]
    assert sorted(tests) == sorted(grouped.ids) and len(tests) == len(set(tests))
    for fold in kfold["folds"]:
        train, val, test = (set(fold[k]) for k in ("train", "val", "test"))
        assert not (train & val or train & test or val & test)
        assert train | val | test == set(grouped.ids)
        assert len(val) == pytest.approx(0.1 * (len(train) + len(val)), abs=3)


def test_kfold_is_stratified() -> None:
    ds = synthetic()
    split = make_split(ds, k=4)
    for fold in split["folds"]:
        counts = Counter(i.split()[0] for i in fold["test"])
        assert counts == {"benign": 6, "malignant": 3, "normal": 2}


def test_duplicates_and_cases_never_cross(kfold: dict) -> None:
    together = [["benign (1)", "benign (2)", "benign (3)"], ["benign (5)", "malignant (1)"], list(CASES)]
    for fold in kfold["folds"]:
        where = part_of(fold)
        for group in together:
            assert len({where[i] for i in group}) == 1, group
    dup = kfold["duplicates"]
    assert sorted(map(sorted, dup["clusters"])) == [
        ["benign (1)", "benign (2)", "benign (3)"],
        ["benign (5)", "malignant (1)"],
    ]
    assert dup["label_conflicts"] == [
        {"ids": ["benign (5)", "malignant (1)"], "strata": ["benign", "malignant"], "majority": "benign"}
    ]
    assert kfold["groups"]["benign (9)"] == kfold["groups"]["normal (1)"]
    assert any("label conflicts" in w for w in kfold["warnings"])


def test_labeled_subsets_are_nested_stratified_and_drawn_independently(kfold: dict) -> None:
    for f in range(n_folds(kfold)):
        train = set(kfold["folds"][f]["train"])
        for draw in range(2):
            parts = [fold_parts(kfold, f, fraction, draw) for fraction in FRACTIONS]
            for small, large in zip(parts, parts[1:], strict=False):
                assert set(small.labeled) < set(large.labeled)
            for p, fraction in zip(parts, FRACTIONS, strict=True):
                assert len(p.labeled) == max(1, math.floor(fraction * len(train)))
                assert set(p.labeled) | set(p.unlabeled) == train and not set(p.labeled) & set(p.unlabeled)
                assert p.val == kfold["folds"][f]["val"] and not p.selection_is_test
            assert set(parts[-1].labeled) == train and parts[-1].unlabeled == []
            half = Counter(i.split()[0] for i in parts[2].labeled)
            share = Counter(i.split()[0] for i in train)
            for stratum, n in share.items():
                assert abs(half[stratum] - n / len(train) * len(parts[2].labeled)) <= 2
        assert fold_parts(kfold, f, 0.25, 0).labeled != fold_parts(kfold, f, 0.25, 1).labeled


def test_deterministic_and_seeded(grouped: SegDataset, kfold: dict) -> None:
    again = make_split(grouped, k=4, label_draws=2)
    assert again == kfold and split_hash(again) == split_hash(kfold)
    other = make_split(grouped, k=4, label_draws=2, seed=1)
    assert split_hash(other) != split_hash(kfold)
    assert [f["test"] for f in other["folds"]] != [f["test"] for f in kfold["folds"]]


def test_val_carved_from_the_labeled_budget(grouped: SegDataset) -> None:
    split = make_split(grouped, k=4, val_from="labeled", val_fraction=0.2)
    assert all(fold["val"] == [] for fold in split["folds"])
    for f in range(4):
        fold = split["folds"][f]
        parts = [fold_parts(split, f, fraction, 0) for fraction in FRACTIONS]
        for p in parts:
            assert p.val and not set(p.val) & set(p.labeled) and not set(p.val) & set(p.unlabeled)
            assert set(p.labeled) | set(p.unlabeled) | set(p.val) == set(fold["train"])
            groups = split["groups"]
            val_groups = {groups.get(i, i) for i in p.val}
            assert not any(groups.get(i, i) in val_groups for i in p.labeled + p.unlabeled)
        for small, large in zip(parts, parts[1:], strict=False):
            assert set(small.labeled) <= set(large.labeled) and set(small.val) <= set(large.val)
        assert len(parts[-1].val) == pytest.approx(0.2 * len(fold["train"]), abs=3)
    with pytest.raises(DataError, match="too small to carve"):
        fold_parts(split, 0, 0.01, 0)


def test_paper_like_reproduces_the_published_permutation() -> None:
    ds = synthetic()
    split = make_split(ds, protocol="paper-like", dup_threshold=None)
    assert split["protocol"] == "paper-like" and split["selection_is_test"] and "test set" in split["note"]
    assert n_folds(split) == 3 and split["parameters"]["split_seeds"] == [41, 64, 1337]
    n_test = math.ceil(0.3 * len(ds))
    ids = sorted(ds.ids)
    for fold, seed in zip(split["folds"], (41, 64, 1337), strict=True):
        expected = {ids[k] for k in np.random.RandomState(seed).permutation(len(ids))[:n_test]}
        assert set(fold["test"]) == expected and fold["val"] == fold["test"]
        parts = fold_parts(split, fold["index"], 0.5, 0)
        assert parts.selection_is_test and parts.val == parts.test
    with pytest.raises(DataError, match="paper-like"):
        make_split(ds, protocol="paper-like", val_from="labeled")


def test_paper_like_keeps_groups_together(grouped: SegDataset) -> None:
    split = make_split(grouped, protocol="paper-like")
    for fold in split["folds"]:
        where = {i: ("test" if i in fold["test"] else "train") for i in grouped.ids}
        assert where["benign (1)"] == where["benign (2)"] == where["benign (3)"]
        assert where["normal (1)"] == where["benign (9)"]


def test_save_load_and_fingerprint_check(tmp_path: Path, grouped: SegDataset, kfold: dict) -> None:
    path = tmp_path / "splits" / "kfold.json"
    save_split(kfold, path)
    assert [p.name for p in path.parent.iterdir()] == ["kfold.json"]
    assert load_split(path, grouped) == kfold
    changed = synthetic(dups=DUPS, cases=CASES)
    changed.content_hashes["benign (4)"] = "edited"
    changed.fingerprint = "different"
    changed.ids.remove("normal (8)")
    with pytest.raises(DataError, match=r"changed 1: benign \(4\).*missing from the data 1: normal \(8\)"):
        load_split(path, changed)
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "nope.json", grouped)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot be read"):
        load_split(tmp_path / "bad.json", grouped)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"protocol": "loo"}, "--protocol"),
        ({"k": 1}, "at least 2 folds"),
        ({"k": 100}, "independent groups"),
        ({"val_fraction": 0.0}, "--val-fraction"),
        ({"val_from": "test"}, "--val-from"),
        ({"label_draws": 0}, "--label-draws"),
        ({"hash_size": 1}, "--hash-size"),
    ],
)
def test_bad_split_options(grouped: SegDataset, options: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        make_split(grouped, **options)


def test_bad_fold_parts_requests(kfold: dict) -> None:
    with pytest.raises(DataError, match="fold 9"):
        fold_parts(kfold, 9, 0.5, 0)
    with pytest.raises(DataError, match="fraction"):
        fold_parts(kfold, 0, 0.0, 0)
    with pytest.raises(DataError, match="draw 5"):
        fold_parts(kfold, 0, 0.5, 5)


def test_a_chaining_cluster_is_reported() -> None:
    chain = [(f"benign ({k})", f"benign ({k + 1})") for k in range(1, 12)]
    split = make_split(synthetic(dups=chain), k=5)
    assert split["duplicates"]["largest_cluster"] == 12
    assert any("more than 1/5" in w for w in split["warnings"])


def write_lists(folder: Path, folds: list[tuple[list[str], list[str]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n, (train, val) in enumerate(folds, start=1):
        (folder / f"busi_train{n}.txt").write_text("\n".join(train) + "\n")
        (folder / f"busi_val{n}.txt").write_text("\n".join(val) + "\n")


def test_from_published_lists(tmp_path: Path, grouped: SegDataset) -> None:
    ids = list(grouped.ids)
    rng = np.random.default_rng(5)
    folds = []
    for _ in range(3):
        order = [ids[k] for k in rng.permutation(len(ids))]
        folds.append((order[:30], order[30:]))
    write_lists(tmp_path / "lists", folds)
    split = split_from_lists(grouped, [tmp_path / "lists"])
    assert split["protocol"] == "lists" and split["selection_is_test"] and n_folds(split) == 3
    for fold, (train, val) in zip(split["folds"], folds, strict=True):
        assert set(fold["train"]) == set(train) and set(fold["test"]) == set(val) == set(fold["val"])
        assert fold_parts(split, fold["index"], 0.5, 0).labeled == train[:15]  # the published choice
        assert sorted(fold_parts(split, fold["index"], 0.5, 1).labeled) != sorted(train[:15])
    carved = split_from_lists(grouped, [tmp_path / "lists"], val_from="train", val_fraction=0.2)
    for fold, (train, _) in zip(carved["folds"], folds, strict=True):
        assert set(fold["val"]) < set(train) and set(fold["train"]) | set(fold["val"]) == set(train)


def test_from_lists_reports_leaks_and_bad_ids(tmp_path: Path, grouped: SegDataset) -> None:
    rest = [i for i in grouped.ids if i not in ("benign (1)", "benign (2)")]
    write_lists(tmp_path / "leaky", [(["benign (1)", *rest[:20]], ["benign (2)", *rest[20:]])])
    split = split_from_lists(grouped, [tmp_path / "leaky"])
    assert any("near-duplicate" in w and "fold 0" in w for w in split["warnings"])
    write_lists(tmp_path / "unknown", [(["benign (1)", "ghost (7)"], ["benign (4)"])])
    with pytest.raises(DataError, match="ghost"):
        split_from_lists(grouped, [tmp_path / "unknown"])
    write_lists(tmp_path / "overlap", [(["benign (1)", "benign (4)"], ["benign (4)"])])
    with pytest.raises(DataError, match="both train and val"):
        split_from_lists(grouped, [tmp_path / "overlap"])


def test_from_nnunet_splits(tmp_path: Path, grouped: SegDataset) -> None:
    ids = list(grouped.ids)
    folds = [{"train": ids[k::2], "val": ids[1 - k :: 2]} for k in range(2)]
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(folds))
    split = split_from_lists(grouped, [path], val_from="train")
    assert n_folds(split) == 2 and not split["selection_is_test"]
    assert set(split["folds"][0]["test"]) == set(ids[1::2])
    path.write_text(json.dumps({"train": []}))
    with pytest.raises(DataError, match="splits_final.json"):
        split_from_lists(grouped, [path])


def test_unlabeled_near_duplicates_of_held_out_images_leave_that_folds_pool() -> None:
    """An unlabeled/ image that near-duplicates a fold's test or val image is left out of that fold's
    unlabeled pool (listed in the split file and applied by the run); elsewhere it stays."""
    import dataclasses

    import torch

    from harness.runs.lifecycle import unlabeled_pool

    base = synthetic()
    sources = {"u-copy-b4": "benign (4)", "u-copy-m3": "malignant (3)"}
    copies = [np.clip(base.images[base.index([s])[0], 0].numpy().astype(int) + 3, 0, 255) for s in sources.values()]
    unrelated = ndimage.gaussian_filter(np.random.default_rng(99).standard_normal((32, 32)), 2.5)
    unrelated = ((unrelated - unrelated.min()) / np.ptp(unrelated) * 255).astype(np.uint8)
    stack = np.stack([*copies, unrelated]).astype(np.uint8)[:, None]
    ds = dataclasses.replace(base, unlabeled=torch.from_numpy(stack), unlabeled_ids=[*sources, "u-new"])
    split = make_split(ds, k=4, label_draws=1)
    for f, fold in enumerate(split["folds"]):
        held_out = set(fold["test"]) | set(fold["val"])
        expected = sorted(u for u, s in sources.items() if s in held_out)
        assert sorted(fold["unlabeled_excluded"]) == expected
        parts = fold_parts(split, f, 0.5, 0)
        assert sorted(parts.unlabeled_excluded) == expected
        pool, excluded = unlabeled_pool(ds, split, parts, f)
        assert len(pool) == 3 - len(expected) and excluded == expected
        # an older split file without the list: the run finds the same images itself
        del fold["unlabeled_excluded"]
        assert unlabeled_pool(ds, split, parts, f)[1] == expected
    assert any(fold_parts(make_split(ds, k=4, label_draws=1), f, 0.5, 0).unlabeled_excluded for f in range(4))
