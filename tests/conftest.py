"""Shared test setup: the project root and tools/ on sys.path, no network, and the shared MNIST test set
when it is there (../shared/data/mnist beside the project)."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "tools"))  # the measuring scripts (benchmark, tables, ...)
os.environ["VJEPA_OFFLINE"] = "1"  # tests never download
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def mnist_args():
    """--mnist_dir for train.py: the shared MNIST test set if present, else procedural digits."""
    return ["--mnist_dir", str(SHARED_MNIST)] if SHARED_MNIST.exists() else []
