"""Shared fixtures: a tiny synthetic MNIST-shaped data set and the path of the real MNIST.

The GPU backend's tests run in Numba's CUDA simulator unless told otherwise: the variable must
be set before Numba is first imported, so it is set here (NUMBA_ENABLE_CUDASIM=0 in the
environment runs them on a real device instead).
"""
import os
import socket
from collections import namedtuple
from pathlib import Path

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402 (after the variable above)
import pytest  # noqa: E402

from nnmnist.data.mnist import find_mnist_dir, mnist_dirs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = find_mnist_dir()

Splits = namedtuple("Splits", "trn_x trn_y dev_x dev_y tst_x tst_y")


def synthetic_splits(n_trn=600, n_dev=200, n_tst=200, n_in=784, seed=0):
    """Learnable fake data: each class lights up its own block of pixels over noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n)
        x = (rng.random((n, n_in)) * 0.3).astype(np.float32)
        block = n_in // 10
        for c in range(10):
            x[y == c, c * block:(c + 1) * block] += 0.5
        return np.ascontiguousarray(x), y.astype(np.int64)
    return Splits(*make(n_trn), *make(n_dev), *make(n_tst))


def gpu_backend_runs():
    """True when Backend 'gpu' can run in this process: on a device, or simulated."""
    from nnmnist.backends.device import gpu_available, numba_cuda_error, simulated
    return numba_cuda_error() is None and (simulated() or gpu_available())


GPU_REASON = ("the GPU backend cannot run here: no CUDA device, and NUMBA_ENABLE_CUDASIM=0 "
              "or numba.cuda missing (pip install .[gpu-sim])")


@pytest.fixture
def tiny_splits():
    return synthetic_splits()


@pytest.fixture
def mnist_dir():
    if MNIST_DIR is None:
        pytest.skip(f"real MNIST not found in {', '.join(map(str, mnist_dirs()))}")
    return MNIST_DIR


@pytest.fixture
def plain_backward_calls(monkeypatch):
    """A list that grows by one each time a unit's backward takes the plain NumPy route
    (`NumpyCompute.meprop_relu_backward`), for checking when the fused kernels run."""
    from nnmnist.backends.cpu import NumpyCompute
    calls = []
    plain = NumpyCompute.meprop_relu_backward

    def counted(self, *args):
        calls.append(1)
        return plain(self, *args)
    monkeypatch.setattr(NumpyCompute, "meprop_relu_backward", counted)
    return calls


@pytest.fixture
def loopback_only(monkeypatch):
    """Any connection to an address other than this machine's loopback fails the test."""
    real_connect = socket.socket.connect

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"test tried to reach the network: {address}")
        return real_connect(self, address)
    monkeypatch.setattr(socket.socket, "connect", connect)
