"""Prints the 97.5% Student-t quantiles used by crates/runner/src/tables/seed_summary.rs: the
table T975 (1..30 degrees of freedom), then those its test checks the expansion beyond 30 against.

Run: python3 scripts/reference/t_quantiles.py   (needs scipy)
"""
from scipy.stats import t

print(", ".join(f"{t.ppf(0.975, df):.4f}" for df in range(1, 31)))
print(", ".join(f"({df}, {t.ppf(0.975, df):.6f})" for df in (31, 40, 60, 120, 1000)))
