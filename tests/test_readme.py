"""Every ```python block of README.md runs, in order, in one namespace — as a reader pastes them.

Relative paths resolve as from the repository root (the README's `examples/images/...`), but the
working directory is a temporary one mirroring the root, so files the blocks write land there.
A line ``print(...)  # text`` must print exactly ``text``.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python[ \t]*\n(.*?)^```", text, re.S | re.M)


def expected_prints(code: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^\s*print\(.*\)\s+#\s*(.+)$", code, re.M)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 5, "README.md lost its Python examples (or the ```python fences)"


@pytest.fixture
def repo_view(tmp_path, monkeypatch):
    """A temporary working directory whose entries link to the repository root's."""
    for entry in ROOT.iterdir():
        if not entry.name.startswith("."):
            (tmp_path / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_python_blocks_run(repo_view, capsys):
    if any('feature_mask="superpixels"' in code for code in BLOCKS):
        pytest.importorskip("skimage", reason="the README's LIME example uses SLIC superpixels (the 'lime' extra)")
    if any("onnxconverter_common" in code for code in BLOCKS):
        pytest.importorskip("onnxconverter_common", reason="the README's float16 example converts a model")
    namespace: dict = {"__name__": "__readme__"}
    for i, code in enumerate(BLOCKS, 1):
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    for i, code in enumerate(BLOCKS, 1):
        for text in expected_prints(code):
            assert text in printed, f"README.md python block {i} promises {text!r}, printed {printed}"
