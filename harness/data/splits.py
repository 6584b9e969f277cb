"""Folds: grouped, stratified train/val/test splits with nested labeled subsets, saved as JSON files.

Groups are the union of cases (groups.csv) and near-duplicate clusters (:mod:`harness.data.dedup`); a
group never straddles train, val and test. Groups are stratified by their majority stratum.
Protocols:

- ``kfold``: k parts; fold f tests on part f; val is a stratified ``val_fraction`` of the rest
  (``val_from="train"``) or is carved from each labeled budget (``val_from="labeled"``).
- ``paper-like``: three random 70/30 splits with seeds 41, 64 and 1337 as in the published
  ``split.py`` (scikit-learn's ``train_test_split`` permutation over groups; with no groups it gives
  the same test set for the sorted ids); the reported test set is also the selection set.
- ``lists`` (:func:`split_from_lists`): folds imported from published train/val .txt files or an
  nnU-Net ``splits_final.json``.

For each fold and label draw a stratified ordering of the train ids is stored; the labeled subset
for a fraction is a prefix of it, so subsets are nested (1/8 within 1/4 within 1/2 within 1).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.api import SegDataset
from harness.data import dedup
from harness.data.datasets import IMAGE_EXTENSIONS, DataError, atomic_write_bytes

SPLIT_FORMAT = "segbench-split/1"
PROTOCOLS = ("kfold", "paper-like")
PAPER_SEEDS = (41, 64, 1337)
PAPER_TEST_FRACTION = 0.3
SELECTION_IS_TEST_NOTE = (
    "model selection uses the reported test set (as the published protocol does): "
    "scores are optimistic and not comparable with kfold results"
)


@dataclass
class FoldParts:
    """The ids of one fold at one labeled fraction and draw."""

    labeled: list[str]
    unlabeled: list[str]
    val: list[str]
    test: list[str]
    selection_is_test: bool
    #: unlabeled/ images left out of this fold's pool: near-duplicates of its test or val images
    unlabeled_excluded: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- grouping


@dataclass
class Grouping:
    """Groups of a dataset (as lists of ids, sorted, in dataset order) and what made them."""

    groups: list[list[str]]
    strata: list[str]  # majority stratum of each group
    clusters: list[list[str]]  # near-duplicate clusters (two or more images)
    exact: list[list[str]]  # byte-identical files
    conflicts: list[dict[str, Any]]  # clusters whose images carry different strata
    hashes: np.ndarray  # dHash bits per image
    ncc_added: list[dict[str, Any]] = field(default_factory=list)  # pairs only the speckle NCC joined

    def group_map(self) -> dict[str, str]:
        """id -> first id of its group, for the images in groups of two or more."""
        return {i: g[0] for g in self.groups if len(g) > 1 for i in g}


def majority(strata: Sequence[str]) -> str:
    """The most common stratum (ties: the alphabetically first)."""
    counts = Counter(strata)
    return max(sorted(counts), key=lambda s: counts[s])


def find_groups(
    dataset: SegDataset, hash_size: int = dedup.DEFAULT_HASH_SIZE, dup_threshold: int | None = dedup.DEFAULT_THRESHOLD
) -> Grouping:
    """Group the dataset's images by case, exact duplicates and near-duplicates (threshold None: exact only)."""
    n = len(dataset)
    position = {i: k for k, i in enumerate(dataset.ids)}
    stratum = dict(zip(dataset.ids, dataset.strata, strict=True))
    bits = dedup.dataset_hashes(dataset.images.numpy(), dataset.boxes, hash_size)
    exact = dedup.exact_clusters([dataset.content_hashes[i] for i in dataset.ids])
    pairs = [(g[0], j) for g in exact for j in g[1:]]
    added: list[dict[str, Any]] = []
    if dup_threshold is not None:
        pairs += [(i, j) for i, j, _ in dedup.near_duplicate_pairs(bits, dup_threshold)]
        hashed = dedup.components(n, pairs)
        thumbs = dedup.speckle_thumbnails(dataset.images.numpy(), dataset.boxes)
        for i, j, score in dedup.ncc_pairs(thumbs):
            pairs.append((i, j))
            if hashed[i] != hashed[j]:
                added.append({"ids": [dataset.ids[i], dataset.ids[j]], "ncc": round(score, 3)})
    clusters = dedup.clusters_of(dedup.components(n, pairs))
    first_of_case: dict[str, int] = {}
    case_pairs = [(first_of_case.setdefault(c, k), k) for k, c in enumerate(dataset.cases)]
    labels = dedup.components(n, pairs + case_pairs)
    members: dict[int, list[str]] = {}
    for k, label in enumerate(labels):
        members.setdefault(label, []).append(dataset.ids[k])
    groups = sorted(members.values(), key=lambda g: position[g[0]])
    as_ids = [[dataset.ids[k] for k in c] for c in clusters]
    conflicts = [
        {"ids": c, "strata": [stratum[i] for i in c], "majority": majority([stratum[i] for i in c])}
        for c in as_ids
        if len({stratum[i] for i in c}) > 1
    ]
    return Grouping(
        groups=groups,
        strata=[majority([stratum[i] for i in g]) for g in groups],
        clusters=as_ids,
        exact=[[dataset.ids[k] for k in c] for c in exact],
        conflicts=conflicts,
        hashes=bits,
        ncc_added=added,
    )


def interleave(groups: list[list[str]], strata: list[str], rng: np.random.Generator) -> list[list[str]]:
    """A random order of ``groups`` in which every prefix holds the strata in proportion (by images)."""
    queues: dict[str, deque[list[str]]] = {}
    for k in rng.permutation(len(groups)):
        queues.setdefault(strata[k], deque()).append(groups[k])
    totals = {s: sum(len(g) for g in q) for s, q in queues.items()}
    n_total = sum(totals.values())
    taken = dict.fromkeys(queues, 0)
    order: list[list[str]] = []
    done = 0
    while len(order) < len(groups):
        # the stratum furthest below its share of the next prefix (ties: alphabetical)
        s = max((s for s in sorted(queues) if queues[s]), key=lambda s: totals[s] / n_total * (done + 1) - taken[s])
        group = queues[s].popleft()
        order.append(group)
        taken[s] += len(group)
        done += len(group)
    return order


def _take(order: list[list[str]], n_images: int) -> tuple[list[list[str]], list[list[str]]]:
    """Split ``order`` after the first groups that hold at least ``n_images`` images."""
    count = 0
    for k, group in enumerate(order):
        if count >= n_images:
            return order[:k], order[k:]
        count += len(group)
    return order, []


def _flat(groups: list[list[str]]) -> list[str]:
    return [i for g in groups for i in g]


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in keys])


# --------------------------------------------------------------------------- making splits


def _check_common(val_fraction: float, label_draws: int, hash_size: int) -> None:
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction {val_fraction}: use a fraction between 0 and 1, e.g. 0.1")
    if label_draws < 1:
        raise DataError(f"--label-draws {label_draws}: use at least 1")
    if not 2 <= hash_size <= 64:
        raise DataError(f"--hash-size {hash_size}: use 2 to 64 (16 gives a 256-bit hash)")


def _check_options(protocol: str, k: int, val_fraction: float, val_from: str, label_draws: int, hash_size: int):
    _check_common(val_fraction, label_draws, hash_size)
    if protocol not in PROTOCOLS:
        raise DataError(f"--protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if protocol == "kfold" and (not isinstance(k, int) or k < 2):
        raise DataError(f"--k {k}: a k-fold split needs at least 2 folds")
    if val_from not in ("train", "labeled"):
        raise DataError(f"--val-from {val_from!r} is not one of train, labeled")
    if protocol == "paper-like" and val_from != "train":
        raise DataError("--val-from does not apply to --protocol paper-like: it selects models on the test set")


def _kfold_parts(grouping: Grouping, k: int, seed: int) -> list[list[list[str]]]:
    """Assign groups to k parts: per stratum, largest groups first, each to the part with fewest of that stratum."""
    if len(grouping.groups) < k:
        raise DataError(f"--k {k}: the dataset has only {len(grouping.groups)} independent groups of images")
    rng = _rng(seed, 99)
    tiebreak = rng.permutation(k)
    parts: list[list[list[str]]] = [[] for _ in range(k)]
    sizes = np.zeros(k)
    by_stratum: dict[str, list[int]] = {}
    for g in rng.permutation(len(grouping.groups)):
        by_stratum.setdefault(grouping.strata[g], []).append(int(g))
    for stratum in sorted(by_stratum, key=lambda s: (-len(by_stratum[s]), s)):
        counts = np.zeros(k)
        for g in sorted(by_stratum[stratum], key=lambda g: -len(grouping.groups[g])):  # stable: keeps shuffle
            f = min(range(k), key=lambda f: (counts[f], sizes[f], tiebreak[f]))
            parts[f].append(grouping.groups[g])
            counts[f] += len(grouping.groups[g])
            sizes[f] += len(grouping.groups[g])
    return parts


def _paper_parts(grouping: Grouping) -> list[tuple[list[list[str]], list[list[str]]]]:
    """(train, test) groups of the three published 70/30 splits."""
    n = sum(len(g) for g in grouping.groups)
    n_test = math.ceil(PAPER_TEST_FRACTION * n)
    groups = sorted(grouping.groups, key=min)  # sorted ids, like a sorted file listing
    out = []
    for seed in PAPER_SEEDS:
        perm = np.random.RandomState(seed).permutation(len(groups))
        test, train = _take([groups[g] for g in perm], n_test)
        out.append((train, test))
    return out


def _stratum_of_groups(grouping: Grouping) -> dict[str, str]:
    return {g[0]: s for g, s in zip(grouping.groups, grouping.strata, strict=True)}


def _orders(train: list[list[str]], grouping: Grouping, seed: int, fold: int, draws: int) -> list[list[str]]:
    strata = _stratum_of_groups(grouping)
    return [_flat(interleave(train, [strata[g[0]] for g in train], _rng(seed, fold, 1, d))) for d in range(draws)]


def grouping_record(grouping: Grouping, hash_size: int, dup_threshold: int | None) -> dict[str, Any]:
    """The duplicate clusters, groups and label conflicts, as stored in a split file."""
    n = sum(len(g) for g in grouping.groups)
    largest = max((len(g) for g in grouping.groups), default=0)
    return {
        "hash": "dhash",
        "hash_size": hash_size,
        "threshold": dup_threshold,
        "second_descriptor": (
            f"NCC of high-pass {dedup.NCC_SIZE}x{dedup.NCC_SIZE} thumbnails over shifts <= {dedup.NCC_SHIFT} px"
            if dup_threshold is not None
            else None
        ),
        "ncc_threshold": dedup.DEFAULT_NCC_THRESHOLD if dup_threshold is not None else None,
        "ncc_added_pairs": grouping.ncc_added,
        "n_clusters": len(grouping.clusters),
        "n_images_in_clusters": sum(len(c) for c in grouping.clusters),
        "largest_cluster": max((len(c) for c in grouping.clusters), default=0),
        "largest_group": largest,
        "n_groups": len(grouping.groups),
        "n_images": n,
        "clusters": grouping.clusters,
        "exact_duplicates": grouping.exact,
        "label_conflicts": grouping.conflicts,
    }


def grouping_warnings(grouping: Grouping, k: int) -> list[str]:
    """Warnings about a grouping: a group over 1/k of the images, label conflicts."""
    n = sum(len(g) for g in grouping.groups)
    largest = max(grouping.groups, key=len)
    out = []
    if len(largest) > n / k:
        out.append(
            f"the largest group ({len(largest)} images, from {largest[0]!r}) holds more than 1/{k} of the "
            f"{n} images: near-duplicate clusters chain; folds are unbalanced (try a lower --dup-threshold)"
        )
    if grouping.conflicts:
        out.append(
            f"{len(grouping.conflicts)} near-duplicate cluster(s) carry different strata (label conflicts); "
            "each is stratified by its majority: see `bench data check`"
        )
    return out


def _header(dataset: SegDataset, protocol: str, parameters: dict, grouping: Grouping, selection_is_test: bool):
    return {
        "format": SPLIT_FORMAT,
        "protocol": protocol,
        "selection_is_test": selection_is_test,
        "note": SELECTION_IS_TEST_NOTE if selection_is_test else "",
        "parameters": parameters,
        "dataset": {
            "name": dataset.name,
            "fingerprint": dataset.fingerprint,
            "n_images": len(dataset),
            "strata": dict(sorted(Counter(dataset.strata).items())),
            "content_hashes": {i: dataset.content_hashes[i] for i in dataset.ids},
        },
        "groups": grouping.group_map(),
    }


def planned_folds(protocol: str, k: int, val_fraction: float, val_from: str, label_draws: int) -> int:
    """Check split options without any data and return how many folds such a split has."""
    _check_options(protocol, k, val_fraction, val_from, label_draws, dedup.DEFAULT_HASH_SIZE)
    return k if protocol == "kfold" else len(PAPER_SEEDS)


def make_split(
    dataset: SegDataset,
    *,
    protocol: str = "kfold",
    k: int = 5,
    val_fraction: float = 0.1,
    val_from: str = "train",
    seed: int = 0,
    label_draws: int = 3,
    hash_size: int = dedup.DEFAULT_HASH_SIZE,
    dup_threshold: int | None = dedup.DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """A JSON-ready split of ``dataset`` (see the module docstring); ``dup_threshold=None`` disables dedup."""
    _check_options(protocol, k, val_fraction, val_from, label_draws, hash_size)
    if dup_threshold is not None and dup_threshold < 0:
        dup_threshold = None
    grouping = find_groups(dataset, hash_size, dup_threshold)
    strata = _stratum_of_groups(grouping)
    folds = []
    if protocol == "kfold":
        parts = _kfold_parts(grouping, k, seed)
        for f in range(k):
            rest = [g for p, part in enumerate(parts) if p != f for g in part]
            val: list[list[str]] = []
            if val_from == "train":
                n_rest = sum(len(g) for g in rest)
                val_order = interleave(rest, [strata[g[0]] for g in rest], _rng(seed, f, 0))
                val, _ = _take(val_order, max(1, round(val_fraction * n_rest)))
                chosen = {g[0] for g in val}
                rest = [g for g in rest if g[0] not in chosen]
            folds.append(_fold(f, rest, _flat(val), _flat(parts[f]), grouping, seed, label_draws, dataset))
        selection_is_test = False
    else:
        for f, (train, test) in enumerate(_paper_parts(grouping)):
            folds.append(_fold(f, train, _flat(test), _flat(test), grouping, seed, label_draws, dataset))
        selection_is_test = True
    parameters = {
        "k": len(folds),
        "val_fraction": val_fraction if not selection_is_test else None,
        "val_from": val_from if not selection_is_test else "test",
        "seed": seed,
        "label_draws": label_draws,
        "hash_size": hash_size,
        "dup_threshold": dup_threshold,
        "hash_image_size": int(dataset.images.shape[-1]),
        "draw_rng": "numpy.random.default_rng([seed, fold, 1, draw])",
    }
    if protocol == "paper-like":
        parameters.update(split_seeds=list(PAPER_SEEDS), test_fraction=PAPER_TEST_FRACTION)
    split = _header(dataset, protocol, parameters, grouping, selection_is_test)
    split["duplicates"] = grouping_record(grouping, hash_size, dup_threshold)
    split["warnings"] = grouping_warnings(grouping, len(folds))
    split["folds"] = folds
    mark_unlabeled_twins(split, dataset, hash_size, dup_threshold)
    return split


def _fold(index, train, val, test, grouping, seed, draws, dataset) -> dict[str, Any]:
    if not train or not test:
        raise DataError(
            f"fold {index} would have no {'training' if not train else 'test'} images: the dataset has "
            f"{len(dataset)} images in {len(grouping.groups)} groups; use fewer folds or a smaller --val-fraction"
        )
    position = {i: k for k, i in enumerate(dataset.ids)}

    def ordered(ids: list[str]) -> list[str]:
        return sorted(ids, key=position.__getitem__)

    return {
        "index": index,
        "train": ordered(_flat(train)),
        "val": ordered(val),
        "test": ordered(test),
        "labeled_orders": _orders(train, grouping, seed, index, draws),
    }


# --------------------------------------------------------------------------- importing lists


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the split list ({exc})") from None
    return [line.strip() for line in lines if line.strip()]


def _match_ids(names: list[str], dataset: SegDataset, where: str) -> list[str]:
    known = set(dataset.ids)
    out, missing = [], []
    for name in names:
        candidates = [name, Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name]
        candidates.append(f"{candidates[1]}_0000")  # nnU-Net file names carry a channel suffix
        found = next((c for c in candidates if c in known), None)
        (out if found else missing).append(found or name)
    if missing:
        raise DataError(
            f"{where}: {len(missing)} id(s) not in dataset {dataset.name!r}, e.g. {missing[:5]}; "
            "load the dataset the lists were made for (e.g. --include-strata benign,malignant for 647-image lists)"
        )
    if len(set(out)) != len(out):
        dup = [i for i, c in Counter(out).items() if c > 1][:5]
        raise DataError(f"{where}: ids listed twice: {dup}")
    return out


def read_lists(paths: Sequence[Path], dataset: SegDataset) -> tuple[list[tuple[list[str], list[str]]], list[str]]:
    """(train ids in file order, test ids) per fold from .txt pairs, a splits_final.json, or a folder of them."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.glob("*.txt")) + sorted(path.glob("splits_final.json"))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"--from-lists {path}: no such file or folder")
    if not files:
        raise DataError(f"--from-lists {', '.join(map(str, paths))}: no .txt lists or splits_final.json found")
    folds: list[tuple[list[str], list[str]]] = []
    jsons = [p for p in files if p.suffix == ".json"]
    for path in jsons:
        try:
            data = json.loads(path.read_text())
            pairs = [(entry["train"], entry["val"]) for entry in data]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{path}: not an nnU-Net splits_final.json (a list of {{train, val}}): {exc}") from None
        for f, (train, val) in enumerate(pairs):
            where = f"{path} fold {f}"
            folds.append((_match_ids(train, dataset, f"{where} train"), _match_ids(val, dataset, f"{where} val")))
    texts: dict[str, dict[str, Path]] = {}
    for path in files:
        if path.suffix == ".json":
            continue
        match = re.fullmatch(r"(?P<prefix>.*?)(?P<kind>train|val|test)(?P<n>\d*)\.txt", path.name)
        if not match:
            raise DataError(f"{path}: expected names like busi_train1.txt and busi_val1.txt")
        key = match["prefix"] + match["n"]
        texts.setdefault(key, {})[match["kind"]] = path
    for key in sorted(texts, key=lambda s: (len(s), s)):
        pair = texts[key]
        held = pair.get("test") or pair.get("val")
        if "train" not in pair or held is None:
            raise DataError(f"--from-lists: {next(iter(pair.values()))} has no matching train/val partner file")
        train = _match_ids(_read_list(pair["train"]), dataset, str(pair["train"]))
        folds.append((train, _match_ids(_read_list(held), dataset, str(held))))
    for f, (train, test) in enumerate(folds):
        both = set(train) & set(test)
        if both:
            raise DataError(
                f"--from-lists fold {f}: {len(both)} id(s) are in both train and val, e.g. {sorted(both)[:5]}"
            )
    return folds, [str(p) for p in files]


def split_from_lists(
    dataset: SegDataset,
    paths: Sequence[Path],
    *,
    val_from: str = "test",
    val_fraction: float = 0.1,
    seed: int = 0,
    label_draws: int = 3,
    hash_size: int = dedup.DEFAULT_HASH_SIZE,
    dup_threshold: int | None = dedup.DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """A split whose folds are imported lists (``val_from``: test = select on the held-out list as
    published, train/labeled = carve a validation set). Draw 0 keeps the file order of the train list,
    so fractions label its first entries like the published code; leaks across lists are reported."""
    if val_from not in ("test", "train", "labeled"):
        raise DataError(f"--val-from {val_from!r} is not one of test, train, labeled")
    _check_common(val_fraction, label_draws, hash_size)
    if dup_threshold is not None and dup_threshold < 0:
        dup_threshold = None
    lists, sources = read_lists(paths, dataset)
    grouping = find_groups(dataset, hash_size, dup_threshold)
    strata = _stratum_of_groups(grouping)
    group_of = {i: g for g in grouping.groups for i in g}
    position = {i: k for k, i in enumerate(dataset.ids)}
    warnings = grouping_warnings(grouping, max(2, len(lists)))
    folds = []
    for f, (train_ids, test_ids) in enumerate(lists):
        leaks = count_leaks(train_ids, test_ids, grouping)
        if leaks:
            warnings.append(
                f"fold {f}: {leaks} of {len(test_ids)} held-out images have a near-duplicate or same-case image in "
                "train (the imported lists are not grouped)"
            )
        in_train = set(train_ids)
        train_groups = [[i for i in g if i in in_train] for g in grouping.groups]
        train_groups = [g for g in train_groups if g]
        val: list[str] = list(test_ids) if val_from == "test" else []
        if val_from == "train":
            val_order = interleave(train_groups, [strata[group_of[g[0]][0]] for g in train_groups], _rng(seed, f, 0))
            chosen, _ = _take(val_order, max(1, round(val_fraction * len(train_ids))))
            val = _flat(chosen)
            train_ids = [i for i in train_ids if i not in set(val)]
            train_groups = [g for g in train_groups if g[0] not in {c[0] for c in chosen}]
        orders = [list(train_ids)] + [
            _flat(interleave(train_groups, [strata[group_of[g[0]][0]] for g in train_groups], _rng(seed, f, 1, d)))
            for d in range(1, label_draws)
        ]
        folds.append(
            {
                "index": f,
                "train": sorted(train_ids, key=position.__getitem__),
                "val": sorted(val, key=position.__getitem__),
                "test": sorted(test_ids, key=position.__getitem__),
                "labeled_orders": orders,
            }
        )
    parameters = {
        "k": len(folds),
        "val_fraction": None if val_from == "test" else val_fraction,
        "val_from": val_from,
        "seed": seed,
        "label_draws": label_draws,
        "hash_size": hash_size,
        "dup_threshold": dup_threshold,
        "hash_image_size": int(dataset.images.shape[-1]),
        "draw_rng": "draw 0: the train list's order; others numpy.random.default_rng([seed, fold, 1, draw])",
        "sources": sources,
    }
    split = _header(dataset, "lists", parameters, grouping, val_from == "test")
    split["duplicates"] = grouping_record(grouping, hash_size, dup_threshold)
    split["warnings"] = warnings
    split["folds"] = folds
    mark_unlabeled_twins(split, dataset, hash_size, dup_threshold)
    return split


def count_leaks(train: Sequence[str], test: Sequence[str], grouping: Grouping) -> int:
    """How many ``test`` ids share a group (case, exact or near-duplicate) with a ``train`` id."""
    group_of = {i: g[0] for g in grouping.groups for i in g}
    train_groups = {group_of[i] for i in train}
    return sum(group_of[i] in train_groups for i in test)


# --------------------------------------------------------------------------- unlabeled images


def unlabeled_twins(
    dataset: SegDataset,
    ids: Sequence[str],
    hash_size: int = dedup.DEFAULT_HASH_SIZE,
    dup_threshold: int | None = dedup.DEFAULT_THRESHOLD,
) -> list[str]:
    """The ``unlabeled/`` images that are near-duplicates of any of ``ids`` by either descriptor.

    The same two descriptors as :func:`find_groups` (dHash within ``dup_threshold`` bits, or the
    speckle NCC of :mod:`harness.data.dedup` at its threshold); ``dup_threshold=None``: exact
    duplicates of the pixels only.
    """
    if not dataset.unlabeled_ids or not ids:
        return []
    unlabeled = dataset.unlabeled.numpy()
    chosen = dataset.images[dataset.index(list(ids))].numpy()
    if dup_threshold is None:
        keys = {bytes(image.tobytes()) for image in chosen}
        return [u for u, image in zip(dataset.unlabeled_ids, unlabeled, strict=True) if image.tobytes() in keys]
    boxes = [dataset.boxes[k] for k in dataset.index(list(ids))]
    near = (
        dedup.hamming(
            dedup.dataset_hashes(unlabeled, None, hash_size), dedup.dataset_hashes(chosen, boxes, hash_size)
        ).min(axis=1)
        <= dup_threshold
    )
    ncc = dedup.shifted_ncc(dedup.speckle_thumbnails(unlabeled), dedup.speckle_thumbnails(chosen, boxes))
    near |= ncc.max(axis=1) >= dedup.DEFAULT_NCC_THRESHOLD
    return [u for u, hit in zip(dataset.unlabeled_ids, near.tolist(), strict=True) if hit]


def mark_unlabeled_twins(split: dict[str, Any], dataset: SegDataset, hash_size: int, dup_threshold: int | None) -> None:
    """Record per fold the unlabeled images that near-duplicate its test or val images
    (``unlabeled_excluded``): they are left out of that fold's unlabeled pool."""
    if not dataset.unlabeled_ids:
        return
    for fold in split["folds"]:
        held_out = list(dict.fromkeys([*fold["test"], *fold["val"]]))
        fold["unlabeled_excluded"] = unlabeled_twins(dataset, held_out, hash_size, dup_threshold)


# --------------------------------------------------------------------------- using splits


def n_folds(split: dict[str, Any]) -> int:
    """The number of folds of a split."""
    return len(split["folds"])


def split_hash(split: dict[str, Any]) -> str:
    """SHA-256 of the split's canonical JSON."""
    return hashlib.sha256(json.dumps(split, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def fold_parts(split: dict[str, Any], fold: int, fraction: float, draw: int) -> FoldParts:
    """Labeled, unlabeled, val and test ids of ``fold`` when ``fraction`` of its train ids are labeled.

    The labeled ids are the first floor(fraction * n_train) (at least one) of the draw's ordering.
    With ``val_from="labeled"`` whole groups of that budget become validation ids: group r (in
    order of first appearance) is val when ceil((r + 1) * val_fraction) > ceil(r * val_fraction).
    """
    if not 0 <= fold < n_folds(split):
        raise DataError(f"fold {fold} does not exist: the split has folds 0 to {n_folds(split) - 1}")
    if not 0 < fraction <= 1:
        raise DataError(f"labeled fraction {fraction} must be in (0, 1], e.g. 0.125, 0.25, 0.5 or 1")
    part = split["folds"][fold]
    orders = part["labeled_orders"]
    if not 0 <= draw < len(orders):
        raise DataError(f"label draw {draw} does not exist: the split has draws 0 to {len(orders) - 1}")
    order = orders[draw]
    budget = min(len(order), max(1, math.floor(fraction * len(order) + 1e-9)))
    prefix = order[:budget]
    val = list(part["val"])
    selection_is_test = bool(split.get("selection_is_test"))
    if split["parameters"].get("val_from") == "labeled":
        groups = split.get("groups", {})
        vf = float(split["parameters"]["val_fraction"])
        val_groups, rank, seen = set(), 0, set()
        for i in prefix:
            g = groups.get(i, i)
            if g in seen:
                continue
            seen.add(g)
            if math.ceil((rank + 1) * vf) > math.ceil(rank * vf):
                val_groups.add(g)
            rank += 1
        val = [i for i in part["train"] if groups.get(i, i) in val_groups]
        prefix = [i for i in prefix if groups.get(i, i) not in val_groups]
        if not prefix:
            raise DataError(
                f"fold {fold}: a labeled fraction of {fraction} is too small to carve a validation set from; "
                "use a larger fraction or make the split with --val-from train"
            )
    taken = set(prefix) | set(val)
    return FoldParts(
        labeled=prefix,
        unlabeled=[i for i in part["train"] if i not in taken],
        val=val,
        test=list(part["test"]),
        selection_is_test=selection_is_test,
        unlabeled_excluded=list(part.get("unlabeled_excluded", [])),
    )


# --------------------------------------------------------------------------- files


def save_split(split: dict[str, Any], path: Path) -> None:
    """Write ``split`` as JSON, atomically."""
    text = json.dumps(split, indent=1, ensure_ascii=False) + "\n"
    atomic_write_bytes(Path(path), lambda handle: handle.write(text.encode()))


def load_split(path: Path, dataset: SegDataset) -> dict[str, Any]:
    """Read a split file; raise DataError naming changed, missing and new ids if it was made for other data."""
    path = Path(path)
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"split file {path} does not exist; make one with `bench split`") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"split file {path} cannot be read ({exc}); make it again with `bench split`") from None
    if not isinstance(split, dict) or split.get("format") != SPLIT_FORMAT:
        raise DataError(f"{path} is not a segbench split file ({SPLIT_FORMAT}); make one with `bench split`")
    recorded = split["dataset"]
    if recorded["fingerprint"] == dataset.fingerprint:
        return split
    old = recorded.get("content_hashes", {})
    new = {i: dataset.content_hashes[i] for i in dataset.ids}
    changed = sorted(i for i in old.keys() & new.keys() if old[i] != new[i])
    missing = sorted(old.keys() - new.keys())
    added = sorted(new.keys() - old.keys())
    details = [
        f"{label} {len(ids)}: {', '.join(ids[:8])}{' ...' if len(ids) > 8 else ''}"
        for label, ids in (("changed", changed), ("missing from the data", missing), ("not in the split", added))
        if ids
    ]
    raise DataError(
        f"split file {path} was made for other data than {dataset.name!r} (fingerprint "
        f"{recorded['fingerprint'][:12]} vs {dataset.fingerprint[:12]}): {'; '.join(details) or 'ids differ'}. "
        "Restore the files, or make a new split for this data (same --include-strata) with `bench split`."
    )
