"""clvtier: predict customer-lifetime-value tiers from e-commerce tables.

The public API; the CLI and the HTTP service are thin shells over these functions.
"""

from clvtier.errors import ClvtierError, DataError, InputError, ModelError, Problem
from clvtier.features import FeatureSet, FeatureSpec, build_features, write_features
from clvtier.ingest import connect, load_tables
from clvtier.persist import write_run
from clvtier.predict import Model, predict, score_frame
from clvtier.predict import load as load_model
from clvtier.target import TIERS, TierBinner
from clvtier.train import TrainConfig, TrainResult, train
from clvtier.validate import Dataset, load, validate

__version__ = "0.1.0"

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
