"""The synthetic pool of a fold: fit a generator on the fold's training images (or reuse it), then sample.

Cache layout under ``cache_root``::

    <name>-<key[:16]>/
        fit.json                 key material, params, fit facts, checkpoint sha256
        model/                   what the generator's save() wrote
        samples-n<N>-s<seed>-<sampling key[:12]>.pt   uint8 N x 1 x S x S (+ .json: sampling time)

The fit key is made of the generator's name and class, its cache version, its parameters (minus
the sampling-only ones it declares in ``SAMPLING_FIELDS``), its seed, the image size and the
content hashes of exactly the images it is fitted on (plus their strata when it reads them).
Images are sorted by content hash before fitting, so the order in which the harness lists the
fold's training ids does not change the model. Everything is written to a temporary path first
and moved into place, so an interrupted fit leaves nothing behind that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from harness import progress
from harness.api import Generator, params_dict
from harness.errors import UserError
from harness.osutil import make_shareable, pid_alive

FIT_FILE = "fit.json"
MODEL_DIR = "model"


class GenerationError(UserError, ValueError):
    """Inconsistent input to the generator stage (ids, hashes, image sizes, strata)."""


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_sha256(directory: Path) -> str:
    """One hash over every file a generator saved (relative path + content), in a stable order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


def sampling_fields(generator_cls: type) -> frozenset[str]:
    """Parameter names that change only sampling (the fitted model is reused when only they change)."""
    return frozenset(getattr(generator_cls, "SAMPLING_FIELDS", frozenset()))


def fit_key_material(
    name: str, generator_cls: type, params: Any, seed: int, image_size: int, hashes: list[str], strata: list[str] | None
) -> dict[str, Any]:
    """Everything the fitted model depends on, as a JSON-ready dict (hashed into the cache key)."""
    skip = sampling_fields(generator_cls)
    return {
        "generator": name,
        "class": f"{generator_cls.__module__}.{generator_cls.__qualname__}",
        "cache_version": getattr(generator_cls, "CACHE_VERSION", 0),
        "params": {k: v for k, v in params_dict(params).items() if k not in skip},
        "seed": seed,
        "image_size": image_size,
        "image_hashes": hashes,
        "strata": strata,
    }


def default_pool_size(params: Any, n_train: int) -> int:
    """Default number of synthetic images: as many as training images, capped by ``params.max_samples``."""
    cap = getattr(params, "max_samples", None)
    return n_train if cap is None else min(n_train, cap)


def _atomic_json(path: Path, value: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(value, handle, indent=2, default=str)
        make_shareable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_samples(path: Path, shape: tuple[int, ...], log: Callable[[str], None]) -> torch.Tensor | None:
    """Cached samples at ``path``; None when absent, or damaged (then said, removed and sampled again)."""
    if not path.is_file():
        return None
    try:
        samples = torch.load(path, weights_only=True)
        if not torch.is_tensor(samples) or tuple(samples.shape) != shape or samples.dtype != torch.uint8:
            raise ValueError(f"holds {type(samples).__name__} {getattr(samples, 'shape', '')}, expected {shape} uint8")
    except Exception as exc:  # noqa: BLE001 - a cache: anything unreadable is a miss
        log(f"warning: cached samples {path} are damaged ({type(exc).__name__}: {exc}); sampling again")
        path.unlink(missing_ok=True)
        return None
    return samples


def _atomic_tensor(path: Path, tensor: torch.Tensor) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(tensor, tmp)
        make_shareable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _fit_workdir(shared: Path, private: Path) -> Iterator[Path]:
    """The fit's work directory: ``shared`` (kept when the fit is interrupted, so the next attempt resumes
    from what the generator saved there) unless another live process on this host is fitting in it;
    then ``private``, which starts from scratch.
    """
    shared.mkdir(parents=True, exist_ok=True)
    lock = shared / ".owner"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            host, pid = lock.read_text().split()
            alive = host != socket.gethostname() or pid_alive(int(pid))
        except (OSError, ValueError):
            alive = False
        if alive:
            yield private
            return
        lock.unlink(missing_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{socket.gethostname()} {os.getpid()}")
    try:
        yield shared
    finally:
        lock.unlink(missing_ok=True)


def _check_inputs(
    images: torch.Tensor, ids: list[str], content_hashes: dict[str, str], strata: list[str] | None, image_size: int
) -> list[str]:
    if images.ndim != 4 or images.shape[1] != 1 or images.dtype != torch.uint8:
        raise GenerationError(f"generator input must be N x 1 x H x W uint8, got {tuple(images.shape)} {images.dtype}")
    if tuple(images.shape[-2:]) != (image_size, image_size):
        raise GenerationError(f"training images are {tuple(images.shape[-2:])}, the run's image size is {image_size}")
    if len(ids) != images.shape[0]:
        raise GenerationError(f"{len(ids)} ids for {images.shape[0]} training images")
    if len(set(ids)) != len(ids):
        raise GenerationError("training ids repeat; each image must be listed once")
    missing = [i for i in ids if i not in content_hashes]
    if missing:
        raise GenerationError(f"no content hash for training ids {missing[:5]}; reload the dataset")
    if strata is not None and len(strata) != len(ids):
        raise GenerationError(f"{len(strata)} strata for {len(ids)} training images")
    return [content_hashes[i] for i in ids]


def fit_or_load(
    name: str,
    generator_cls: type,
    params: Any,
    *,
    images: torch.Tensor,
    ids: list[str],
    content_hashes: dict[str, str],
    strata: list[str] | None,
    seed: int,
    image_size: int,
    cache_root: Path,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> tuple[Generator, dict[str, Any]]:
    """The fitted generator for these training images (from the cache when it holds one) and its record."""
    hashes = _check_inputs(images, ids, content_hashes, strata, image_size)
    generator: Generator = generator_cls(params, image_size, seed, device)
    if generator.uses_strata and strata is None:
        raise GenerationError(f"generator {name} is class-conditional and needs the strata of the training images")
    order = sorted(range(len(ids)), key=lambda i: (hashes[i], ids[i]))
    fit_strata = [strata[i] for i in order] if generator.uses_strata and strata is not None else None
    material = fit_key_material(name, generator_cls, params, seed, image_size, [hashes[i] for i in order], fit_strata)
    key = _sha256_json(material)
    directory = Path(cache_root) / f"{name}-{key[:16]}"
    record_path = directory / FIT_FILE
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("cache_key") == key:
            generator.load(directory / MODEL_DIR)
            log(f"generator {name}: cached fit {key[:12]} reused ({len(ids)} training images) from {directory}")
            return generator, {**record, "cached": True, "directory": str(directory)}
    Path(cache_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".{name}-{key[:16]}."))
    make_shareable(tmp)  # becomes the cache entry: readable like any folder, not 0700
    generator.progress = progress.current()
    try:
        with _fit_workdir(Path(cache_root) / f".{name}-{key[:16]}.work", tmp / "work") as workdir:
            resumed = workdir.is_dir() and any(p.name != ".owner" for p in workdir.iterdir())
            log(
                f"generator {name}: fitting on {len(ids)} training images (cache key {key[:12]})"
                + (f", continuing the interrupted fit in {workdir}" if resumed else "")
                + " ..."
            )
            facts = generator.fit(images[order], workdir, fit_strata)
            generator.save(tmp / MODEL_DIR)
            shutil.rmtree(workdir, ignore_errors=True)
        record = {
            "cache_key": key,
            "generator": name,
            "params": params_dict(params),
            "seed": seed,
            "image_size": image_size,
            "n_images": len(ids),
            "images_sha256": _sha256_json(material["image_hashes"]),
            "uses_extra_labels": bool(generator.uses_strata),
            "fit": facts,
            "describe": generator.describe(),
            "checkpoint_sha256": checkpoint_sha256(tmp / MODEL_DIR),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _atomic_json(tmp / FIT_FILE, record)
        if directory.exists():  # a stale partial entry or a concurrent fit finished first
            if (directory / FIT_FILE).is_file():
                shutil.rmtree(tmp)
                generator.load(directory / MODEL_DIR)
                record = json.loads((directory / FIT_FILE).read_text())
                return generator, {**record, "cached": True, "directory": str(directory)}
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = facts.get("fit_seconds") if isinstance(facts, dict) else None
    log(f"generator {name}: fitted in {seconds if seconds is not None else '?'} s, saved to {directory}")
    return generator, {**record, "cached": False, "directory": str(directory)}


def synthetic_pool(
    name: str,
    generator_cls: type,
    params: Any,
    *,
    images: torch.Tensor,
    ids: list[str],
    content_hashes: dict[str, str],
    strata: list[str] | None,
    n: int,
    seed: int,
    image_size: int,
    cache_root: Path,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``n`` synthetic images (n x 1 x S x S uint8, CPU) from a generator fitted on ``images`` only.

    ``images``/``ids`` must be the fold's training images and nothing else: the generator sees
    exactly these. Returns the images and a JSON-ready record: cache_key, cached (the fit was
    reused), samples_cached, fit facts, params, uses_extra_labels, checkpoint_sha256, describe.
    """
    if n < 0:
        raise GenerationError(f"number of synthetic images must be >= 0, got {n}")
    empty = torch.empty((0, 1, image_size, image_size), dtype=torch.uint8)
    if not getattr(generator_cls, "produces_images", True) or n == 0:
        return empty, {
            "generator": name,
            "cached": False,
            "n": 0,
            "params": params_dict(params),
            "uses_extra_labels": False,
        }
    generator, record = fit_or_load(
        name,
        generator_cls,
        params,
        images=images,
        ids=ids,
        content_hashes=content_hashes,
        strata=strata,
        seed=seed,
        image_size=image_size,
        cache_root=cache_root,
        device=device,
        log=log,
    )
    directory = Path(record["directory"])
    skip = sampling_fields(generator_cls)
    sampling = {k: v for k, v in params_dict(params).items() if k in skip}
    sample_path = directory / f"samples-n{n}-s{seed}-{_sha256_json(sampling)[:12]}.pt"
    timing_path = sample_path.with_suffix(".json")
    samples = _read_samples(sample_path, (n, 1, image_size, image_size), log)
    if samples is not None:
        log(f"generator {name}: {n} samples cached ({sample_path.name})")
        samples_cached = True
        seconds = json.loads(timing_path.read_text()).get("sample_seconds") if timing_path.is_file() else None
    else:
        start = time.perf_counter()
        generator.progress = progress.current()
        samples = generator.sample(n, seed)
        seconds = time.perf_counter() - start
        if samples.shape != (n, 1, image_size, image_size) or samples.dtype != torch.uint8:
            raise RuntimeError(
                f"generator {name} returned {tuple(samples.shape)} {samples.dtype}, expected {n} x 1 x "
                f"{image_size} x {image_size} uint8"
            )
        _atomic_json(timing_path, {"sample_seconds": seconds, "n": n, "seed": seed, "sampling_params": sampling})
        _atomic_tensor(sample_path, samples.cpu())
        samples_cached = False
        log(f"generator {name}: sampled {n} images in {seconds:.1f} s")
    info = {
        **{k: v for k, v in record.items() if k != "directory"},
        "cache_dir": str(directory),
        "n": n,
        "sample_seed": seed,
        "samples_cached": samples_cached,
        "sample_seconds": None if seconds is None else round(seconds, 3),
        "sample_seconds_per_image": None if seconds is None else round(seconds / n, 4),
        "samples_file": str(sample_path),
    }
    return samples, info
