"""Shared fixtures: the optional ``../shared`` folder (real data and weights) and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("GENMEDSEG_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def _shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: real data and weights live in ../shared beside the repository")
    return path


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (GMS-layout datasets), or skip."""
    return _shared_path("data")


@pytest.fixture
def shared_weights() -> Path:
    """``../shared/weights`` (TAEF2 tiny autoencoder), or skip."""
    return _shared_path("weights")
