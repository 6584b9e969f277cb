"""The ``folder`` dataset source: a dataset folder in the images/ + masks/0/ layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.api import DatasetSource, SegDataset
from harness.data.datasets import DataError, load_folder
from harness.hookspecs import hookimpl


class FolderSource(DatasetSource):
    """A dataset folder in the images/ + masks/0/ layout."""

    def load(self, spec: str | None, options: dict[str, Any]) -> SegDataset:
        if not spec:
            raise DataError("the folder dataset needs a path: --data PATH")
        return load_folder(Path(spec), options)


@hookimpl
def register_datasets(register) -> None:
    register("folder", FolderSource)
