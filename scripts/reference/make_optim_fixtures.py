#!/usr/bin/env python3
"""Fixtures for crates/runner/tests/optim_vs_torch.rs: parameter trajectories of
torch.optim.SGD(momentum) and torch.optim.Adam (L2 weight decay) under given gradients.

One parameter vector of 23 values, 6 steps; step k uses the gradient grads[k] (the test makes
it with loss = sum(w * grads[k])). Writes tests/fixtures/optim/trajectories.json:
    {"init": [...], "grads": [[...]*6], "sgd": {"hparams", "after": [[...]*6]}, "adam": {...}}
"""
import json
import os

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "optim", "trajectories.json")


def trajectory(make_opt, init, grads):
    w = torch.nn.Parameter(torch.tensor(init, dtype=torch.float32))
    opt = make_opt([w])
    after = []
    for g in grads:
        opt.zero_grad()
        (w * torch.tensor(g, dtype=torch.float32)).sum().backward()
        opt.step()
        after.append(w.detach().tolist())
    return after


def main():
    gen = torch.Generator().manual_seed(2020)
    init = (torch.randn(23, generator=gen) * 0.5).tolist()
    grads = [(torch.randn(23, generator=gen) * (0.1 + k)).tolist() for k in range(6)]
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=5e-3)
    adam = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-3)
    data = {
        "script": "scripts/reference/make_optim_fixtures.py",
        "torch": torch.__version__,
        "init": init,
        "grads": grads,
        "sgd": {"hparams": sgd, "after": trajectory(lambda p: torch.optim.SGD(p, **sgd), init, grads)},
        "adam": {"hparams": {**adam, "betas": list(adam["betas"])},
                 "after": trajectory(lambda p: torch.optim.Adam(p, **adam), init, grads)},
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(data, f)
    print(f"wrote {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
