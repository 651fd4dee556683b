"""Datasets by name, with the embedded world's sets written on first use when no root is given."""

from __future__ import annotations

import os
from pathlib import Path

from vlprompt.data.classification import ClassificationDataset
from vlprompt.data.registry import DATA_ENV, load_dataset
from vlprompt.data.webdataset_reader import WdsDataset
from vlprompt.embedded.export import write_world_datasets
from vlprompt.paths import cache_dir

WORLD_PREFIX = "world_"


def world_data_root(root: str | Path | None = None) -> Path:
    """The embedded world's datasets (classification sets and the CZSL set), written on first use."""
    root = Path(root) if root else cache_dir("world-data")
    write_world_datasets(root)
    return root


def get_dataset(name: str, root: str | Path | None = None) -> ClassificationDataset | WdsDataset:
    """A dataset by name (``folder:``, ``csv:``, ``wds:`` prefixes included); embedded world datasets are
    generated when no root is given. ``wds:<folder>`` gives a `WdsDataset`, whose splits are streamed."""
    if root is None and not os.environ.get(DATA_ENV) and name.startswith(WORLD_PREFIX):
        root = world_data_root()
    return load_dataset(name, root)
