"""The README's library example runs as written."""

import ast
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a markdown text."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def readme_example() -> str:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) == 1, "the README should hold exactly one Python example"
    return blocks[0]


def test_python_blocks_finds_only_python_fences():
    text = "```bash\necho no\n```\n\n```python\nx = 1\n```\n\n```python\ny = 2\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]


def test_readme_example_parses_and_its_imports_resolve():
    """Quick check (no training): a renamed module or function breaks the README here."""
    tree = ast.parse(readme_example(), filename=str(README))
    imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    assert imports, "the README example imports nothing from the library"
    exec(compile(ast.Module(imports, type_ignores=[]), str(README), "exec"), {})


@pytest.mark.slow  # 25 s as a script on an idle 2-core CPU; 48 s in pytest with the CPU loaded
def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the example writes runs/readme relative to the working dir
    exec(compile(readme_example(), str(README), "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert (tmp_path / "runs" / "readme" / "checkpoints").is_dir()
    for column in ("clean", "PGD-10", "L2L-DA"):
        assert re.search(rf"^{column}: [01]\.\d\d$", printed, flags=re.MULTILINE), printed
