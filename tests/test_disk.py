"""What a run leaves on disk: no resume state once finished (unless asked), files others can read."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from harness.data.splits import save_split
from harness.generation.pool import synthetic_pool
from harness.inference.export import export_run
from harness.runs.lifecycle import execute
from harness.runs.resolve import RunSpec, resolve
from harness.runs.store import atomic_write_json
from tests.test_predict import make_dataset_folder


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _tiny_run(root: Path, keep: bool) -> Path:
    data = root.parent / "data"
    if not data.exists():
        make_dataset_folder(data, count=12)
    spec = RunSpec(
        ssl="supervised", backbone="unet", data=str(data), iterations=4, image_size=32, preset="quick", k=3,
        precision="fp32", checkpoint_every=2, overrides={"backbone": {"width": "4"}},
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGBENCH_CACHE", str(root.parent / "cache"))
        return execute(
            resolve(spec), root, show_progress=False, log=lambda s: None, device_name="cpu", keep_resume_state=keep
        )


def test_a_finished_run_drops_its_resume_state_unless_asked_to_keep_it(tmp_path, umask_022):
    run_dir = _tiny_run(tmp_path / "dropped", keep=False)
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "best.pt").is_file() and (ckpt / "last.pt").is_file()
    assert not (ckpt / "latest.pt").exists()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done" and record["resume_state"]["deleted_bytes"] > 0

    kept = _tiny_run(tmp_path / "kept", keep=True) / "checkpoints" / "latest.pt"
    assert kept.is_file() and kept.stat().st_size == record["resume_state"]["deleted_bytes"]
    # the split file the runs share and the run's own files are readable by others
    split = next((tmp_path / "dropped" / "splits").glob("*.json"))
    assert mode(split) == 0o644 and mode(run_dir / "run.json") == 0o644


def test_split_files_and_run_records_are_0644(tmp_path, umask_022):
    save_split({"format": "x"}, tmp_path / "split.json")
    atomic_write_json(tmp_path / "run.json", {"a": 1})
    assert mode(tmp_path / "split.json") == 0o644 and mode(tmp_path / "run.json") == 0o644


def test_generator_cache_entries_are_readable_by_others(tmp_path, umask_022):
    from plugins.generators.ldm.generator import LatentDiffusionGenerator
    from tests.test_generator import SIZE, phantom, tiny

    images = phantom()[0][:4]
    params = tiny(ae_steps=2, unet_steps=2, sample_steps=2)
    ids = [f"i{k}" for k in range(4)]
    _, info = synthetic_pool(
        "ldm", LatentDiffusionGenerator, params, images=images, ids=ids, content_hashes={i: i for i in ids},
        strata=None, n=2, seed=0, image_size=SIZE, cache_root=tmp_path / "gen", device=torch.device("cpu"),
        log=lambda s: None,
    )  # fmt: skip
    entry = Path(info["cache_dir"])
    assert mode(entry) == 0o755
    for path in [entry / "fit.json", Path(info["samples_file"])]:
        assert mode(path) == 0o644, path


def test_exported_model_is_0644(tmp_path, umask_022):
    run_dir = _tiny_run(tmp_path / "runs", keep=False)
    result = export_run(run_dir, "torchscript", tmp_path / "model.pt")
    assert mode(result.path) == 0o644 and mode(result.sidecar) == 0o644
