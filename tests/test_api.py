"""The Python API refuses what it cannot use with clvtier's own errors, never a raw TypeError or KeyError."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from conftest import quick_run

import clvtier
from clvtier.errors import InputError
from clvtier.generate import generate, read_ground_truth
from clvtier.persist import write_run
from clvtier.predict import Model, score_frame
from clvtier.predict import load as load_model


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(400, 5, tmp_path_factory.mktemp("api") / "data").out


@pytest.fixture(scope="module")
def model(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Model:
    return load_model(quick_run(data_dir, tmp_path_factory.mktemp("api") / "run"))


def test_train_config_reads_a_date_and_a_list_written_as_text() -> None:
    cfg = clvtier.TrainConfig(cutoff="2023-06-01", candidates="logreg, blend")
    assert cfg.cutoff == dt.date(2023, 6, 1) and cfg.candidates == ("logreg", "blend")
    assert cfg.to_dict()["cutoff"] == "2023-06-01"


@pytest.mark.parametrize(("fields", "message"), [
    ({"cutoff": "June 1st"}, "'June 1st' is not a date"),
    ({"cutoff": 20230601}, "cutoff 20230601 is not a date"),
    ({"candidates": ("logreg", "xgb")}, "unknown candidate model(s) ['xgb']"),
    ({"backtests": -1}, "backtests=-1 (--backtests) is out of range"),
    ({"tier_method": "amounts"}, "the amounts tier method needs two cuts"),
    ({"n_boot": 0}, "n_boot=0 (--bootstrap) is out of range"),
], ids=["cutoff-text", "cutoff-number", "candidate", "backtests", "amounts-without-cuts", "bootstrap"])
def test_train_config_refuses_what_training_cannot_use(fields: dict, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        clvtier.TrainConfig(**fields)


def test_load_takes_a_dict_of_file_paths(data_dir: Path) -> None:
    data = clvtier.load({"transactions": str(data_dir / "transactions_final.csv"),
                         "customers": data_dir / "customers_final.csv"})
    assert sorted(data.tables) == ["customers", "transactions"]
    with pytest.raises(InputError, match="'orders' is not a table of the contract"):
        clvtier.load({"orders": str(data_dir / "transactions_final.csv")})
    with pytest.raises(InputError, match="no such file"):
        clvtier.load({"transactions": str(data_dir / "nothing.csv")})


@pytest.mark.parametrize("source", [None, 42], ids=["none", "number"])
def test_load_refuses_what_is_not_a_path(source: object) -> None:
    with pytest.raises(InputError, match="is not a path"):
        clvtier.load(source)


def test_a_path_where_the_loaded_data_belong_is_refused(data_dir: Path, model: Model) -> None:
    with pytest.raises(InputError, match="expected validated data, got str"):
        clvtier.build_features(str(data_dir), "2023-06-01")
    with pytest.raises(InputError, match="expected validated data, got str"):
        clvtier.train(str(data_dir), clvtier.TrainConfig())
    with pytest.raises(InputError, match="expected validated data, got str"):
        clvtier.predict(model, str(data_dir))
    with pytest.raises(InputError, match="expected a loaded model, got str"):
        clvtier.predict("runs/1", clvtier.load(data_dir))
    with pytest.raises(InputError, match="expected the result of clvtier.train, got str"):
        write_run("x", data_dir.parent / "run-x")


def test_score_frame_checks_its_frame_and_scores_no_customer(data_dir: Path, model: Model) -> None:
    frame = clvtier.build_features(clvtier.load(data_dir), "2023-06-01", model.spec).frame
    with pytest.raises(InputError, match="customer_id column"):
        score_frame(model, frame.drop(columns="customer_id"))
    full = score_frame(model, frame.iloc[:5])
    empty = score_frame(model, frame.iloc[:0])
    assert empty.empty and list(empty.columns) == list(full.columns)
    for col in ("p_high", "reason_1_effect"):
        assert empty[col].dtype == full[col].dtype, col
    assert list(score_frame(model, frame.iloc[:0], with_reasons=False).columns) == \
        ["customer_id", "tier", "p_low", "p_medium", "p_high"]


def test_generate_and_its_ground_truth_refuse_the_wrong_paths(data_dir: Path, tmp_path: Path) -> None:
    file = tmp_path / "a-file"
    file.write_text("")
    with pytest.raises(InputError, match="is a file, not a directory"):
        generate(10, 1, file)
    with pytest.raises(InputError, match="is not a ground-truth file"):
        read_ground_truth(data_dir / "customers_final.csv")
    assert isinstance(read_ground_truth(data_dir / "ground_truth.csv"), pd.DataFrame)
