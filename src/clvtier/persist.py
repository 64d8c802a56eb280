"""Persist: atomic writes, model bundles and their metadata."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds.

    A failed or interrupted write leaves nothing at ``path`` (and no temporary file). A
    directory or a write-protected file at ``path`` is refused (see :func:`check_not_input`).
    """
    path = Path(path)
    check_not_input(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        # Writes to an open file fail without a file name (a full disk): the file is the output.
        if exc.filename is None:
            exc.filename = str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces the run directory ``path`` only if the block succeeds.

    An existing ``path`` is replaced only when :func:`check_run_dir` allows it.
    """
    path = Path(path).resolve()
    check_run_dir(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_not_input(out: str | Path, data: Any = None) -> None:
    """Refuse an output file that must not be replaced: one of the data's input files, a
    directory, or a write-protected file.

    Callers check before the work, so that a wrong path is reported at once, not after
    it; :func:`atomic_path` checks again. It replaces a file by renaming another over it,
    which the file's own write protection would not stop.
    """
    from clvtier.errors import InputError

    target = Path(out).resolve()
    for name, src in getattr(data, "sources", {}).items():
        path = getattr(src, "path", None)
        if path is not None and Path(path).resolve() == target:
            raise InputError(
                f"{out} is the input file of the {name} table; writing there would replace the data.",
                "Choose another output path (e.g. in a directory of its own).",
            )
    if target.is_dir():
        raise InputError(f"{out} is a directory.", "Name a file inside it, or another output path.")
    # Root may write to any file: a file without write permission for anyone is protected too.
    if target.is_file() and not (os.access(target, os.W_OK) and target.stat().st_mode & 0o222):
        raise InputError(f"{out} is write-protected; it is not replaced.",
                         f"Make it writable (chmod u+w {out}) or choose another output path.")


def check_not_run_file(out: str | Path, run_dir: str | Path) -> None:
    """Refuse an output file that is one of a run's own files (the run would be damaged)."""
    from clvtier.errors import InputError

    target = Path(out).resolve()
    if target.parent == Path(run_dir).resolve() and target.name in RUN_FILES:
        raise InputError(f"{out} is a file of the model's run; writing there would replace it.",
                         "Choose another output path (e.g. RUN_DIR/scores.csv).")


def check_run_dir(path: str | Path) -> None:
    """Refuse an output directory for a run that would replace anything but an earlier run.

    Writing a run replaces the whole directory. It may be new, empty, or a directory
    ``clvtier train`` wrote (its ``metadata.json`` says so); never the working
    directory, one that holds it, or any other directory, whose files would be lost.
    """
    from clvtier.errors import InputError

    path = Path(path).resolve()
    fix = "Name a new directory for the run (e.g. --out runs/2024-06), or an earlier run directory to replace."
    if path == Path.cwd().resolve() or path in Path.cwd().resolve().parents:
        raise InputError(f"{path} is the working directory or holds it; writing a run there would replace it.", fix)
    if not path.exists():
        return
    if not path.is_dir():
        raise InputError(f"{path} is a file, not a run directory.", fix)
    if any(path.iterdir()) and not is_run(path):
        raise InputError(
            f"{path} holds files and is not a clvtier run directory (no metadata.json from 'clvtier train'); "
            "writing the run would replace everything in it.", fix)
    others = sorted(p.name for p in path.iterdir() if p.name not in RUN_FILES)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise InputError(
            f"{path} is an earlier run that also holds {shown}, which 'clvtier train' did not write; "
            "replacing the run would delete them.",
            "Move them out of the run directory first, or name a new directory for the run.")


def is_run(path: Path) -> bool:
    """Whether ``path`` is a directory that 'clvtier train' wrote (its metadata.json says so)."""
    import json

    try:
        meta = json.loads((path / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("clvtier_run") is True


# -- model bundles --------------------------------------------------------------
MODEL_FILE = "model.skops"
METADATA_FILE = "metadata.json"
#: Every file 'clvtier train' writes into a run directory (the report, report.REPORT_FILE, last).
RUN_FILES = frozenset({MODEL_FILE, METADATA_FILE, "metrics.json", "cv.csv", "test_predictions.csv",
                       "values.csv", "report.html"})
#: 2: metadata.json records the SHA-256 of every other file of the run, and of itself.
FORMAT_VERSION = 2
#: The key of the metadata's own SHA-256 (:func:`metadata_sha256`).
METADATA_HASH = "metadata_sha256"
_AS_WRITTEN = "Use the files of the run directory exactly as 'clvtier train' wrote them, or train again."

#: The types and functions a clvtier model holds beyond those skops trusts by default,
#: exactly: skops builds or calls each one while loading, so a name trusted by its module
#: alone would let a crafted file call any function of that module. ``tests/test_persist.py``
#: checks that every candidate model loads with this list and nothing more.
TRUSTED_TYPES = frozenset({
    "clvtier.btyd.BTYDFeatures",
    "clvtier.btyd.BetaGeoModel",
    "clvtier.btyd.GammaGammaModel",
    "clvtier.decision.TierDecision",
    "clvtier.models.signed_log1p",
    "numpy.dtype",
    "sklearn.compose._column_transformer.make_column_selector",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
    "sklearn.utils._bunch.Bunch",
})


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries a saved model depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("clvtier", "scikit-learn", "numpy", "scipy", "pandas", "skops", "ibis-framework", "duckdb"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def save_model(pipeline: object, directory: Path, metadata: dict, files: Sequence[str] = ()) -> dict:
    """Write ``model.skops`` and ``metadata.json`` into ``directory`` and return the metadata written.

    skops stores the object graph as data, so loading never executes arbitrary code. The
    metadata records the SHA-256 of the model, of each of ``files`` (other files of the run,
    written into ``directory`` before) and of itself (:func:`metadata_sha256`), so a file
    changed after training is refused by name when it is read (:func:`load_model`,
    :func:`read_run_file`).
    """
    import json

    import skops.io as sio

    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / MODEL_FILE
    sio.dump(pipeline, model_path)
    meta = dict(metadata)
    meta["format_version"] = FORMAT_VERSION
    meta["model_file"] = MODEL_FILE
    meta["model_sha256"] = file_sha256(model_path)
    meta["files"] = {name: file_sha256(directory / name) for name in files}
    meta["versions"] = library_versions()
    meta = json.loads(json.dumps(meta, default=str))  # hashed as it will be read back
    meta[METADATA_HASH] = metadata_sha256(meta)
    (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def metadata_sha256(meta: Mapping[str, Any]) -> str:
    """SHA-256 of a run's metadata without its own hash: its JSON with sorted keys and no spaces.

    Over the parsed values, not the file's bytes, as the hash is stored in the file it covers.
    """
    import hashlib
    import json

    body = {k: v for k, v in meta.items() if k != METADATA_HASH}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The metadata of a run directory, checked: of this format and compatible versions, unchanged since
    training, and holding every key scoring reads, with its type.

    Raises
    ------
    ModelError
        Naming ``metadata.json`` (and the key, when one is missing or of the wrong type).
    """
    import json

    from clvtier.errors import ModelError

    path = Path(directory) / METADATA_FILE
    if not _is_file(path):
        raise ModelError(f"{directory} is not a clvtier run directory (no {METADATA_FILE}).",
                         "Pass the RUN_DIR written by 'clvtier train'.")
    try:
        meta = json.loads(_read(path).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}).", "Train the model again.") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{path} is damaged: it holds {_json_kind(meta)}, not a JSON object.", _AS_WRITTEN)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"model format {meta.get('format_version')} is not supported by this clvtier "
            f"(format {FORMAT_VERSION}).",
            "Train the model again with this version of clvtier.",
        )
    # The versions before the hash: a run from another installation is explained by its versions.
    saved = meta.get("versions")
    if not (isinstance(saved, dict) and all(isinstance(saved.get(lib), str) for lib in ("clvtier", "scikit-learn"))):
        raise ModelError(f"{path} is damaged: 'versions' does not name the clvtier and scikit-learn versions.",
                         _AS_WRITTEN)
    mine = library_versions()
    for lib in ("clvtier", "scikit-learn"):
        have, want = mine.get(lib), saved[lib]
        if lib == "clvtier":
            compatible = (have or "").split(".")[:2] == want.split(".")[:2]
        else:
            compatible = have == want
        if not compatible:
            raise ModelError(
                f"the model was saved with {lib} {want}, this installation has {lib} {have}.",
                f"Install {lib}=={want} to use this model, or train it again.",
            )
    if meta.get(METADATA_HASH) != metadata_sha256(meta):
        raise ModelError(f"{path} changed after training (its SHA-256 does not match the one it recorded).",
                         _AS_WRITTEN)
    problem = _metadata_problem(meta)
    if problem:
        raise ModelError(f"{path} is damaged: {problem}.", _AS_WRITTEN)
    return meta


#: The keys of the metadata that scoring, the report and the service read, and their JSON types.
_REQUIRED_KEYS: dict[str, type] = {
    "model_sha256": str, "files": dict, "feature_names": list, "feature_dtypes": dict, "feature_spec": dict,
    "reference": dict,
}
_OPTIONAL_KEYS: dict[str, type] = {
    "chosen_model": str, "mode": str, "target": str, "cutoff": str, "created": str, "horizon_days": int,
    "describes_past_only": bool, "thresholds": dict, "headline": dict, "not_time_bounded": list,
}
_JSON_KINDS = {str: "text", int: "a whole number", bool: "true or false", list: "a list", dict: "an object"}


def _json_kind(value: Any) -> str:
    """What a parsed JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
        return "a number"
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _metadata_problem(meta: dict[str, Any]) -> str:
    """What is wrong with the keys of a run's metadata, in words ('' when nothing is)."""
    from dataclasses import fields

    from clvtier.features import FeatureSpec

    for key, kind in {**_REQUIRED_KEYS, **_OPTIONAL_KEYS}.items():
        if key not in meta:
            if key in _REQUIRED_KEYS:
                return f"'{key}' is missing"
            continue
        value = meta[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"'{key}' is {_json_kind(value)}, not {_JSON_KINDS[kind]}"

    def texts(values: Any) -> bool:
        return all(isinstance(v, str) for v in values)

    names = meta["feature_names"]
    if not names or not texts(names) or len(set(names)) != len(names):
        return "'feature_names' is not a list of distinct feature names"
    if set(meta["feature_dtypes"]) != set(names) or not texts(meta["feature_dtypes"].values()):
        return "'feature_dtypes' does not give one dtype for each of 'feature_names'"
    spec, spec_keys = meta["feature_spec"], [f.name for f in fields(FeatureSpec)]
    if not set(spec) <= set(spec_keys) or not all(isinstance(v, list) and texts(v) for v in spec.values()):
        return f"'feature_spec' is not lists of names under {', '.join(spec_keys)}"
    if not texts(meta["files"].values()):
        return "'files' does not map each file to its SHA-256"
    return ""


def load_model(directory: str | Path) -> tuple[object, dict]:
    """Load a model bundle, refusing anything tampered with, incompatible, or of unknown types.

    Raises
    ------
    ModelError
        When the bundle is missing or unreadable, its model or metadata changed since training,
        the metadata lacks what scoring reads, it was made by an incompatible version, or it
        contains types clvtier does not save.
    """
    import hashlib

    import skops.io as sio

    from clvtier.errors import ModelError

    directory = Path(directory)
    meta_path = directory / METADATA_FILE
    model_path = directory / MODEL_FILE
    if not _is_file(meta_path) or not _is_file(model_path):
        raise ModelError(
            f"{directory} is not a clvtier model directory (no {METADATA_FILE} / {MODEL_FILE}).",
            "Pass the RUN_DIR written by 'clvtier train'.",
        )
    meta = read_metadata(directory)
    # Hashed, checked and loaded from the same bytes: the file cannot change in between.
    raw = _read(model_path)
    if hashlib.sha256(raw).hexdigest() != meta["model_sha256"]:
        raise ModelError(
            f"{model_path} changed after training (its SHA-256 does not match {METADATA_FILE}).", _AS_WRITTEN)
    try:
        untrusted = sio.get_untrusted_types(data=raw)
    except Exception as exc:
        raise ModelError(f"{model_path} is not a readable skops file ({exc}).", "Train again.") from None
    unknown = [t for t in untrusted if t not in TRUSTED_TYPES]
    if unknown:
        raise ModelError(
            f"{model_path} contains types that clvtier does not trust: {unknown[:5]}.",
            "Only load models trained by clvtier; train the model again.",
        )
    try:
        pipeline = sio.loads(raw, trusted=untrusted)
    except Exception as exc:
        raise ModelError(f"{model_path} cannot be loaded ({exc}).", "Train the model again.") from None
    fitted_on = getattr(pipeline, "feature_names_in_", None)
    if fitted_on is not None and [str(c) for c in fitted_on] != meta["feature_names"]:
        raise ModelError(f"{meta_path} is damaged: 'feature_names' are not the {len(fitted_on)} features "
                         f"{model_path} was fitted on, in their order.", _AS_WRITTEN)
    return pipeline, meta


def read_run_file(directory: str | Path, meta: Mapping[str, Any], name: str) -> bytes | None:
    """The bytes of the file ``name`` of a run, checked against the SHA-256 its metadata recorded.

    ``meta`` comes from :func:`read_metadata`. ``None`` when the run has no such file
    (training writes some files only for some runs).

    Raises
    ------
    ModelError
        When the file is missing, unreadable, or changed after training.
    """
    import hashlib

    from clvtier.errors import ModelError

    if name not in meta["files"]:
        return None
    path = Path(directory) / name
    if not _is_file(path):
        raise ModelError(f"{path} is missing ({METADATA_FILE} lists it as a file of this run).", _AS_WRITTEN)
    raw = _read(path)
    if hashlib.sha256(raw).hexdigest() != meta["files"][name]:
        raise ModelError(f"{path} changed after training (its SHA-256 does not match {METADATA_FILE}).",
                         _AS_WRITTEN)
    return raw


def _read(path: Path) -> bytes:
    """A run file's bytes; a file that cannot be read makes the run unusable (not an output problem)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _is_file(path: Path) -> bool:
    """Whether a run file exists; raised for one that cannot even be looked up (a directory without access)."""
    try:
        return path.is_file()
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: OSError) -> Exception:
    from clvtier.errors import ModelError

    reason = (exc.strerror or type(exc).__name__).lower()
    return ModelError(f"cannot read {path} ({reason}).",
                      "Give this user read permission on the run directory and its files, or train again.")


def frame_fingerprint(frame: object) -> str:
    """SHA-256 over a DataFrame's values (row order included)."""
    import hashlib

    import pandas as pd

    hashed = pd.util.hash_pandas_object(frame, index=False)  # type: ignore[arg-type]
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()


def write_run(result: object, run_dir: str | Path, command: str = "", extra: dict | None = None) -> Path:
    """Write a training run atomically: model, metadata, metrics, CV table, test predictions.

    Nothing appears at ``run_dir`` unless every file was written. The metadata records
    the SHA-256 of each file (:func:`save_model`): files written into the run directory
    later, such as the report, are not part of the run.
    """
    import json

    from clvtier.errors import InputError

    if not all(hasattr(result, a) for a in ("pipeline", "config", "metrics")):
        raise InputError(f"expected the result of clvtier.train, got {type(result).__name__}.",
                         "Pass what clvtier.train(data, config) returned.")
    r: Any = result
    run_dir = Path(run_dir)
    with atomic_dir(run_dir) as tmp:
        cfg = r.config
        metadata = {
            "clvtier_run": True,
            "created": _now(),
            "command": command,
            "mode": cfg.mode,
            "describes_past_only": cfg.mode == "snapshot",
            "target": cfg.target,
            "cutoff": r.cutoff.isoformat(),
            "horizon_days": cfg.horizon_days,
            "config": cfg.to_dict(),
            "chosen_model": r.chosen,
            "thresholds": r.binner.describe(),
            "feature_names": r.feature_names,
            "feature_dtypes": r.feature_dtypes,
            "feature_spec": r.spec.to_dict(),
            "not_time_bounded": r.undated,
            "reference": r.reference,
            "data_fingerprint": r.data_fingerprint,
            "data_summary": r.data_summary,
            "headline": r.metrics["headline"],
            "seed": cfg.seed,
        }
        if extra:
            metadata.update(extra)
        metrics = dict(r.metrics)
        metrics["timings_seconds"] = r.timings
        metrics["warnings"] = r.warnings
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
        r.cv.drop(columns=["folds", "fit_seconds"]).to_csv(tmp / "cv.csv", index=False)
        safe_csv_frame(r.predictions).to_csv(tmp / "test_predictions.csv", index=False)
        if r.values is not None:
            safe_csv_frame(r.values).to_csv(tmp / "values.csv", index=False)
        # Last: the metadata records the SHA-256 of every file above.
        save_model(r.pipeline, tmp, metadata, files=sorted(p.name for p in tmp.iterdir()))
    return run_dir


def _json_default(obj: object) -> object:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


#: First characters that make a spreadsheet run a text cell as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_csv_frame(frame: Any) -> Any:
    """Prefix text cells that a spreadsheet would run as a formula (=, +, -, @) with a quote."""
    import pandas as pd

    out = frame.copy()
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]):
            s = out[col].astype("object")
            risky = s.map(lambda v: isinstance(v, str) and v[:1] in FORMULA_STARTS)
            out[col] = s.where(~risky, "'" + s.astype(str))
    return out
