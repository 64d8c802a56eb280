"""The package's public names: imported on first use, and the same objects as in their modules."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_the_package_and_the_cli_loads_no_data_or_ml_library() -> None:
    out = _run("import sys, clvtier, clvtier.cli\n"
               "print(sorted(m for m in ('sklearn', 'pandas', 'duckdb', 'ibis', 'scipy') if m in sys.modules))")
    assert out.strip() == "[]"


def test_every_public_name_resolves_to_its_module_object() -> None:
    import importlib

    import clvtier

    assert sorted(clvtier.__all__) == sorted(clvtier._EXPORTS)
    for name, (module, attribute) in clvtier._EXPORTS.items():
        assert getattr(clvtier, name) is getattr(importlib.import_module(module), attribute), name
    assert set(clvtier.__all__) <= set(dir(clvtier))


def test_functions_named_like_their_modules_stay_functions() -> None:
    """``clvtier.predict`` is the function, whichever is imported first: it or its module."""
    out = _run("import clvtier.predict, clvtier.train, clvtier.validate, clvtier\n"
               "print(clvtier.predict.__module__, clvtier.train.__module__, clvtier.validate.__module__)\n"
               "from clvtier import predict\n"
               "print(callable(predict), callable(clvtier.load_model))")
    assert out.split() == ["clvtier.predict", "clvtier.train", "clvtier.validate", "True", "True"]
