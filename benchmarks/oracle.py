"""How far is clvtier from the best possible tiers on its own synthetic data?

The generator knows every customer's latent purchase rate, dropout rate and spend
level. From that state at the cutoff, ``oracle_tier_probabilities`` simulates the
horizon and gives P(Low / Medium / High) under the thresholds clvtier fitted; the
oracle predicts the most probable tier. No model trained on the tables can know
more than the latent state, so the oracle's macro-F1 bounds what is reachable
(up to the small difference between the most-probable-tier rule and the
macro-F1-optimal one).

Usage: python benchmarks/oracle.py [--customers 10000] [--seed 42]
The last line is machine-readable:
``oracle customers=... model_macro_f1=... oracle_macro_f1=... gap=... carry_forward_macro_f1=...``
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np

from clvtier.evaluate import classification_metrics
from clvtier.generate import generate, oracle_tier_probabilities, read_ground_truth
from clvtier.models import DEFAULT_CANDIDATES
from clvtier.target import TIERS
from clvtier.train import TrainConfig, train
from clvtier.validate import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--horizon-days", type=int, default=365)
    parser.add_argument("--candidates", default=",".join(DEFAULT_CANDIDATES),
                        help="comma-separated (default: clvtier's default candidates)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        t0 = time.perf_counter()
        gen = generate(args.customers, args.seed, data_dir)
        ds = load(data_dir)
        cfg = TrainConfig(horizon_days=args.horizon_days, seed=args.seed, n_boot=200,
                          candidates=tuple(args.candidates.split(",")), backtests=0)
        result = train(ds, cfg)
        t_train = time.perf_counter() - t0
        truth = read_ground_truth(gen.files["ground_truth"]).set_index("customer_id")

    pred = result.predictions.set_index("customer_id")
    th = result.binner
    oracle = oracle_tier_probabilities(truth.reset_index(), result.cutoff, args.horizon_days,
                                       th.low_cut_, th.high_cut_, n_sims=400, seed=args.seed)
    oracle = oracle.reindex(pred.index)
    oracle_tier = np.asarray(TIERS, dtype=object)[np.argmax(oracle[["p_low", "p_medium", "p_high"]].to_numpy(), axis=1)]
    y = pred["actual_tier"].to_numpy()
    value = pred["actual_value"].to_numpy()
    m_model = classification_metrics(y, pred["predicted_tier"].to_numpy(), None, value)
    m_oracle = classification_metrics(y, oracle_tier, oracle[["p_low", "p_medium", "p_high"]].to_numpy(), value)
    m_cf = result.metrics["test"]["baseline_carry_forward"]

    print(f"Synthetic data: {args.customers:,} customers, seed {args.seed}, cutoff {result.cutoff}, "
          f"horizon {args.horizon_days} d; test customers {len(pred):,}; chosen model {result.chosen}; "
          f"train+eval {t_train:.0f} s on this machine ({dt.date.today()}).")
    print(f"{'':24s}{'accuracy':>10s}{'macro F1':>10s}{'High recall':>13s}")
    for name, m in (("clvtier (" + result.chosen + ")", m_model), ("oracle (latent state)", m_oracle),
                    ("carry-forward", m_cf)):
        print(f"{name:24s}{m['accuracy']:10.3f}{m['macro_f1']:10.3f}{m['high_recall']:13.3f}")
    gap = m_oracle["macro_f1"] - m_model["macro_f1"]
    print(f"oracle customers={len(pred)} model_macro_f1={m_model['macro_f1']:.4f} "
          f"oracle_macro_f1={m_oracle['macro_f1']:.4f} gap={gap:.4f} "
          f"carry_forward_macro_f1={m_cf['macro_f1']:.4f}")


if __name__ == "__main__":
    main()
