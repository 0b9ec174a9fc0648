"""Prints the 97.5% Student-t quantiles used by crates/runner/src/stats.rs (T975).

Run: python3 scripts/reference/t_quantiles.py   (needs scipy)
"""
from scipy.stats import t

print(", ".join(f"{t.ppf(0.975, df):.4f}" for df in range(1, 31)))
