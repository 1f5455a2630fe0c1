"""The README's Python blocks run as written, and its commands match CI."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("i", range(len(python_blocks())))
def test_python_block_runs(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = python_blocks()[i]
    exec(compile(code, f"README.md block {i}", "exec"), {"__name__": "__readme__"})


def test_ci_runs_the_readme_test_command():
    bash = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    assert len(bash) >= 2
    assert "bridge demo" in bash[0]
    assert "pytest" in bash[1]
    assert bash[1].strip() in (ROOT / ".ci" / "run").read_text()
