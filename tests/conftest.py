"""Test-session set-up (shared helpers are in ``tests/helpers.py``).

Triton kernels run natively where CUDA is present and under the Triton interpreter elsewhere
(``TRITON_INTERPRET=1``, set here before any kernel module is imported); ``make test-gpu`` runs the
kernel tests natively and fails without CUDA. Hypothesis runs derandomized (the same examples every
run) with no example database, and keeps its caches in the temporary folder: it writes nothing
into the repository.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile("depthkv", derandomize=True, database=None, print_blob=True)
settings.load_profile("depthkv")
# Hypothesis keeps caches (constants it found in the source, unicode tables) in a home directory,
# ./.hypothesis by default: keep them out of the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "depthkv-hypothesis")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("DEPTHKV_REQUIRE_CUDA") == "1" and not torch.cuda.is_available():
        raise pytest.UsageError("make test-gpu runs the kernels natively and needs a CUDA device; use make test here")
