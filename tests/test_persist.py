"""Saved models load safely: exactly the types clvtier saves are trusted, nothing else runs."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from clvtier.errors import ModelError
from clvtier.features import build_features
from clvtier.generate import generate
from clvtier.models import KNOWN_CANDIDATES, make_pipeline
from clvtier.persist import MODEL_FILE, TRUSTED_TYPES, load_model, save_model
from clvtier.target import TIERS
from clvtier.validate import load


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, np.ndarray]:
    data = generate(400, 5, tmp_path_factory.mktemp("persist") / "data").out
    frame = build_features(load(data), dt.date(2023, 6, 1)).frame
    labels = np.random.default_rng(0).choice(TIERS, size=len(frame))
    return frame.drop(columns=["customer_id"]), labels


@pytest.mark.parametrize("name", KNOWN_CANDIDATES)
@pytest.mark.parametrize("btyd", [True, False], ids=["btyd", "no-btyd"])
def test_every_candidate_loads_with_exactly_the_trusted_types(name: str, btyd: bool, training, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    X, y = training
    pipeline = make_pipeline(name, 365, seed=1, btyd=btyd).fit(X, y)
    save_model(pipeline, tmp_path, {})
    assert set(sio.get_untrusted_types(file=tmp_path / MODEL_FILE)) <= TRUSTED_TYPES
    loaded, _ = load_model(tmp_path)
    # A random forest adds its trees' probabilities in parallel, in any order: equal up to the last bits.
    np.testing.assert_allclose(loaded.predict_proba(X), pipeline.predict_proba(X), rtol=1e-12)  # type: ignore[attr-defined]


def _with_call(run: Path, module: str, function: str, argument: str) -> None:
    """Make the saved pipeline's ``memory`` a call of ``module.function(argument)`` on load, and re-hash it."""
    path = run / MODEL_FILE
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    schema = json.loads(members["schema.json"])
    text = {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(argument), "is_json": True, "__id__": 9001}
    schema["content"]["content"]["memory"] = {
        "__class__": function, "__module__": module, "__loader__": "ConstructorFromReduceNode",
        "content": {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
                    "content": [text], "__id__": 9002},
        "__id__": 9003,
    }
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, content in members.items():
            z.writestr(name, content)
    meta = json.loads((run / "metadata.json").read_text())
    meta["model_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()  # whoever edits the file can do this too
    (run / "metadata.json").write_text(json.dumps(meta))


def test_a_model_that_calls_a_function_of_a_trusted_library_is_refused(training, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    X, y = training
    run = tmp_path / "run"
    save_model(make_pipeline("naive_bayes", 365, btyd=False).fit(X, y), run, {})
    marker = tmp_path / "ran"
    # scikit-learn's test helper runs a Python script: trusted by its module's name, it would run at load.
    _with_call(run, "sklearn.utils._testing", "assert_run_python_script_without_output",
               f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')")
    with pytest.raises(ModelError, match="contains types that clvtier does not trust: "
                                         r"\['sklearn.utils._testing.assert_run_python_script_without_output'\]"):
        load_model(run)
    assert not marker.exists()
