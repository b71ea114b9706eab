import pytest
import torch
from fakes import write_fake_cifar

from bnwd.run.data import load_cifar10


@pytest.fixture(scope="session")
def fake_data_dir(tmp_path_factory):
    """A tiny CIFAR-format archive (400 train / 100 test images) shared by the training tests."""
    d = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(d, n_train=400, n_test=100, seed=0)
    return d


@pytest.fixture(scope="session")
def fake_data(fake_data_dir):
    return load_cifar10(fake_data_dir, download=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny float64 nets: intra-op threads only add contention (10x slower on a shared 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
