"""The hooks a segbench plugin may implement.

Every registration hook receives a ``register(name, component)`` callback; one hook call may
register many components. Component names are unique per kind across all plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "segbench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[str, Any], None]


@hookspec
def register_backbones(register: Register) -> None:
    """Register backbone classes: ``register("unet", UNet)``.

    A backbone class subclasses :class:`harness.api.Backbone`, declares ``Params`` (a dataclass
    with defaults) and is built as ``cls(in_channels, out_channels, params)``.
    """


@hookspec
def register_ssl_methods(register: Register) -> None:
    """Register semi-supervised methods: ``register("mgcc", MGCC)``.

    A method class subclasses :class:`harness.api.SSLMethod`, declares ``Params`` and is built as
    ``cls(build_backbone, params)`` where ``build_backbone()`` returns a fresh backbone.
    """


@hookspec
def register_generators(register: Register) -> None:
    """Register synthetic-image generators: ``register("ldm", LatentDiffusionGenerator)``.

    A generator class subclasses :class:`harness.api.Generator` and declares ``Params``.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset sources: ``register("phantom", PhantomSource)``.

    A dataset source subclasses :class:`harness.api.DatasetSource`: ``load(spec, options)``
    returns a :class:`harness.api.SegDataset`.
    """


@hookspec
def register_executors(register: Register) -> None:
    """Register executors, the engines that train a grid's runs: ``register("slurm", SlurmExecutor)``.

    An executor class subclasses :class:`harness.execution.executors.Executor`, declares ``Params`` (its options,
    filled from ``bench run --exec-set KEY=VALUE``) and implements ``submit(request) -> Report``.
    """


@hookspec
def register_trackers(register: Register) -> None:
    """Register experiment trackers: ``register("tensorboard", TensorBoardTracker)``.

    A tracker class subclasses :class:`harness.api.Tracker`, declares ``Params`` (filled from
    ``bench run --tracker-set NAME.KEY=VALUE``) and receives a run's config, its logged scalars once
    per logging window, its final test metrics and its figures. ``bench run --tracker NAME`` selects it.
    """


@hookspec
def register_commands(app: Any) -> None:
    """Add sub-commands to the ``bench`` typer application ``app``."""
