"""The grammar ships inside the installed package."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from titanax.frontend.language import grammar_text

ROOT = Path(__file__).parent.parent


def test_the_package_reads_the_grammar_from_grammar_dir():
    assert grammar_text() == (ROOT / "grammar" / "titanax.lark").read_text()


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
    assert shipped == (ROOT / "grammar" / "titanax.lark").read_text()
