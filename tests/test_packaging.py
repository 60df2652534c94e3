"""Packaging: the grammar ships inside the installed package; the metadata pins JAX alone, with an SPDX license."""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from titanax.frontend.language import grammar_text

ROOT = Path(__file__).parent.parent


def test_the_package_reads_the_grammar_from_grammar_dir():
    assert grammar_text() == (ROOT / "grammar" / "titanax.lark").read_text()


def test_metadata_pins_jax_alone_and_names_an_spdx_license():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [d.split(">")[0].split("=")[0].split("[")[0].strip() for d in project["dependencies"]]
    # jax pins its own jaxlib; a second pin would fight jax[cuda12] and jax[tpu] installs.
    assert "jax" in names and "jaxlib" not in names
    assert "jax>=0.10.2" in project["dependencies"]  # the floor the README states
    assert project["license"] == "Apache-2.0"


@pytest.mark.slow
def test_wheel_contains_the_grammar(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("titanax-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("titanax/frontend/language/titanax.lark").decode()
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert shipped == (ROOT / "grammar" / "titanax.lark").read_text()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Requires-Dist: jaxlib" not in metadata
