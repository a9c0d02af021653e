"""Test configuration: run-time checks on, a fixed thread count, Triton kernels interpreted on
the CPU, hypothesis profiles, seeded RNG per test."""

import os

os.environ["MARIONETTE_TYPECHECK"] = "1"  # before marionette is imported anywhere
# Float rounding (and so a short training run's outcome) depends on the thread count: the suite
# runs with the 2 threads of the project's CI machine wherever it runs, subprocesses included.
THREADS = os.environ.setdefault("MARIONETTE_TEST_THREADS", "2")
os.environ["OMP_NUM_THREADS"] = THREADS

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(THREADS))

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
