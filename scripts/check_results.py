"""Checks a results/ folder the way a PyTorch user would read it.

- every run's TensorBoard event file loads in TensorBoard's EventAccumulator with the expected tags;
- results/table1.csv and results/runs.csv load in pandas.

Run: pip install tensorboard pandas && python3 scripts/check_results.py [results]
"""
import glob
import os
import sys

import pandas as pd
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

root = sys.argv[1] if len(sys.argv) > 1 else "results"
EXPECTED_SCALARS = [
    "train/loss_total", "train/loss_va", "train/loss_au", "train/loss_expr",
    "train/sigma_va", "train/sigma_au", "train/sigma_expr", "train/lr", "train/img_per_s",
    "val/va.ccc_valence", "val/va.ccc_arousal", "val/au.f1", "val/au.accuracy", "val/au.score",
    "val/expr.f1", "val/expr.accuracy", "val/expr.score",
]
runs = sorted(d for d in glob.glob(os.path.join(root, "*", "*")) if glob.glob(os.path.join(d, "events.out.tfevents.*")))
assert runs, f"no runs with event files under {root}"
for d in runs:
    ea = EventAccumulator(d, size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    tags = ea.Tags()
    missing = [t for t in EXPECTED_SCALARS if t not in tags["scalars"]]
    assert not missing, f"{d}: missing scalar tags {missing}"
    assert any(t.startswith("val/au_f1/") for t in tags["scalars"]), f"{d}: no per-AU F1"
    assert "val/expr_confusion" in tags["images"], f"{d}: no confusion image"
    print(f"{d}: {len(tags['scalars'])} scalar tags, images {tags['images']}")
for name in ["table1.csv", "runs.csv"]:
    p = os.path.join(root, name)
    if os.path.exists(p):
        df = pd.read_csv(p)
        print(f"{p}: {df.shape[0]} rows x {df.shape[1]} columns")
print("ok")
