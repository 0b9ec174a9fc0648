#!/usr/bin/env python3
"""Reference fixtures for `mtanet evaluate` (crates/runner/src/evaluate.rs).

Writes tests/fixtures/evaluate/:
  root/annotations/{VA_Set,AU_Set,EXPR_Set}/Validation_Set/<video>.txt
      a tiny ABAW 2020 annotation root (8 AUs, 7 expressions) with -5 / -1 markers (also a
      VA row with only one column -5), a `_left` subject and a video annotated for VA only
  root/cropped_aligned/<video>/NNNNN.jpg
      empty placeholder files: evaluate only lists crop names (never decodes them); some
      labelled frames have no crop, one jpg lies past the annotation
  pred_constant/{VA_Set,AU_Set,EXPR_Set}/<video>.txt   a constant predictor
  pred_random/...                                       a seeded random predictor
  expected.json
      per prediction set and protocol ("crops": labelled frames with a crop; "all_frames":
      every labelled frame): CCC (numpy, population statistics, from the float32 values Rust
      parses), AU per-AU F1 / mean F1 (sklearn f1_score, zero_division=0) and total accuracy
      over the flattened frame x AU matrix, EXPR macro F1 (labels=range(7), zero_division=0)
      and accuracy (accuracy_score), and the ABAW 2020 composites.

Frames are scored in (video, frame) order; a frame counts for a task if no column of its
annotation row holds the marker (-5 VA, -1 AU / EXPR) and, for "crops", its jpg exists.

Run from the repository root:  python3 scripts/reference/make_eval_fixtures.py
"""

import json
import os
import shutil

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

SCRIPT = "scripts/reference/make_eval_fixtures.py"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "evaluate")

AUS = ["AU1", "AU2", "AU4", "AU6", "AU12", "AU15", "AU20", "AU25"]
EXPRS = ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"]
TASK_DIRS = {"va": "VA_Set", "au": "AU_Set", "expr": "EXPR_Set"}

rng = np.random.default_rng(20200313)

# video -> (annotation lines, tasks annotated)
VIDEOS = {
    "101-30-1080x1920": (14, ["va", "au", "expr"]),
    "202-25-640x360_left": (11, ["va", "au", "expr"]),
    "303": (9, ["va"]),
}


# Rows of COVER (14 lines; frames 1 and 8 have no crop, line 5 is an EXPR marker) that get
# every AU / class.
COVER = "101-30-1080x1920"
COVER_ROWS = [5, 6, 8, 9, 10, 11, 12]


def va_rows(n):
    rows = []
    for i in range(n):
        v, a = rng.uniform(-1, 1, 2)
        rows.append([round(float(v), 3), round(float(a), 3)])
    rows[2] = [-5, -5]
    if n > 6:
        rows[6] = [0.25, -5]  # one marker column is enough to drop the frame
    return rows


def au_rows(n):
    p = np.array([0.3, 0.1, 0.2, 0.4, 0.5, 0.05, 0.1, 0.6])
    rows = [[int(x) for x in (rng.uniform(size=8) < p)] for _ in range(n)]
    rows[3] = [-1] * 8
    return rows


def expr_rows(n):
    rows = [int(rng.choice(7, p=[0.4, 0.05, 0.05, 0.05, 0.25, 0.1, 0.1])) for _ in range(n)]
    rows[4] = -1
    return rows


def fmt_va(r):
    return ",".join(str(x) for x in r)


def write(path, header, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="\n") as f:
        f.write(header + "\n")
        for l in lines:
            f.write(l + "\n")


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    ann = {}  # (task, video) -> rows
    for video, (n, tasks) in VIDEOS.items():
        for t in tasks:
            rows = {"va": va_rows, "au": au_rows, "expr": expr_rows}[t](n)
            if video == COVER:
                # Every AU active and every class present on some scored frame, so that the
                # annotations scored against themselves give F1 1 (no zero_division case).
                if t == "au":
                    for k, i in enumerate(COVER_ROWS + [13]):
                        rows[i][k] = 1
                elif t == "expr":
                    for k, i in enumerate(COVER_ROWS[:7]):
                        rows[i] = k
            ann[(t, video)] = rows
            header = {"va": "valence,arousal", "au": ",".join(AUS), "expr": ",".join(EXPRS)}[t]
            lines = [
                fmt_va(r) if t == "va" else (",".join(map(str, r)) if t == "au" else str(r))
                for r in rows
            ]
            write(os.path.join(OUT, "root", "annotations", TASK_DIRS[t], "Validation_Set",
                               video + ".txt"), header, lines)
        # Crops: all frames but a few (start, middle), plus one jpg past the annotation.
        missing = {1, n // 2 + 1}
        crop_dir = os.path.join(OUT, "root", "cropped_aligned", video)
        os.makedirs(crop_dir, exist_ok=True)
        for f in range(1, n + 2):
            if f not in missing:
                open(os.path.join(crop_dir, "%05d.jpg" % f), "wb").close()
    crops = {
        v: {f for f in range(1, n + 2) if f not in {1, n // 2 + 1}}
        for v, (n, _) in VIDEOS.items()
    }

    # Predictions: one line per annotation line (the random set has two extra lines).
    preds = {"pred_constant": {}, "pred_random": {}}
    for (t, video), rows in ann.items():
        n = len(rows)
        if t == "va":
            const = [[0.125, -0.25]] * n
            rand = [[float(np.float32(x)) for x in rng.uniform(-1, 1, 2)] for _ in range(n + 2)]
        elif t == "au":
            const = [[1, 0, 1, 0, 1, 0, 0, 1]] * n
            rand = [[int(x) for x in rng.integers(0, 2, 8)] for _ in range(n + 2)]
        else:
            const = [0] * n
            rand = [int(x) for x in rng.integers(0, 7, n + 2)]
        for name, p in (("pred_constant", const), ("pred_random", rand)):
            preds[name][(t, video)] = p
            header = {"va": "valence,arousal", "au": ",".join(AUS), "expr": ",".join(EXPRS)}[t]
            lines = [
                ",".join(repr(x) for x in r) if t == "va"
                else (",".join(map(str, r)) if t == "au" else str(r))
                for r in p
            ]
            write(os.path.join(OUT, name, TASK_DIRS[t], video + ".txt"), header, lines)

    def ccc(x, y):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        mx, my = x.mean(), y.mean()
        vx, vy = x.var(), y.var()
        cov = ((x - mx) * (y - my)).mean()
        d = vx + vy + (mx - my) ** 2
        return float(2 * cov / d) if d > 0 else 0.0

    def f32(x):
        return float(np.float32(x))

    expected = {"script": SCRIPT, "au_names": AUS, "expr_names": EXPRS}
    for name, pset in preds.items():
        expected[name] = {}
        for proto in ("crops", "all_frames"):
            def scored(video, i):
                return proto == "all_frames" or (i + 1) in crops[video]

            yv, ya, pv, pa = [], [], [], []
            yau, pau, yex, pex = [], [], [], []
            for video in sorted(VIDEOS):
                if ("va", video) in ann:
                    for i, r in enumerate(ann[("va", video)]):
                        if -5 in r or not scored(video, i):
                            continue
                        p = pset[("va", video)][i]
                        yv.append(f32(r[0])); ya.append(f32(r[1]))
                        pv.append(f32(p[0])); pa.append(f32(p[1]))
                if ("au", video) in ann:
                    for i, r in enumerate(ann[("au", video)]):
                        if -1 in r or not scored(video, i):
                            continue
                        yau.append(r); pau.append(pset[("au", video)][i])
                if ("expr", video) in ann:
                    for i, r in enumerate(ann[("expr", video)]):
                        if r == -1 or not scored(video, i):
                            continue
                        yex.append(r); pex.append(pset[("expr", video)][i])
            yau, pau = np.array(yau), np.array(pau)
            per_au = [float(f1_score(yau[:, k], pau[:, k], zero_division=0)) for k in range(8)]
            au_f1 = float(np.mean(per_au))
            au_acc = float(accuracy_score(yau.ravel(), pau.ravel()))
            ex_f1 = float(f1_score(yex, pex, average="macro", labels=list(range(7)),
                                   zero_division=0))
            per_class = [float(x) for x in f1_score(yex, pex, average=None,
                                                    labels=list(range(7)), zero_division=0)]
            ex_acc = float(accuracy_score(yex, pex))
            cv, ca = ccc(pv, yv), ccc(pa, ya)
            expected[name][proto] = {
                "va": {"ccc_valence": cv, "ccc_arousal": ca, "score": 0.5 * (cv + ca),
                       "frames": len(yv)},
                "au": {"f1": au_f1, "accuracy": au_acc, "score": 0.5 * au_f1 + 0.5 * au_acc,
                       "per_au_f1": per_au, "frames": int(len(yau))},
                "expr": {"f1": ex_f1, "accuracy": ex_acc, "score": 0.67 * ex_f1 + 0.33 * ex_acc,
                         "per_class_f1": per_class, "frames": len(yex)},
            }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write("Made by `%s` (run it from the repository root to regenerate); see its "
                "docstring for what each file holds.\n" % SCRIPT)


if __name__ == "__main__":
    main()
