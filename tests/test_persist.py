"""Saved models load safely: exactly the types clvtier saves are trusted, nothing else runs; a model whose
files changed after training, are damaged or cannot be read is refused, naming the file."""

from __future__ import annotations

import datetime as dt
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from clvtier.errors import ModelError
from clvtier.features import build_features
from clvtier.generate import generate
from clvtier.models import KNOWN_CANDIDATES, make_pipeline
from clvtier.persist import (
    FORMAT_VERSION,
    METADATA_FILE,
    METADATA_HASH,
    MODEL_FILE,
    TRUSTED_TYPES,
    file_sha256,
    load_model,
    metadata_sha256,
    save_model,
)
from clvtier.target import TIERS
from clvtier.validate import load


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, np.ndarray]:
    data = generate(400, 5, tmp_path_factory.mktemp("persist") / "data").out
    frame = build_features(load(data), dt.date(2023, 6, 1)).frame
    labels = np.random.default_rng(0).choice(TIERS, size=len(frame))
    return frame.drop(columns=["customer_id"]), labels


def metadata_for(X: pd.DataFrame) -> dict[str, Any]:
    """The metadata scoring reads, for a pipeline fitted on ``X``."""
    return {"feature_names": list(X.columns), "feature_dtypes": {c: str(X[c].dtype) for c in X.columns},
            "feature_spec": {}, "reference": {}}


def reseal(run: Path, edit: Callable[[dict[str, Any]], Any] | None = None) -> None:
    """Edit a run's metadata, then record the SHA-256 of its files and of the metadata as they are now.

    What whoever edits the files can do too: for what the hashes alone do not catch.
    """
    meta = json.loads((run / METADATA_FILE).read_text())
    if edit is not None:
        edit(meta)
    meta["model_sha256"] = file_sha256(run / MODEL_FILE)
    meta["files"] = {name: file_sha256(run / name) for name in meta.get("files", {}) if (run / name).is_file()}
    meta[METADATA_HASH] = metadata_sha256(meta)
    (run / METADATA_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("name", KNOWN_CANDIDATES)
@pytest.mark.parametrize("btyd", [True, False], ids=["btyd", "no-btyd"])
def test_every_candidate_loads_with_exactly_the_trusted_types(name: str, btyd: bool, training, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    X, y = training
    pipeline = make_pipeline(name, 365, seed=1, btyd=btyd).fit(X, y)
    save_model(pipeline, tmp_path, metadata_for(X))
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
    reseal(run)  # whoever edits the file can do this too


def test_a_model_that_calls_a_function_of_a_trusted_library_is_refused(training, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    X, y = training
    run = tmp_path / "run"
    save_model(make_pipeline("naive_bayes", 365, btyd=False).fit(X, y), run, metadata_for(X))
    marker = tmp_path / "ran"
    # scikit-learn's test helper runs a Python script: trusted by its module's name, it would run at load.
    _with_call(run, "sklearn.utils._testing", "assert_run_python_script_without_output",
               f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')")
    with pytest.raises(ModelError, match="contains types that clvtier does not trust: "
                                         r"\['sklearn.utils._testing.assert_run_python_script_without_output'\]"):
        load_model(run)
    assert not marker.exists()


# -- every file of a bundle is checked ---------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(training, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    X, y = training
    run = tmp_path_factory.mktemp("bundle") / "run"
    save_model(make_pipeline("naive_bayes", 365, btyd=True).fit(X, y), run,
               {**metadata_for(X), "describes_past_only": False, "horizon_days": 365})
    return run


@pytest.fixture
def copy_of(bundle: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(bundle, tmp_path / "run"))


def _edit(run: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    meta = json.loads((run / METADATA_FILE).read_text())
    edit(meta)
    (run / METADATA_FILE).write_text(json.dumps(meta, indent=2))


@pytest.mark.parametrize("edit", [
    lambda m: m.update(describes_past_only=True),  # the snapshot-mode warning would follow it
    lambda m: m.update(reference={"n_transactions": 900.0}),  # the reasons would follow it
    lambda m: m["feature_dtypes"].update(n_transactions="object"),
    lambda m: m.pop(METADATA_HASH),
], ids=["snapshot-flag", "reference", "dtype", "hash-removed"])
def test_metadata_changed_after_training_is_refused(copy_of: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    _edit(copy_of, edit)
    with pytest.raises(ModelError, match=r"metadata\.json changed after training \(its SHA-256 does not match"):
        load_model(copy_of)


def test_metadata_written_again_with_the_same_values_loads(copy_of: Path) -> None:
    meta = json.loads((copy_of / METADATA_FILE).read_text())
    (copy_of / METADATA_FILE).write_text(json.dumps(dict(reversed(meta.items()))))  # another order and layout
    _, loaded = load_model(copy_of)
    assert loaded == meta


def test_a_run_of_the_earlier_format_is_refused_with_its_format(copy_of: Path) -> None:
    def earlier(m: dict[str, Any]) -> None:
        m.update(format_version=1)
        del m["files"], m[METADATA_HASH]

    _edit(copy_of, earlier)
    with pytest.raises(ModelError, match=rf"model format 1 is not supported by this clvtier \(format {FORMAT_VERSION}\)"
                                         r"\. Fix: Train the model again"):
        load_model(copy_of)


def _drop_first_feature(m: dict[str, Any]) -> None:
    m["feature_dtypes"].pop(m["feature_names"].pop(0))


@pytest.mark.parametrize(("edit", "damage"), [
    (lambda m: m.pop("feature_names"), "'feature_names' is missing"),
    (lambda m: m.pop("feature_dtypes"), "'feature_dtypes' is missing"),
    (lambda m: m.pop("feature_spec"), "'feature_spec' is missing"),
    (lambda m: m.pop("reference"), "'reference' is missing"),
    (lambda m: m.update(feature_names="n_transactions"), "'feature_names' is text, not a list"),
    (lambda m: m.update(reference=[]), "'reference' is a list, not an object"),
    (lambda m: m.update(horizon_days="365"), "'horizon_days' is text, not a whole number"),
    (lambda m: m.update(describes_past_only="no"), "'describes_past_only' is text, not true or false"),
    (lambda m: m["feature_dtypes"].pop("n_transactions"),
     "'feature_dtypes' does not give one dtype for each of 'feature_names'"),
    (lambda m: m.update(feature_spec={"categories": "Electronics"}), "'feature_spec' is not lists of names"),
    (lambda m: m.update(feature_spec={"colours": ["red"]}), "'feature_spec' is not lists of names under categories, "
                                                            "promotion_types, tables"),
    (_drop_first_feature, "'feature_names' are not the \\d+ features .*model.skops was fitted on"),
    (lambda m: m["feature_names"].reverse(), "'feature_names' are not the \\d+ features .*model.skops was fitted on"),
    (lambda m: m.pop("versions"), "'versions' does not name the clvtier and scikit-learn versions"),
    (lambda m: m["versions"].update(clvtier=1), "'versions' does not name the clvtier and scikit-learn versions"),
], ids=["no-names", "no-dtypes", "no-spec", "no-reference", "names-text", "reference-list", "horizon-text",
        "flag-text", "dtype-missing", "spec-text", "spec-key", "names-shorter", "names-reversed", "no-versions",
        "version-number"])
def test_damaged_metadata_is_refused_naming_the_key(copy_of: Path, edit: Callable[[dict[str, Any]], Any],
                                                    damage: str) -> None:
    reseal(copy_of, edit)  # as if written so: the hash alone would not catch it
    with pytest.raises(ModelError, match=rf"metadata\.json is damaged: {damage}.*Fix: Use the files of the run "
                                         "directory exactly as 'clvtier train' wrote them, or train again"):
        load_model(copy_of)


@pytest.mark.parametrize(("text", "kind"), [("[1, 2]", "a list"), ("null", "null"), ('"run"', "text")])
def test_metadata_that_is_not_an_object_is_refused(copy_of: Path, text: str, kind: str) -> None:
    (copy_of / METADATA_FILE).write_text(text)
    with pytest.raises(ModelError, match=rf"metadata\.json is damaged: it holds {kind}, not a JSON object"):
        load_model(copy_of)


@pytest.mark.parametrize("name", [MODEL_FILE, METADATA_FILE])
def test_an_unreadable_file_is_an_unusable_model(copy_of: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from clvtier.cli import app
    from clvtier.errors import EXIT_BAD_MODEL

    # Permission bits do not stop root (who runs these tests in CI): the read fails as it would for another user.
    read_bytes = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self.name == name:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ModelError, match=rf"cannot read .*{name} \(permission denied\)\. Fix: Give this user "
                                         "read permission on the run directory"):
        load_model(copy_of)
    result = CliRunner().invoke(app, ["report", str(copy_of)])
    assert result.exit_code == EXIT_BAD_MODEL, result.output
    assert f"{name} (permission denied)" in result.output and "Traceback" not in result.output


def test_a_run_directory_that_cannot_be_searched_is_an_unusable_model(copy_of: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    is_file = Path.is_file

    def denied(self: Path) -> bool:
        if self.parent == copy_of:  # as for a directory without execute permission for this user
            raise PermissionError(13, "Permission denied", str(self))
        return is_file(self)

    monkeypatch.setattr(Path, "is_file", denied)
    with pytest.raises(ModelError, match=r"cannot read .*metadata\.json \(permission denied\)"):
        load_model(copy_of)
