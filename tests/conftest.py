"""Test configuration: run-time checks on, Triton kernels interpreted on the CPU, hypothesis
profiles, seeded RNG per test."""

import os

os.environ["MARIONETTE_TYPECHECK"] = "1"  # before marionette is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():  # read when the fused renderer's kernels are first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
