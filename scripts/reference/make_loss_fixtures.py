#!/usr/bin/env python3
"""Reference values for crates/losses and crates/metrics.

Writes
  tests/fixtures/losses/losses.safetensors   (PyTorch: loss values and gradients)
  tests/fixtures/metrics/metrics.json        (scikit-learn / numpy: F1, accuracy, confusion, CCC)

Run from the repository root:  python3 scripts/reference/make_loss_fixtures.py

Inputs are drawn in float32 (so Rust sees exactly the same numbers); the references are
computed in float64 from those float32 values. Conventions mirrored here (and documented in
the Rust crates):
  - CE  (Eq. 1): torch.nn.functional.cross_entropy on the valid rows, mean reduction.
  - BCE (Eq. 2): binary_cross_entropy_with_logits(pos_weight=...) on the valid rows, reduced
    either as 'mean' over frames x AUs (cases bce.*, bce_mean.*, total.*) or, as Eq. 2 writes
    it, summed over the AUs and averaged over the frames: reduction='none' then .sum(1).mean()
    (cases bce_sum.*, total_sum.*). The bce_mean/bce_sum/total_sum cases draw from their own
    generator, so the earlier cases and the metrics keep their values.
  - CCC (Eq. 3-4): population statistics over the valid rows, denominator + 1e-8;
    loss = 1 - (ccc_v + ccc_a) / 2.
  - Too few valid frames (0 for CE/BCE, < 2 for CCC): the loss is exactly 0 with zero grads.
  - Kendall (Eq. 5), s = log sigma^2: VA 0.5*exp(-s)*L + 0.5*s, AU/EXPR exp(-s)*L + 0.5*s;
    the term of an absent task (including 0.5*s) is left out.
  - Metrics: sklearn f1_score(zero_division=0, labels=range(C)), accuracy_score,
    confusion_matrix(labels=range(C)); AU decision = prob >= threshold (float32 compare);
    numpy population CCC, 0 when the denominator is 0.
"""

import json
import os
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

SCRIPT = "scripts/reference/make_loss_fixtures.py"
CCC_EPS = 1e-8
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

rng = np.random.default_rng(20200202)


def f32(a):
    return np.asarray(a, dtype=np.float32)


# ----------------------------------------------------------------------------- losses (torch)


def leaf(a):
    """float64 leaf tensor holding float32-representable values."""
    return torch.tensor(f32(a).astype(np.float64), requires_grad=True)


def valid_index(mask):
    return torch.tensor(np.nonzero(np.asarray(mask) > 0.5)[0], dtype=torch.long)


def ce_ref(logits, target, mask):
    idx = valid_index(mask)
    if len(idx) == 0:
        return logits[idx[:0]].sum()
    return F.cross_entropy(logits[idx], torch.tensor(np.asarray(target)[idx.numpy()], dtype=torch.long))


def bce_ref(logits, target, mask, pos_weight=None, reduction="mean"):
    idx = valid_index(mask)
    if len(idx) == 0:
        return logits[idx[:0]].sum()
    y = torch.tensor(f32(target).astype(np.float64))[idx]
    pw = None if pos_weight is None else torch.tensor(f32(pos_weight).astype(np.float64))
    if reduction == "sum":
        per = F.binary_cross_entropy_with_logits(logits[idx], y, pos_weight=pw, reduction="none")
        return per.sum(1).mean()
    return F.binary_cross_entropy_with_logits(logits[idx], y, pos_weight=pw)


def ccc_loss_ref(pred, target, mask):
    idx = valid_index(mask)
    if len(idx) < 2:
        return pred[idx[:0]].sum()  # exact 0, zero gradient
    x = pred[idx]
    y = torch.tensor(f32(target).astype(np.float64))[idx]
    mx, my = x.mean(0), y.mean(0)
    vx = ((x - mx) ** 2).mean(0)
    vy = ((y - my) ** 2).mean(0)
    cov = ((x - mx) * (y - my)).mean(0)
    ccc = 2 * cov / (vx + vy + (mx - my) ** 2 + CCC_EPS)
    return 1 - ccc.mean()


tensors = {}
case_names = []


def put(name, value, dtype=torch.float32):
    if isinstance(value, torch.Tensor):
        value = value.detach()
    else:
        value = torch.tensor(np.asarray(value))
    tensors[name] = value.to(dtype).contiguous()


def grad_of(t):
    return torch.zeros_like(t) if t.grad is None else t.grad


def mask_of(n, p_valid):
    return f32(rng.random(n) < p_valid)


def ce_case(name, logits, target, mask):
    x = leaf(logits)
    loss = ce_ref(x, target, mask)
    loss.backward()
    p = f"ce.{name}."
    put(p + "logits", f32(logits))
    put(p + "target", np.asarray(target, dtype=np.int64), torch.int64)
    put(p + "mask", mask)
    put(p + "loss", loss, torch.float64)
    put(p + "grad_logits", grad_of(x), torch.float64)
    case_names.append(p[:-1])


def bce_case(name, logits, target, mask, pos_weight=None, prefix="bce", reduction="mean"):
    x = leaf(logits)
    loss = bce_ref(x, target, mask, pos_weight, reduction)
    loss.backward()
    p = f"{prefix}.{name}."
    put(p + "logits", f32(logits))
    put(p + "target", f32(target))
    put(p + "mask", mask)
    if pos_weight is not None:
        put(p + "pos_weight", f32(pos_weight))
    put(p + "loss", loss, torch.float64)
    put(p + "grad_logits", grad_of(x), torch.float64)
    case_names.append(p[:-1])


def ccc_case(name, pred, target, mask):
    x = leaf(pred)
    loss = ccc_loss_ref(x, target, mask)
    loss.backward()
    p = f"ccc.{name}."
    put(p + "pred", f32(pred))
    put(p + "target", f32(target))
    put(p + "mask", mask)
    put(p + "loss", loss, torch.float64)
    put(p + "grad_pred", grad_of(x), torch.float64)
    case_names.append(p[:-1])


def total_case(name, n, k, c, masks, log_vars, pos_weight=None, prefix="total",
               reduction="mean", rng=rng):
    """Eq. 5 over the tasks present; gradients w.r.t. all outputs and the three log-vars."""
    va_pred, va = f32(rng.uniform(-1, 1, (n, 2))), f32(rng.uniform(-1, 1, (n, 2)))
    au_logits, au = f32(rng.normal(0, 2, (n, k))), f32(rng.random((n, k)) < 0.3)
    expr_logits, expr = f32(rng.normal(0, 2, (n, c))), rng.integers(0, c, n)
    va_mask, au_mask, expr_mask = masks
    # Marker labels on masked rows, as the Aff-Wild2 files hold them.
    va[va_mask < 0.5] = -5.0
    au[au_mask < 0.5] = -1.0
    expr = np.where(expr_mask < 0.5, -1, expr)
    xv, xa, xe = leaf(va_pred), leaf(au_logits), leaf(expr_logits)
    s = leaf(log_vars)
    terms = []
    if (va_mask > 0.5).sum() >= 2:
        terms.append(0.5 * torch.exp(-s[0]) * ccc_loss_ref(xv, va, va_mask) + 0.5 * s[0])
    if (au_mask > 0.5).sum() >= 1:
        terms.append(torch.exp(-s[1]) * bce_ref(xa, au, au_mask, pos_weight, reduction) + 0.5 * s[1])
    if (expr_mask > 0.5).sum() >= 1:
        terms.append(torch.exp(-s[2]) * ce_ref(xe, expr, expr_mask) + 0.5 * s[2])
    total = sum(terms) if terms else torch.zeros((), dtype=torch.float64)
    if terms:
        total.backward()
    p = f"{prefix}.{name}."
    for key, val in [("va_pred", va_pred), ("va", va), ("va_mask", va_mask),
                     ("au_logits", au_logits), ("au", au), ("au_mask", au_mask),
                     ("expr_logits", expr_logits), ("expr_mask", expr_mask),
                     ("log_vars", f32(log_vars))]:
        put(p + key, val)
    put(p + "expr", np.asarray(expr, dtype=np.int64), torch.int64)
    if pos_weight is not None:
        put(p + "pos_weight", f32(pos_weight))
    put(p + "loss", total, torch.float64)
    put(p + "grad_va_pred", grad_of(xv), torch.float64)
    put(p + "grad_au_logits", grad_of(xa), torch.float64)
    put(p + "grad_expr_logits", grad_of(xe), torch.float64)
    put(p + "grad_log_vars", grad_of(s), torch.float64)
    case_names.append(p[:-1])


# CE
ce_case("random", rng.normal(0, 2, (16, 7)), rng.integers(0, 7, 16), mask_of(16, 0.7))
ce_case("all_valid", rng.normal(0, 1, (9, 7)), rng.integers(0, 7, 9), f32(np.ones(9)))
ce_case("all_masked", rng.normal(0, 1, (5, 7)), rng.integers(0, 7, 5), f32(np.zeros(5)))
ce_case("one_valid", rng.normal(0, 1, (6, 7)), rng.integers(0, 7, 6), f32([0, 0, 0, 1, 0, 0]))
ce_case("single_class", rng.normal(0, 1, (10, 7)), np.full(10, 4), f32(np.ones(10)))
ce_case("large_logits", rng.normal(0, 40, (8, 7)), rng.integers(0, 7, 8), f32(np.ones(8)))
ce_case("constant_logits", np.full((6, 7), 0.25), rng.integers(0, 7, 6), mask_of(6, 0.8))
marker_target = rng.integers(0, 7, 10)
marker_mask = f32([1, 0, 1, 1, 0, 1, 0, 1, 1, 0])
marker_target[marker_mask < 0.5] = -1
ce_case("marker_targets", rng.normal(0, 1, (10, 7)), marker_target, marker_mask)

# BCE
bce_case("random", rng.normal(0, 2, (12, 8)), rng.random((12, 8)) < 0.3, mask_of(12, 0.7))
bce_case("pos_weight", rng.normal(0, 2, (12, 8)), rng.random((12, 8)) < 0.2, mask_of(12, 0.8),
         rng.uniform(0.5, 10, 8))
bce_case("all_masked", rng.normal(0, 1, (4, 8)), rng.random((4, 8)) < 0.5, f32(np.zeros(4)))
bce_case("one_valid", rng.normal(0, 1, (5, 8)), rng.random((5, 8)) < 0.5, f32([0, 1, 0, 0, 0]),
         rng.uniform(0.5, 4, 8))
bce_case("zero_logits", np.zeros((4, 8)), rng.random((4, 8)) < 0.5, f32(np.ones(4)))
bce_case("large_logits", rng.normal(0, 50, (6, 8)), rng.random((6, 8)) < 0.5, f32(np.ones(6)),
         rng.uniform(0.5, 4, 8))
bce_case("all_negative", rng.normal(-1, 1, (6, 8)), np.zeros((6, 8)), mask_of(6, 0.9))
au_t = (rng.random((8, 8)) < 0.4).astype(np.float32)
au_m = f32([1, 1, 0, 1, 0, 1, 1, 0])
au_t[au_m < 0.5] = -1.0
bce_case("marker_targets", rng.normal(0, 1, (8, 8)), au_t, au_m)

# CCC
ccc_case("random", rng.uniform(-1, 1, (20, 2)), rng.uniform(-1, 1, (20, 2)), mask_of(20, 0.7))
_c = f32(rng.uniform(-1, 1, (24, 2)))
ccc_case("correlated", _c * 0.6 + 0.1 + f32(rng.normal(0, 0.3, _c.shape)), _c, f32(np.ones(24)))
_t = f32(rng.uniform(-1, 1, (30, 2)))
ccc_case("near_perfect", _t * 0.8 + 0.05 + f32(rng.normal(0, 0.05, _t.shape)), _t, mask_of(30, 0.8))
ccc_case("all_masked", rng.uniform(-1, 1, (5, 2)), rng.uniform(-1, 1, (5, 2)), f32(np.zeros(5)))
ccc_case("one_valid", rng.uniform(-1, 1, (5, 2)), rng.uniform(-1, 1, (5, 2)), f32([0, 0, 1, 0, 0]))
ccc_case("two_valid", rng.uniform(-1, 1, (5, 2)), rng.uniform(-1, 1, (5, 2)), f32([0, 1, 0, 1, 0]))
ccc_case("constant_pred", np.full((10, 2), 0.3), rng.uniform(-1, 1, (10, 2)), f32(np.ones(10)))
_va_t = f32(rng.uniform(-1, 1, (10, 2)))
_va_m = f32([1, 0, 1, 1, 1, 0, 1, 0, 1, 1])
_va_t[_va_m < 0.5] = -5.0
ccc_case("marker_targets", rng.uniform(-1, 1, (10, 2)), _va_t, _va_m)

# Eq. 5 totals
total_case("all_tasks", 12, 8, 7, (mask_of(12, 0.7), mask_of(12, 0.6), mask_of(12, 0.6)),
           [0.3, -0.4, 0.8], rng.uniform(0.5, 5, 8))
total_case("zero_log_vars", 10, 8, 7, (f32(np.ones(10)), f32(np.ones(10)), f32(np.ones(10))),
           [0.0, 0.0, 0.0])
total_case("expr_absent", 10, 8, 7, (mask_of(10, 0.8), mask_of(10, 0.8) * 0 + 1, f32(np.zeros(10))),
           [-0.2, 0.5, 1.1])
total_case("va_one_frame", 8, 8, 7, (f32([0, 0, 1, 0, 0, 0, 0, 0]), mask_of(8, 0.7), mask_of(8, 0.7) * 0 + 1),
           [0.7, 0.1, -0.6])
total_case("nothing_present", 4, 8, 7, (f32(np.zeros(4)), f32(np.zeros(4)), f32(np.zeros(4))),
           [0.2, 0.2, 0.2])

# AU reductions (Eq. 2 sum over AUs vs mean over frames x AUs), both on the same inputs.
rng_red = np.random.default_rng(20200320)


def bce_both(name, logits, target, mask, pos_weight=None):
    for reduction in ("sum", "mean"):
        bce_case(name, logits, target, mask, pos_weight, f"bce_{reduction}", reduction)


bce_both("random", rng_red.normal(0, 2, (12, 8)), rng_red.random((12, 8)) < 0.3,
         f32(rng_red.random(12) < 0.7))
bce_both("pos_weight", rng_red.normal(0, 2, (12, 8)), rng_red.random((12, 8)) < 0.2,
         f32(rng_red.random(12) < 0.7), rng_red.uniform(0.5, 10, 8))
bce_both("all_valid_pos_weight", rng_red.normal(0, 1, (7, 8)), rng_red.random((7, 8)) < 0.4,
         f32(np.ones(7)), rng_red.uniform(0.5, 4, 8))
bce_both("one_valid", rng_red.normal(0, 1, (5, 8)), rng_red.random((5, 8)) < 0.5,
         f32([0, 0, 0, 1, 0]))
bce_both("all_masked", rng_red.normal(0, 1, (4, 8)), rng_red.random((4, 8)) < 0.5,
         f32(np.zeros(4)), rng_red.uniform(0.5, 4, 8))
bce_both("large_logits", rng_red.normal(0, 50, (6, 8)), rng_red.random((6, 8)) < 0.5,
         f32([1, 1, 0, 1, 1, 1]), rng_red.uniform(0.5, 4, 8))
_red_t = (rng_red.random((9, 8)) < 0.4).astype(np.float32)
_red_m = f32([1, 0, 1, 1, 0, 0, 1, 1, 0])
_red_t[_red_m < 0.5] = -1.0
bce_both("marker_targets", rng_red.normal(0, 1, (9, 8)), _red_t, _red_m, rng_red.uniform(0.5, 4, 8))
bce_both("four_aus", rng_red.normal(0, 2, (10, 4)), rng_red.random((10, 4)) < 0.3,
         f32(rng_red.random(10) < 0.6))

total_case("all_tasks", 12, 8, 7, (f32(rng_red.random(12) < 0.7), f32(rng_red.random(12) < 0.6),
                                   f32(rng_red.random(12) < 0.6)),
           [0.3, -0.4, 0.8], rng_red.uniform(0.5, 5, 8), "total_sum", "sum", rng_red)
total_case("no_pos_weight", 10, 8, 7, (f32(np.ones(10)), f32(rng_red.random(10) < 0.7),
                                       f32(np.ones(10))),
           [0.1, 0.6, -0.3], None, "total_sum", "sum", rng_red)

meta = {"made_by": SCRIPT, "torch": torch.__version__, "cases": ",".join(case_names)}
out_losses = os.path.join(ROOT, "tests/fixtures/losses/losses.safetensors")
save_file(tensors, out_losses, metadata=meta)

# ---------------------------------------------------------------------------- metrics (sklearn)


def np_ccc(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) == 0:
        return 0.0
    mx, my = x.mean(), y.mean()
    den = x.var() + y.var() + (mx - my) ** 2
    return 0.0 if den == 0 else float(2 * np.mean((x - mx) * (y - my)) / den)


def fl(a):
    return [float(v) for v in np.asarray(a).ravel()]


def rows(a):
    return [[float(v) for v in r] for r in np.asarray(a)]


grid = [np.float32(j / 20) for j in range(1, 20)]


def au_metrics(probs, targets, thresholds):
    pred = (probs >= f32(thresholds)[None, :]).astype(np.int64)
    k = probs.shape[1]
    per = [float(f1_score(targets[:, i], pred[:, i], zero_division=0, labels=[0, 1]))
           for i in range(k)]
    acc = float(accuracy_score(targets.ravel(), pred.ravel()))
    return per, float(np.mean(per)), acc


def tune(probs, targets):
    """Grid threshold maximising F1; ties -> closest to 0.5, then smaller (exact fractions)."""
    out = []
    for i in range(probs.shape[1]):
        best = None
        for t in grid:
            p = probs[:, i] >= t
            y = targets[:, i] == 1
            tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
            f = Fraction(0) if 2 * tp + fp + fn == 0 else Fraction(2 * tp, 2 * tp + fp + fn)
            key = (f, -abs(Fraction(float(t)) - Fraction(1, 2)), -Fraction(float(t)))
            if best is None or key > best[0]:
                best = (key, t)
        out.append(best[1])
    return out


def au_case(name, probs, targets):
    probs, targets = f32(probs), np.asarray(targets, np.int64)
    per, f1, acc = au_metrics(probs, targets, [np.float32(0.5)] * probs.shape[1])
    th = tune(probs, targets)
    tper, tf1, tacc = au_metrics(probs, targets, th)
    return {"name": name, "n_au": probs.shape[1], "probs": rows(probs), "targets": targets.tolist(),
            "per_au_f1": per, "f1": f1, "accuracy": acc,
            "score_2020": 0.5 * f1 + 0.5 * acc, "score_2022": f1,
            "tuned_thresholds": fl(th), "tuned_per_au_f1": tper, "tuned_f1": tf1,
            "tuned_accuracy": tacc}


def expr_case(name, n_classes, pred, target):
    labels = list(range(n_classes))
    f1 = float(f1_score(target, pred, average="macro", labels=labels, zero_division=0))
    acc = float(accuracy_score(target, pred))
    return {"name": name, "n_classes": n_classes, "pred": list(map(int, pred)),
            "target": list(map(int, target)),
            "per_class_f1": fl(f1_score(target, pred, average=None, labels=labels, zero_division=0)),
            "f1": f1, "accuracy": acc, "score_2020": 0.67 * f1 + 0.33 * acc, "score_2022": f1,
            "confusion": confusion_matrix(target, pred, labels=labels).tolist()}


def va_case(name, pred, target):
    pred, target = f32(pred), f32(target)
    v, a = np_ccc(pred[:, 0], target[:, 0]), np_ccc(pred[:, 1], target[:, 1])
    return {"name": name, "pred": rows(pred), "target": rows(target),
            "ccc_valence": v, "ccc_arousal": a, "score": 0.5 * (v + a)}


def f1_case(name, pred, truth):
    return {"name": name, "pred": [bool(v) for v in pred], "truth": [bool(v) for v in truth],
            "f1": float(f1_score(np.asarray(truth, int), np.asarray(pred, int), zero_division=0,
                                 labels=[0, 1]))}


def ccc_case_m(name, x, y):
    return {"name": name, "x": fl(x), "y": fl(y), "ccc": np_ccc(x, y)}


# AU: realistic imbalance, rare AUs, one AU never present and never predicted.
n, k = 200, 8
au_rate = np.array([0.3, 0.1, 0.2, 0.4, 0.35, 0.05, 0.03, 0.0])
au_targets = (rng.random((n, k)) < au_rate).astype(np.int64)
au_logit = rng.normal(0, 1, (n, k)) + 1.5 * (2 * au_targets - 1) - 0.8
au_probs = f32(1 / (1 + np.exp(-au_logit)))
au_probs[:, 7] = f32(rng.uniform(0, 0.4, n))  # never active, never predicted at 0.5
au_cases = [
    au_case("imbalanced", au_probs, au_targets),
    au_case("single_frame", f32([[0.7, 0.2, 0.5, 0.49]]), [[1, 0, 0, 1]]),
    au_case("constant_probs", np.full((20, 3), 0.9), (rng.random((20, 3)) < 0.5)),
    au_case("all_correct", f32([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), [[1, 0], [0, 1], [1, 0]]),
]

c = 7
t = rng.integers(0, c, 300)
p = np.where(rng.random(300) < 0.4, t, rng.integers(0, c, 300))
expr_cases = [
    expr_case("random", c, p, t),
    expr_case("single_class_present", c, rng.integers(0, 3, 40), np.full(40, 4)),
    expr_case("class_absent_everywhere", c, rng.integers(0, 6, 60), rng.integers(0, 6, 60)),
    expr_case("constant_prediction", c, np.zeros(50, int), rng.integers(0, c, 50)),
    expr_case("single_frame", c, [3], [3]),
]

vt = f32(rng.uniform(-1, 1, (500, 2)))
va_cases = [
    va_case("random", rng.uniform(-1, 1, (300, 2)), rng.uniform(-1, 1, (300, 2))),
    va_case("correlated", vt * 0.7 + 0.1 + f32(rng.normal(0, 0.2, vt.shape)), vt),
    va_case("constant_pred", np.full((50, 2), 0.25), rng.uniform(-1, 1, (50, 2))),
    va_case("both_constant_equal", np.full((10, 2), 0.25), np.full((10, 2), 0.25)),
    va_case("single_frame", [[0.1, -0.3]], [[0.5, 0.2]]),
]

f1_cases = [
    f1_case("random", rng.random(100) < 0.3, rng.random(100) < 0.4),
    f1_case("never_predicted_nor_present", np.zeros(10, bool), np.zeros(10, bool)),
    f1_case("never_predicted", np.zeros(10, bool), np.arange(10) % 3 == 0),
    f1_case("all_predicted", np.ones(10, bool), np.arange(10) % 4 == 0),
    f1_case("perfect", np.arange(12) % 5 == 0, np.arange(12) % 5 == 0),
]

ccc_cases = [
    ccc_case_m("random", rng.normal(0, 1, 400), rng.normal(0.2, 2, 400)),
    ccc_case_m("offset", np.linspace(0, 1, 50) + 3.0, np.linspace(0, 1, 50)),
    ccc_case_m("anti", np.linspace(-1, 1, 21), -np.linspace(-1, 1, 21)),
    ccc_case_m("both_constant_equal", np.full(5, 0.5), np.full(5, 0.5)),
    ccc_case_m("both_constant_different", np.full(5, 0.5), np.full(5, -0.25)),
    ccc_case_m("one_pair", [0.3], [0.9]),
    ccc_case_m("empty", [], []),
]

metrics = {"made_by": SCRIPT,
           "sklearn": __import__("sklearn").__version__, "numpy": np.__version__,
           "ccc": ccc_cases, "f1_binary": f1_cases, "au": au_cases, "expr": expr_cases,
           "va": va_cases}
out_metrics = os.path.join(ROOT, "tests/fixtures/metrics/metrics.json")
with open(out_metrics, "w") as fh:
    json.dump(metrics, fh, separators=(",", ":"))
    fh.write("\n")

print(f"wrote {out_losses} ({len(case_names)} loss cases) and {out_metrics}")
