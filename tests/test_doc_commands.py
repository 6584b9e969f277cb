"""Every ``bench`` command line shown in README.md and docs/*.md runs as written, or is listed with a reason.

The command lines are read from the code blocks (fenced or indented) of the documents. Each one
must appear in :data:`HOW`: ``run`` (runs as written, in the default tier: seconds), ``slow`` (as
written, in the slow tier), ``dry-run`` (as written plus ``--dry-run``: it trains for minutes or
hours; the plan proves every option parses and resolves; ``slow-dry-run`` in the slow tier) or
``skip`` with the reason. A new command
in the docs fails :func:`test_every_documented_command_is_classified` until it is added here.

Commands run in-process (typer's CliRunner) in a fresh folder that holds what they name: ``~/BUSI``
(a small dataset folder), ``RAW`` (a tiny raw BUSI release), ``runs/`` (a results store),
``benchmarks/`` and the guide's one-file plugin ``entropy_min.py``.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from test_data_cli import tiny_folder
from test_data_import import raw_busi
from test_report import make_store
from typer.testing import CliRunner

import harness.plugins
from harness.cli.app import app, build_app

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*bench(?:\s|$)")

PLACEHOLDER = "a pattern with a placeholder (...), not a command line"
EXAMPLE_PLUGIN = "needs the example plugin package installed (tests/test_example_plugin.py installs and runs it)"
LONG = "trains for minutes to hours"

#: command line -> (how it is tested, why)
HOW: dict[str, tuple[str, str]] = {
    # README.md
    "bench run --generator ldm --ssl mgcc": ("dry-run", f"{LONG}: fits an LDM and trains MGCC"),
    "bench plugins --json": ("run", ""),
    "bench params ssl mgcc": ("run", ""),
    "bench backbones --image-size 128": ("slow", "builds and measures every backbone at 128 px (~20 s)"),
    "bench data check ~/BUSI": ("run", ""),
    "bench data import-busi RAW ~/BUSI": ("run", ""),
    "bench split ~/BUSI --protocol kfold --k 5": ("run", ""),
    "bench generate --data ~/BUSI --fold 0 --out gen/": (
        "skip",
        "fits an LDM (minutes; tests/test_generator.py runs bench generate on tiny settings)",
    ),
    "bench run --data ~/BUSI --generator ldm,none --ssl mgcc,mean-teacher,cct,supervised --labeled 0.25": (
        "dry-run",
        LONG,
    ),
    "bench run --suite benchmarks/busi-paper.toml --data ~/BUSI --dry-run": ("slow", "plans the paper's grid (~1 s)"),
    "bench table runs/ --significance": ("slow", "bootstrap intervals and tests (~1.5 s)"),
    "bench table runs/ --format latex": ("slow", "bootstrap intervals (~1.5 s)"),
    "bench plot runs/ --out figures/": ("slow", "draws every figure with matplotlib (~10 s)"),
    "bench report runs/ --out site/": ("slow", "draws every figure and writes the site (~10 s)"),
    "bench predict runs/<run> ~/new-images --out pred/ --tta": (
        "skip",
        "needs a trained run (<run> is its folder); tests/test_predict.py runs bench predict",
    ),
    "bench export runs/<run> --format onnx --out model.onnx": (
        "skip",
        "needs a trained run (<run> is its folder); tests/test_export.py runs bench export",
    ),
    "bench run ... --executor slurm --slurm-partition gpu": ("skip", PLACEHOLDER),
    "bench run ... --jobs 2 | --gpus 2": ("skip", PLACEHOLDER),
    "bench status runs/": ("run", ""),
    "bench run ... --tracker tensorboard,mlflow": ("skip", PLACEHOLDER),
    # docs/plugins.md
    "bench run --ssl fixmatch --backbone attention-unet": ("skip", EXAMPLE_PLUGIN),
    "bench fixmatch-info": ("skip", EXAMPLE_PLUGIN),
    "bench --plugin path/to/entropy_min.py run --ssl entropy-min": (
        "skip",
        "path/to/ is a placeholder; the same command runs below from docs/writing-plugins.md",
    ),
    "bench --plugin a.py --plugin b.py plugins": ("run", ""),
    "bench plugins": ("run", ""),
    "SEGBENCH_DISABLE_PLUGINS=fixmatch bench run ...": ("skip", PLACEHOLDER),
    "SEGBENCH_LOAD_PLUGINS=phantom,none,unet,supervised,local bench run --ssl supervised --backbone unet": (
        "dry-run",
        LONG,
    ),
    "SEGBENCH_STRICT_PLUGINS=1 bench plugins": ("run", ""),
    # docs/pretrained.md
    "bench run --ssl mean-teacher --backbone smp --set smp.encoder=tu-resnet34 --set smp.weights=resnet34_timm.pt "
    "--in-channels 3": (
        "slow-dry-run",
        f"{LONG}; the test saves a random resnet34 as the weights file (~3 s)",
    ),
    "bench run --ssl mgcc --backbone smp --set smp.encoder=resnet34 --set smp.weights=resnet34_smp.pt "
    "--set smp.context_lengths=3,3,3 --in-channels 3": (
        "slow-dry-run",
        f"{LONG}; the test saves a random resnet34 encoder as the weights file (~3 s)",
    ),
    # docs/scaling.md
    "bench run --ssl mgcc,mean-teacher,cct,supervised --labeled 0.25 --jobs 4": ("dry-run", LONG),
    "bench run --data ~/BUSI --ssl mgcc,mean-teacher,cct,supervised --generator ldm --labeled 0.125,0.25 "
    "--preset paper --device auto --out /shared/runs/busi --executor slurm --slurm-partition gpu "
    '--slurm-gpus-per-job 1 --slurm-cpus-per-job 8 --slurm-mem 32G --slurm-time 8:00:00 --slurm-extra "--account='
    'mylab --qos=normal"': ("dry-run", f"{LONG}, on a Slurm cluster"),
    "bench status /shared/runs/busi": ("skip", "a cluster's shared folder; `bench status runs/` runs here"),
    "bench table /shared/runs/busi": ("skip", "a cluster's shared folder; `bench table runs/ ...` runs here"),
    "bench run --preset quick --device cpu --ssl mgcc,supervised --seed 0,1 --out runs --executor slurm "
    "--slurm-cpus-per-job 1": ("dry-run", "submits to a Slurm cluster (tests/test_slurm.py runs it on a fake one)"),
    "bench status runs": ("run", ""),
    "bench run --ssl mgcc --preset paper --gpus 4": ("dry-run", f"{LONG} on 4 GPUs"),
    "bench run ... --executor slurm --gpus 4": ("skip", PLACEHOLDER),
    "bench run --suite benchmarks/busi-cpu.toml --jobs 2": ("dry-run", "trains 30 BUSI runs (1 h 43 min here)"),
    "bench report runs/ --format markdown --out results/": ("slow", "draws every figure (~20 s)"),
    # docs/writing-plugins.md
    "bench run --ssl fixmatch --backbone attention-unet --preset quick --iterations 20 --image-size 32 "
    "--out runs-fixmatch": ("skip", EXAMPLE_PLUGIN),
    "bench --plugin entropy_min.py plugins": ("run", ""),
    "bench --plugin entropy_min.py run --ssl entropy-min --backbone unet --iterations 20 --image-size 32": (
        "slow",
        "trains 20 iterations (~15 s)",
    ),
}


def documented_commands() -> list[tuple[str, str]]:
    """(document, command line) for each ``bench`` line in a code block, comments and ``\\`` joins removed."""
    found = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        in_fence, i = False, 0
        while i < len(lines):
            line = lines[i]
            if line.strip().startswith("```"):
                in_fence = not in_fence
            elif in_fence or line.startswith("    "):
                text = line.strip()
                while text.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    text = text[:-1].rstrip() + " " + lines[i].strip()
                text = re.sub(r"\s+#.*$", "", text).strip()
                for part in re.split(r"\s+&&\s+|\s*;\s+", text):
                    if COMMAND.match(part.strip()):
                        found.append((path.name, part.strip()))
            i += 1
    return found


COMMANDS = sorted(set(documented_commands()))
build_app([])


def test_every_documented_command_is_classified() -> None:
    unknown = sorted({command for _, command in COMMANDS} - set(HOW))
    assert not unknown, f"add these command lines to HOW in {Path(__file__).name}: {unknown}"
    stale = sorted(set(HOW) - {command for _, command in COMMANDS})
    assert not stale, f"these are no longer in the docs; remove them from HOW: {stale}"
    assert all(why for how, why in HOW.values() if how != "run"), "every command not run as written needs a reason"


def _sandbox(root: Path, command: str) -> None:
    home = root / "home"
    home.mkdir()
    if "import-busi" in command:
        raw_busi(root / "RAW")
    else:
        tiny_folder(home / "BUSI")
    if "runs" in command:
        make_store(root / "runs", ("supervised/unet", "supervised/cmunet", "mgcc+ldm/cmunet"))
    (root / "benchmarks").symlink_to(ROOT / "benchmarks")
    guide = (ROOT / "docs" / "writing-plugins.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- test: one-file-plugin -->\n```python\n(.*?)```", guide, re.S)
    assert match, "writing-plugins.md lost its one-file plugin example"
    (root / "entropy_min.py").write_text(match.group(1))
    if "resnet34_timm.pt" in command:  # docs/pretrained.md's recipes, with random instead of downloaded weights
        import timm
        import torch

        torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), root / "resnet34_timm.pt")
    if "resnet34_smp.pt" in command:
        import torch
        from segmentation_models_pytorch.encoders import get_encoder

        torch.save(get_encoder("resnet34", in_channels=3, depth=5, weights=None).state_dict(), root / "resnet34_smp.pt")
    for name in ("a", "b"):  # bench --plugin a.py --plugin b.py: plugins with no hooks
        (root / f"{name}.py").write_text(f'"""Plugin {name}: registers nothing."""\n')


def run_documented(command: str, tmp: Path, monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...] = ()) -> None:
    """Run ``command`` as a shell would in a checkout ``tmp/repo`` (env assignments, ``~``), in-process.

    The suites name ``../shared/data/busi`` as the developers' checkouts see it: a tiny dataset stands there.
    """
    root = tmp / "repo"
    root.mkdir()
    if "busi" in command:
        tiny_folder(tmp / "shared" / "data" / "busi")
    _sandbox(root, command)
    monkeypatch.chdir(root)
    monkeypatch.setenv("HOME", str(root / "home"))
    words = shlex.split(command)
    env = {}
    while "=" in words[0] and words[0] != "bench":
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words.pop(0) == "bench"
    words = [os.path.expanduser(w) if w.startswith("~") else w for w in words]
    plugin_files = [Path(words[i + 1]) for i, w in enumerate(words) if w == "--plugin"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # a fresh registry that sees this command's environment and --plugin files, as a new process would
    monkeypatch.setattr(harness.plugins, "_PLUGIN_FILES", plugin_files)
    monkeypatch.setattr(harness.plugins, "_REGISTRY", None)
    result = CliRunner().invoke(app, [*words, *extra], terminal_width=120)
    assert result.exit_code == 0, f"`{command}` failed:\n{result.output}\n{result.exception!r}"


def _cases(*modes: str) -> list:
    return [
        pytest.param(command, mode, id=command[:90], marks=[pytest.mark.slow] if mode.startswith("slow") else [])
        for command, (mode, _) in HOW.items()
        if mode in modes
    ]


@pytest.mark.parametrize(("command", "mode"), _cases("run", "slow", "dry-run", "slow-dry-run"))
def test_documented_command_runs(command: str, mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ("--dry-run",) if mode.endswith("dry-run") else ()
    try:
        run_documented(command, tmp_path, monkeypatch, extra)
    finally:
        harness.plugins._REGISTRY = None  # the next test builds the registry of its own environment
