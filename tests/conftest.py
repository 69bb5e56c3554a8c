"""Test session settings.

One torch thread per process: the suite starts engine subprocesses beside the test process, and on small
machines several processes with several OpenMP threads each run many times slower than one thread each.
"""

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Data that development and CI keep beside the checkout, read-only (its README.md lists it): the ICT face model
# pack, the StyleGAN2 reference fixture. Module-level skip marks read SHARED_DIR (`from conftest import
# SHARED_DIR`); tests take the `shared_dir` fixture.
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED_DIR
