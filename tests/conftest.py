"""Session-wide test setup: Triton's interpreter on CPU, a fresh model cache, and the real
embedded models loaded once per session, with every network connection refused while they load.

Without a CUDA GPU, Triton kernels run through Triton's CPU interpreter; the variable must be
set before triton is first imported, so it is set here, before any test module loads.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Share the cores between workers; the CLI subprocesses and notebook kernels a worker starts
    # inherit its share through OMP_NUM_THREADS. Oversubscribed OpenMP threads spin and wait:
    # on 2 cores, 2 workers x 2 threads made some forwards 10-100x slower.
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    torch.set_num_threads(_share)
    os.environ["OMP_NUM_THREADS"] = str(_share)
    os.environ["MKL_NUM_THREADS"] = str(_share)

import contextlib  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# pytest-xdist's controller imports this file before it starts its workers, which inherit its
# environment: every worker then shares one cache, and each model converts once per run, not once
# per worker (interp.loading locks an entry while one process converts it; the others wait, then read).
_SESSION_CACHE = Path(os.environ.get("INTERP_TEST_CACHE") or tempfile.mkdtemp(prefix="interp-test-cache-"))
os.environ["INTERP_TEST_CACHE"] = str(_SESSION_CACHE)
os.environ["INTERP_CACHE"] = str(_SESSION_CACHE)  # notebooks and CLI subprocesses share it
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("INTERP_PROGRESS", "0")  # progress bars off in test logs (tests/test_progress.py tests the policy)


class NetworkCalled(AssertionError):
    pass


@contextlib.contextmanager
def no_network():
    """Refuse every outgoing connection (raising NetworkCalled) for the duration."""

    def refuse(*args, **kwargs):
        raise NetworkCalled(f"network call attempted: {args[1:] or kwargs}")

    saved = socket.socket.connect, socket.socket.connect_ex, socket.create_connection
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.create_connection = saved


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return _SESSION_CACHE


@pytest.fixture(scope="session")
def smollm2(cache_dir):
    """SmolLM2-135M-Instruct as a HookedTransformer on CPU; converted with the network refused."""
    import interp

    with no_network():
        return interp.load_model("smollm2-135m", device="cpu", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def gemma3(cache_dir):
    """Gemma 3 270M as a HookedTransformer on CPU; converted with the network refused."""
    import interp

    with no_network():
        return interp.load_model("gemma3-270m", device="cpu", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def real_texts() -> list[str]:
    """Real English passages of different lengths (Python's own reference documentation)."""
    from interp.texts import sample_texts

    return sample_texts(6, seed=1, max_chars=600)
