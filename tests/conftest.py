"""Test configuration.

* With no CUDA GPU, Triton kernels run in Triton's CPU interpreter: ``TRITON_INTERPRET=1`` is set here,
  before anything imports triton (Triton reads it when kernels are decorated).
* Tests marked ``gpu`` need a CUDA device; without one they are reported as skipped, not passed.
* Hypothesis profiles: ``dev`` (default, quick) and ``ci`` (more examples), chosen with
  ``--hypothesis-profile=ci``.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Interpreted kernels are slow (seconds per launch at larger sizes), so deadlines are off and the
# example counts stay small; the ci profile runs more examples.
settings.register_profile("dev", max_examples=10, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> str:
    return DEVICE
