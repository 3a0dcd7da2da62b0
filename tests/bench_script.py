"""The bench scripts as modules, for tests of the helpers their lines are built from."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_bench() -> ModuleType:
    """``scripts/bench.py``."""
    return _load("fedcollab_bench_script", ROOT / "scripts" / "bench.py")


def load_secure_cost() -> ModuleType:
    """``scripts/secure_cost.py`` (the secure-aggregation cost helpers of the bench)."""
    return _load("fedcollab_secure_cost", ROOT / "scripts" / "secure_cost.py")
