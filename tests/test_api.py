"""The public Python API: lazy imports, and the README's example run as written."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_fedcollab_loads_neither_tensorflow_nor_ray() -> None:
    code = ("import fedcollab, sys; fedcollab.run; fedcollab.load_spec; fedcollab.RoundCallback; "
            "assert 'tensorflow' not in sys.modules and 'ray' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('tensorflow', 'ray')))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_public_names_resolve() -> None:
    import fedcollab

    for name in fedcollab.__all__:
        assert getattr(fedcollab, name) is not None
    with pytest.raises(AttributeError):
        fedcollab.no_such_thing  # noqa: B018


def _readme_examples() -> list[str]:
    """Every ```python block of the README, as written."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "README.md has no ```python example"
    return blocks


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_readme_examples())))
def test_readme_python_example_runs(tmp_path: Path, index: int) -> None:
    import shutil

    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    script = tmp_path / "example.py"
    script.write_text(_readme_examples()[index])
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    if index == 0:  # the run with a callback
        assert re.search(r"round 3: accuracy 0\.\d+", result.stdout), result.stdout
        assert "release verified" in result.stdout
