"""The offline data mirror that every Fashion-MNIST chapter pastes in (tools/snippets/fashion_mnist.py)."""

import gzip
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from notebook_checks import DATA_SNIPPET

MIRROR = os.environ.get("BOOK_DATA_MIRROR")
needs_mirror = pytest.mark.skipif(not MIRROR, reason="BOOK_DATA_MIRROR is not set (.ci/run sets it)")


def load_snippet():
    spec = importlib.util.spec_from_file_location("fashion_mnist_snippet", DATA_SNIPPET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_mirror
def test_mirror_provides_fashion_mnist(tmp_path):
    data = load_snippet()
    train = data.fashion_mnist(True, root=tmp_path)
    test = data.fashion_mnist(False, root=tmp_path)
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.classes[0] == "T-shirt/top" and len(train.classes) == 10
    assert tuple(train.data.shape) == (60_000, 28, 28)
    raw = tmp_path / "FashionMNIST" / "raw"
    with gzip.open(Path(MIRROR) / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz") as f:
        assert (raw / "t10k-labels-idx1-ubyte").read_bytes() == f.read()
    assert not list(raw.glob(".*.part")), "temporary files were left behind"


@needs_mirror
def test_parallel_preparation_is_safe(tmp_path):
    """Four processes prepare the same data root at once: all succeed, and the files are whole."""
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('s', {str(DATA_SNIPPET)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"ds = m.fashion_mnist(True, root={str(tmp_path)!r})\n"
        "assert len(ds) == 60000\n"
    )
    processes = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(4)]
    assert [p.wait(timeout=300) for p in processes] == [0, 0, 0, 0]
    raw = tmp_path / "FashionMNIST" / "raw"
    assert (raw / "train-images-idx3-ubyte").stat().st_size == 47_040_016
    assert not list(raw.glob(".*.part"))


def test_offline_without_mirror_names_the_variable(tmp_path, monkeypatch):
    data = load_snippet()
    monkeypatch.delenv("BOOK_DATA_MIRROR", raising=False)
    # Make the download fail the same way with or without a network: nothing listens on port 9.
    monkeypatch.setattr(data.torchvision.datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(RuntimeError, match="BOOK_DATA_MIRROR"):
        data.fashion_mnist(True, root=tmp_path)


def test_mirror_without_the_data_set_is_reported(tmp_path, monkeypatch):
    data = load_snippet()
    monkeypatch.setenv("BOOK_DATA_MIRROR", str(tmp_path / "empty-mirror"))
    with pytest.raises(FileNotFoundError, match="BOOK_DATA_MIRROR"):
        data.fashion_mnist(True, root=tmp_path / "data")
