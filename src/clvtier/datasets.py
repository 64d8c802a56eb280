"""Public example data: the CDNOW transaction log, fetched once and cached.

The CDNOW data (Fader & Hardie) ship inside the ``lifetimes`` 0.11.3 wheel on
PyPI. :func:`fetch_cdnow` downloads that wheel with pip (``lifetimes`` is never
installed or imported), extracts the text file into a cache directory and
checks its SHA-256, so later calls work offline.

File layouts (whitespace separated):

* ``CDNOW_master.txt``: a header line ``customer_id date number_of_cds
  dollar_value``, then 69,659 transactions of 23,570 customers; ids are
  zero-padded, dates ``YYYYMMDD``, CRLF line endings.
* ``CDNOW_sample.txt``: no header; 6,919 transactions of the 2,357-customer
  1/10 sample with columns master id, sample id, date ``YYYYMMDD``, number of
  CDs, dollar value.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

from clvtier.errors import InputError

__all__ = ["default_cache_dir", "fetch_cdnow"]

_WHEEL_REQUIREMENT = "lifetimes==0.11.3"
_MEMBERS: dict[str, str] = {
    "master": "lifetimes/datasets/CDNOW_master.txt",
    "sample": "lifetimes/datasets/CDNOW_sample.txt",
}
#: SHA-256 of the files as shipped in the lifetimes 0.11.3 wheel.
_SHA256: dict[str, str] = {
    "master": "eff6889ed364c5199d6eacbbeb7a6d559971df4406ac876f322c373f00a072ef",
    "sample": "6fae10155c0b0ba363c2c386e30f77990d22328220efd862a5edd1443420d94a",
}
_PIP_TIMEOUT_S = 300


def default_cache_dir() -> Path:
    """Return ``$CLVTIER_CACHE`` if set, else ``~/.cache/clvtier``."""
    env = os.environ.get("CLVTIER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clvtier"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_name(kind: str) -> str:
    return Path(_MEMBERS[kind]).name


def _fetch_failed(kind: str, target: Path, reason: str) -> InputError:
    name = _file_name(kind)
    return InputError(
        f"Could not fetch {name}: {reason}.",
        f"Download it yourself (`pip download --no-deps {_WHEEL_REQUIREMENT}` and unzip "
        f"{_MEMBERS[kind]} from the wheel, or get it from brucehardie.com/datasets) and pass "
        f"its path instead, or copy it to {target} so it is found offline.",
    )


def _write_atomically(data: bytes, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def fetch_cdnow(
    kind: Literal["master", "sample"] = "master", cache_dir: str | Path | None = None
) -> Path:
    """Return the path of a cached CDNOW transaction file, downloading it on first use.

    Parameters
    ----------
    kind : {"master", "sample"}, default="master"
        ``"master"``: all 23,570 customers (``CDNOW_master.txt``); ``"sample"``:
        the 2,357-customer 1/10 sample used in the BG/NBD and Pareto/NBD papers
        (``CDNOW_sample.txt``).
    cache_dir : str or Path, optional
        Where to keep the file; defaults to :func:`default_cache_dir`.

    Returns
    -------
    Path
        The cached text file (see the module docstring for its layout).

    Raises
    ------
    InputError
        If the file is not cached and cannot be downloaded (no network, pip
        missing, unexpected content).

    Examples
    --------
    >>> from clvtier.datasets import fetch_cdnow
    >>> path = fetch_cdnow("sample")  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'CDNOW_sample.txt'
    """
    if kind not in _MEMBERS:
        raise InputError(
            f"Unknown CDNOW file {kind!r}.", f"Use one of {sorted(_MEMBERS)}."
        )
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / _file_name(kind)
    if target.is_file() and _sha256(target) == _SHA256[kind]:
        return target

    with tempfile.TemporaryDirectory(prefix="clvtier-cdnow-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", _WHEEL_REQUIREMENT, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S,
                                  check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise _fetch_failed(kind, target, f"could not run pip ({exc})") from exc
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise _fetch_failed(kind, target, f"pip download failed ({last[0]})")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise _fetch_failed(kind, target, "pip downloaded no wheel")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                contents = {k: wheel.read(member) for k, member in _MEMBERS.items()}
        except (zipfile.BadZipFile, KeyError) as exc:
            raise _fetch_failed(kind, target, f"unexpected wheel content ({exc})") from exc

    for other, data in contents.items():
        if hashlib.sha256(data).hexdigest() != _SHA256[other]:
            if other == kind:
                raise _fetch_failed(kind, target, "the downloaded file has an unexpected checksum")
            continue
        # Both files come out of the same wheel; keep the other too, saving a download.
        _write_atomically(data, cache / _file_name(other))
    return target
