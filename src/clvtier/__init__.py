"""clvtier: predict customer-lifetime-value tiers from e-commerce tables.

The public API; the CLI and the HTTP service are thin shells over these functions.
Each name is imported from its module on first use, so that ``import clvtier`` (and
``clvtier --help``) does not load the data and machine-learning libraries until they
are needed.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> (module, attribute in it).
_EXPORTS: dict[str, tuple[str, str]] = {
    "TIERS": ("clvtier.target", "TIERS"),
    "ClvtierError": ("clvtier.errors", "ClvtierError"),
    "DataError": ("clvtier.errors", "DataError"),
    "Dataset": ("clvtier.validate", "Dataset"),
    "FeatureSet": ("clvtier.features", "FeatureSet"),
    "FeatureSpec": ("clvtier.features", "FeatureSpec"),
    "InputError": ("clvtier.errors", "InputError"),
    "Model": ("clvtier.predict", "Model"),
    "ModelError": ("clvtier.errors", "ModelError"),
    "Problem": ("clvtier.errors", "Problem"),
    "TierBinner": ("clvtier.target", "TierBinner"),
    "TrainConfig": ("clvtier.train", "TrainConfig"),
    "TrainResult": ("clvtier.train", "TrainResult"),
    "build_features": ("clvtier.features", "build_features"),
    "connect": ("clvtier.ingest", "connect"),
    "load": ("clvtier.validate", "load"),
    "load_model": ("clvtier.predict", "load"),
    "load_tables": ("clvtier.ingest", "load_tables"),
    "predict": ("clvtier.predict", "predict"),
    "score_frame": ("clvtier.predict", "score_frame"),
    "train": ("clvtier.train", "train"),
    "validate": ("clvtier.validate", "validate"),
    "write_features": ("clvtier.features", "write_features"),
    "write_run": ("clvtier.persist", "write_run"),
}

__all__ = [
    "TIERS",
    "ClvtierError",
    "DataError",
    "Dataset",
    "FeatureSet",
    "FeatureSpec",
    "InputError",
    "Model",
    "ModelError",
    "Problem",
    "TierBinner",
    "TrainConfig",
    "TrainResult",
    "build_features",
    "connect",
    "load",
    "load_model",
    "load_tables",
    "predict",
    "score_frame",
    "train",
    "validate",
    "write_features",
    "write_run",
]

if TYPE_CHECKING:
    from clvtier.errors import ClvtierError, DataError, InputError, ModelError, Problem
    from clvtier.features import FeatureSet, FeatureSpec, build_features, write_features
    from clvtier.ingest import connect, load_tables
    from clvtier.persist import write_run
    from clvtier.predict import Model, predict, score_frame
    from clvtier.predict import load as load_model
    from clvtier.target import TIERS, TierBinner
    from clvtier.train import TrainConfig, TrainResult, train
    from clvtier.validate import Dataset, load, validate


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'clvtier' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """The package module. Importing the submodules ``clvtier.predict``, ``clvtier.train`` and
    ``clvtier.validate`` binds them on the package under the names of the public functions;
    the functions keep those names (as when everything was imported at once)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
