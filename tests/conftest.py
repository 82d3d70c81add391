"""Shared fixtures: a tiny synthetic MNIST-shaped data set and the path of the real MNIST."""
import socket
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from nnmnist.data.mnist import find_mnist_dir, mnist_dirs

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
