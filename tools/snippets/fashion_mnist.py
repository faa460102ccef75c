# Fashion-MNIST, with an offline mirror. This cell is the same in every chapter that
# uses the data (a test checks it against tools/snippets/fashion_mnist.py).
import gzip
import os
import shutil
from pathlib import Path

import torchvision

DATA_ROOT = Path("data")  # torchvision's dataset root, next to the notebook
# Optional: a folder laid out like DATA_ROOT, read before any download.
MIRROR_VARIABLE = "BOOK_DATA_MIRROR"


def _write_once(destination, open_source):
    """Write a file via a private temporary name, then rename it into place in one
    step, so notebooks running in parallel never see a half-written file."""
    if destination.exists():
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.{os.getpid()}.part")
    with open_source() as source, open(partial, "wb") as target:
        shutil.copyfileobj(source, target)
    os.replace(partial, destination)


def prepare_offline_copy(name, root=DATA_ROOT):
    """If BOOK_DATA_MIRROR is set, copy <mirror>/<name> into root and extract its .gz
    files, exactly as torchvision would after downloading them; torchvision then finds
    the data and downloads nothing."""
    mirror = os.environ.get(MIRROR_VARIABLE)
    if not mirror:
        return
    source_dir = Path(mirror) / name
    if not source_dir.is_dir():
        raise FileNotFoundError(f"{MIRROR_VARIABLE}={mirror} has no folder {name}/")
    for source in sorted(p for p in source_dir.rglob("*") if p.is_file()):
        destination = Path(root) / name / source.relative_to(source_dir)
        _write_once(destination, lambda: open(source, "rb"))
        if source.suffix == ".gz":
            _write_once(destination.with_suffix(""), lambda: gzip.open(source, "rb"))


def fashion_mnist(train, transform=None, root=DATA_ROOT):
    """Fashion-MNIST's training (60,000 images) or test (10,000 images) set."""
    prepare_offline_copy("FashionMNIST", root)
    try:
        return torchvision.datasets.FashionMNIST(
            root, train=train, transform=transform, download=True
        )
    except RuntimeError as error:  # "Error downloading ...": every URL failed
        raise RuntimeError(
            f"Fashion-MNIST is not in {Path(root).resolve()} and could not be "
            f"downloaded. Connect to the network, or set {MIRROR_VARIABLE} to a folder "
            "that holds FashionMNIST/raw/*.gz."
        ) from error
