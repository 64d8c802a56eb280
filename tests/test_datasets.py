"""Tests of clvtier.datasets: fetching and caching the CDNOW files."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from clvtier import datasets
from clvtier.datasets import default_cache_dir, fetch_cdnow
from clvtier.errors import InputError

FAKE = {
    "master": b" customer_id  date number_of_cds  dollar_value\r\n 00001 19970101  1   11.77\r\n",
    "sample": b" 00004 0001 19970101  2   29.33\r\n",
}


def _pip_must_not_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("pip was called although the file is cached")


@pytest.fixture
def fake_pip(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Replace ``pip download`` by writing a tiny wheel with fake CDNOW files."""
    calls: list[list[str]] = []

    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "Lifetimes-0.11.3-py3-none-any.whl", "w") as wheel:
            for kind, data in FAKE.items():
                wheel.writestr(datasets._MEMBERS[kind], data)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(datasets.subprocess, "run", run)
    monkeypatch.setattr(
        datasets, "_SHA256", {k: hashlib.sha256(v).hexdigest() for k, v in FAKE.items()}
    )
    return calls


@pytest.mark.parametrize("kind", ["master", "sample"])
def test_fetch_extracts_and_then_reuses_cache(
    tmp_path: Path, fake_pip: list[list[str]], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    path = fetch_cdnow(kind, cache_dir=tmp_path)  # type: ignore[arg-type]
    assert path == tmp_path / f"CDNOW_{kind}.txt"
    assert path.read_bytes() == FAKE[kind]
    assert len(fake_pip) == 1
    cmd = fake_pip[0]
    assert "lifetimes==0.11.3" in cmd and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    # both files come from the one wheel, so neither needs a second download
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CDNOW_master.txt", "CDNOW_sample.txt"]
    monkeypatch.setattr(datasets.subprocess, "run", _pip_must_not_run)
    assert fetch_cdnow("master", cache_dir=tmp_path) == tmp_path / "CDNOW_master.txt"
    assert fetch_cdnow("sample", cache_dir=tmp_path) == tmp_path / "CDNOW_sample.txt"


def test_corrupt_cache_is_fetched_again(tmp_path: Path, fake_pip: list[list[str]]) -> None:
    (tmp_path / "CDNOW_master.txt").write_bytes(b"truncated")
    path = fetch_cdnow("master", cache_dir=tmp_path)
    assert path.read_bytes() == FAKE["master"]
    assert len(fake_pip) == 1


def test_cache_dir_defaults_to_env(
    tmp_path: Path, fake_pip: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLVTIER_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    assert fetch_cdnow("sample") == tmp_path / "cache" / "CDNOW_sample.txt"


def test_unknown_kind_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Unknown CDNOW"):
        fetch_cdnow("full", cache_dir=tmp_path)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(OSError("no pip"), id="pip-missing"),
        pytest.param(subprocess.TimeoutExpired("pip", 300), id="timeout"),
        pytest.param(subprocess.CompletedProcess([], 1, "", "ERROR: network unreachable"),
                     id="pip-error"),
    ],
)
def test_download_failure_says_how_to_pass_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: object
) -> None:
    def run(cmd: list[str], **kwargs: object) -> object:
        if isinstance(failure, BaseException):
            raise failure
        return failure

    monkeypatch.setattr(datasets.subprocess, "run", run)
    with pytest.raises(InputError) as info:
        fetch_cdnow("master", cache_dir=tmp_path)
    assert "pass its path" in info.value.fix
    assert str(tmp_path / "CDNOW_master.txt") in info.value.fix
    assert not list(tmp_path.iterdir())


def test_unexpected_checksum_is_refused(
    tmp_path: Path, fake_pip: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "_SHA256", {"master": "0" * 64, "sample": "0" * 64})
    with pytest.raises(InputError, match="checksum"):
        fetch_cdnow("master", cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_fetch_real_cdnow_from_pypi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = fetch_cdnow("master", cache_dir=tmp_path)
    # The lifetimes copy has a header line (the original text file does not).
    master = pd.read_csv(path, sep=r"\s+", header=0, dtype={"customer_id": str, "date": str})
    assert list(master.columns) == ["customer_id", "date", "number_of_cds", "dollar_value"]
    assert len(master) == 69_659
    assert master["customer_id"].nunique() == 23_570
    sample = pd.read_csv(tmp_path / "CDNOW_sample.txt", sep=r"\s+", header=None)
    assert sample.shape == (6_919, 5)
    assert sample[1].nunique() == 2_357

    monkeypatch.setattr(datasets.subprocess, "run", _pip_must_not_run)
    assert fetch_cdnow("master", cache_dir=tmp_path) == path
    assert fetch_cdnow("sample", cache_dir=tmp_path) == tmp_path / "CDNOW_sample.txt"
