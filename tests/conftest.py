"""Test configuration: run-time checks on, hypothesis profiles, seeded RNG per test."""

import os

os.environ["MARIONETTE_TYPECHECK"] = "1"  # before marionette is imported anywhere

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
