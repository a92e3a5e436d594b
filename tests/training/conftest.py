"""Fixtures of the training tests: a small shapes-world data set, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 training and 6 held-out shapes-world images with every JSON file `data shapes` writes."""
    from training.shapes_data import write_dataset

    out = tmp_path_factory.mktemp("shapes")
    write_dataset(out, 48, seed=3, n_eval=6)
    return out
