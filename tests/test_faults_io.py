"""Fault injection, raw tracebacks where a message belongs, and inputs that reach places they should not."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from faults import make_dataset, read_only, small_tmpfs, tiny_run
from typer.testing import CliRunner

from harness.cli.app import os_error_text
from harness.data.datasets import DataError, load_dataset, read_dataset_toml, scan_folder
from harness.errors import UserError
from harness.reporting.plots import PlotError, _synthetic_images
from harness.runs.lifecycle import execute
from harness.runs.store import DamagedRunFileError, read_run, safe_file_name
from plugins.executors.slurm import SlurmParams, partition_gpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))


def _quiet(_message: str) -> None:
    pass


def _bench(args: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEGBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=timeout,
    )  # fmt: skip


# --------------------------------------------------------------------------- read-only folders, unwritable --out


def test_a_finished_run_in_a_read_only_results_folder_is_checked_without_writing(tmp_path: Path) -> None:
    data, out = make_dataset(tmp_path / "ds"), tmp_path / "out"
    run = tiny_run(data)
    execute(run, out, show_progress=False, log=_quiet)
    said: list[str] = []
    with read_only(out):
        execute(run, out, show_progress=False, log=said.append)  # no lock needed to find it done
        assert said == [f"{run.name}: done already, skipped"]
        other = tiny_run(data, fold=1)
        with pytest.raises(UserError, match=rf"cannot write to run directory {out / other.name} .*give another --out"):
            execute(other, out, show_progress=False, log=_quiet)


@pytest.mark.slow  # two `bench` processes
def test_export_to_an_unwritable_out_is_one_line_naming_the_path(tmp_path: Path) -> None:
    data, out = make_dataset(tmp_path / "ds"), tmp_path / "out"
    run_dir = execute(tiny_run(data), out, show_progress=False, log=_quiet)
    (tmp_path / "locked").mkdir()
    with read_only(tmp_path / "locked"):
        target = tmp_path / "locked" / "model.pt"
        result = _bench(["export", str(run_dir), "--format", "torchscript", "--out", str(target)], tmp_path)
        predicted = _bench(["predict", str(run_dir), str(data), "--out", str(tmp_path / "locked" / "p")], tmp_path)
    for done in (result, predicted):
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and str(tmp_path / "locked") in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_os_errors_become_one_line_with_the_path_and_a_hint() -> None:
    text = os_error_text(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/runs/x/metrics.csv"))
    assert text == "No space left on device: /data/runs/x/metrics.csv; free space on that disk or write elsewhere"
    assert "read-only" in os_error_text(OSError(errno.EROFS, "Read-only file system", "/ro/x"))


def test_a_full_disk_under_run_json_names_the_file(tmp_path: Path) -> None:
    """A real full disk: a 64 KiB tmpfs as root; otherwise the write is given OSError(ENOSPC) by a full file."""
    from harness.runs.store import atomic_write_json

    with small_tmpfs(tmp_path / "disk", "64k") as mounted:
        if not mounted:
            pytest.skip("needs root to mount a small tmpfs")
        (tmp_path / "disk" / "filler").write_bytes(b"\0" * 60_000)
        with pytest.raises(OSError, match="No space left") as caught:
            atomic_write_json(tmp_path / "disk" / "run.json", {"pad": "x" * 20_000})
        assert caught.value.filename == str(tmp_path / "disk" / "run.json")
        assert sorted(os.listdir(tmp_path / "disk")) == ["filler"]  # the partial temporary file is gone


# --------------------------------------------------------------------------- damaged and malformed files


@pytest.mark.slow  # a `bench` process
def test_a_truncated_run_json_is_named_even_in_a_dry_run(tmp_path: Path) -> None:
    data, out = make_dataset(tmp_path / "ds"), tmp_path / "out"
    run = tiny_run(data)
    run_dir = execute(run, out, show_progress=False, log=_quiet)
    text = (run_dir / "run.json").read_text()
    (run_dir / "run.json").write_text(text[: len(text) // 2])
    with pytest.raises(DamagedRunFileError, match=rf"{run_dir / 'run.json'} is damaged .*delete it to resume"):
        read_run(run_dir)
    args = ["run", "--data", str(data), "--ssl", "supervised", "--backbone", "unet", "--image-size", "16",
            "--iterations", "4", "--k", "2", "--folds", "0", "--precision", "fp32", "--out", str(out), "--dry-run",
            "--set", "backbone.width=4", "--set", "backbone.context_lengths=1,1,1", "--set", "val_every=2",
            "--set", "checkpoint_every=2", "--set", "label_draws=1", "--labeled", "0.5"]  # fmt: skip
    result = _bench(args, tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{run_dir / 'run.json'} is damaged" in result.stderr


def test_groups_csv_with_extra_fields_names_the_line(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds", n=4)
    (data / "groups.csv").write_text("id,stratum\nbenign (0),benign\nbenign (1),benign,oops,more\n")
    with pytest.raises(DataError, match=r"groups\.csv line 3: 2 field\(s\) more than the header's 2"):
        scan_folder(data)


def test_a_damaged_generator_samples_file_is_named_by_bench_plot(tmp_path: Path) -> None:
    cache = tmp_path / "generators" / "ldm-abc"
    cache.mkdir(parents=True)
    torch.save(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), cache / "samples-n4-s0-x.pt")
    assert _synthetic_images(cache, 2).shape == (2, 8, 8)
    raw = (cache / "samples-n4-s0-x.pt").read_bytes()
    (cache / "samples-n4-s0-x.pt").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(PlotError, match=r"samples-n4-s0-x\.pt is damaged .*delete it"):
        _synthetic_images(cache, 2)


def test_a_damaged_cached_sample_file_is_sampled_again(tmp_path: Path) -> None:
    from harness.generation.pool import _read_samples

    path = tmp_path / "samples.pt"
    torch.save(torch.zeros(3, 1, 8, 8, dtype=torch.uint8), path)
    said: list[str] = []
    assert _read_samples(path, (3, 1, 8, 8), said.append) is not None
    path.write_bytes(b"garbage")
    assert _read_samples(path, (3, 1, 8, 8), said.append) is None
    assert not path.exists() and "are damaged" in said[-1]


def test_a_fifo_named_png_is_refused_without_reading_it(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds", n=4)
    os.mkfifo(data / "images" / "benign (9).png")
    outcome: list[BaseException] = []

    def scan() -> None:
        try:
            load_dataset(str(data), image_size=16, cache_dir=tmp_path / "c")
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    worker = threading.Thread(target=scan, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert isinstance(outcome[0], DataError)
    assert "benign (9).png: not a regular file" in str(outcome[0])


def test_an_oversized_file_named_png_is_refused(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds", n=4)
    with open(data / "images" / "huge.png", "wb") as fh:  # sparse: takes no disk space
        fh.truncate(600 * 2**20)
    with pytest.raises(DataError, match=r"huge\.png: 600 MiB, more than the 512 MiB"):
        scan_folder(data)


# --------------------------------------------------------------------------- inputs that reach places they should not


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "tab\there", ""])
def test_dataset_names_that_are_not_safe_file_names_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "dataset.toml").write_text(f"name = {json.dumps(name)}\n")
    with pytest.raises(DataError, match=r"dataset\.toml: name = .* is invalid; expected a name of letters"):
        read_dataset_toml(tmp_path / "dataset.toml")


def test_safe_file_name_keeps_one_path_component() -> None:
    assert safe_file_name("BUSI v2 (merged)") == "BUSI v2 _merged_"
    assert safe_file_name("../../x") == "_.._x" and "/" not in safe_file_name("a/b")
    assert safe_file_name("...") == "_"


@pytest.mark.parametrize(
    "field, value",
    [("extra", "--qos=high\n#SBATCH --account=other"), ("extra", "--qos=high\r"), ("partition", "gpu\nx"),
     ("mem", "32G\x1b"), ("time", "4:00:00\n")],
)  # fmt: skip
def test_slurm_options_with_control_characters_are_refused(field: str, value: str) -> None:
    from harness.execution.tasks import ExecutorError

    with pytest.raises(ExecutorError, match=r"contains the control character"):
        SlurmParams(**{field: value})


def test_partition_gpus_reads_sinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in ``sinfo`` on PATH prints what a partition without GPUs, and one with them, report."""
    fake = tmp_path / "bin" / "sinfo"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\ncase "$*" in *gpu*) echo "gpu:a100:4(S:0-1)"; echo "gpu:2";; *) echo "(null)";; esac\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert partition_gpus(None) == 0
    assert partition_gpus("gpu") == 4


def test_bench_run_slurm_on_a_partition_without_gpus_fails_before_submitting(tmp_path, monkeypatch) -> None:
    from harness.cli.commands import run as run_cmd

    fake = tmp_path / "bin" / "sinfo"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "(null)"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    import typer

    app = typer.Typer()
    app.callback()(lambda: None)
    run_cmd.register(app)
    result = CliRunner().invoke(
        app,
        ["run", "--ssl", "supervised", "--executor", "slurm", "--slurm-gpus-per-job", "1", "--iterations", "4",
         "--folds", "0", "--out", str(tmp_path / "out"), "--preset", "quick"],
    )  # fmt: skip
    assert result.exit_code != 0
    message = str(result.exception)
    assert "--slurm-gpus-per-job 1 needs 1 GPU(s) per job but the default partition has 0" in message
    assert "--device cpu" in message and not (tmp_path / "out" / ".slurm").exists()


def test_bench_run_over_finished_runs_in_a_read_only_results_folder_succeeds(tmp_path: Path) -> None:
    """The local executor end to end (job records, run.log, the lock): checking finished runs writes nothing."""
    from harness.execution.tasks import Request, finish
    from plugins.executors.local import LocalExecutor, LocalParams

    data, out = make_dataset(tmp_path / "ds"), tmp_path / "out"
    runs = [tiny_run(data, fold=0), tiny_run(data, fold=1)]
    said: list[str] = []
    finish(
        LocalExecutor(LocalParams()).submit(Request(runs, out, show_progress=False, log=said.append)), out, said.append
    )
    said.clear()
    with read_only(out):
        report = LocalExecutor(LocalParams()).submit(Request(runs, out, show_progress=False, log=said.append))
    assert sorted(report.done) == sorted(r.name for r in runs) and not report.failed, said
    assert sum("done already, skipped" in line for line in said) == 2


def test_negative_iterations_are_refused_before_any_work() -> None:
    from harness.config.params import ConfigError

    with pytest.raises(ConfigError, match="--iterations -5: must be at least 1"):
        tiny_run(Path("."), iterations=-5)
