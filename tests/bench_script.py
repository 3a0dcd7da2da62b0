"""``scripts/bench.py`` as a module, for tests of the helpers its lines are built from."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fedcollab_bench_script",
                                                  ROOT / "scripts" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_secure_cost() -> ModuleType:
    """``scripts/secure_cost.py`` (the secure-aggregation cost helpers of the bench)."""
    spec = importlib.util.spec_from_file_location("fedcollab_secure_cost",
                                                  ROOT / "scripts" / "secure_cost.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
