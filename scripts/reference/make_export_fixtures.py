#!/usr/bin/env python3
"""State-dict names and shapes of the PyTorch MTANet that scripts/export_pytorch.py builds, for
crates/runner/tests/export_keys.rs (our checkpoint's `model.*` names and shapes must be these,
so a checkpoint loads into the PyTorch module with `strict=True`).

Writes tests/fixtures/export/<config>.json, one per configuration below: the `model` section
of a config.yaml (as `build_network` reads it), the head sizes, the state dict as sorted
[name, shape] pairs (BatchNorm `num_batches_tracked` counters included, shape []), and the
parameter count. The configurations: every backbone kind at width_div 16, depths [2, 1, 1, 1]
(groups 4 for the ResNeXt kinds) with the default head (hidden 512, dropout 0.5, tanh VA,
one linear layer per task, avg + max pooling, 8 AUs, 7 expressions), plus 3-layer decoders
(SENet-50 VGGFace2 with the default pooling; ResNeXt-50 with max pooling only and the
ABAW 2022+ sizes, 12 AUs and 8 expressions).

Run from the repository root:  python3 scripts/reference/make_export_fixtures.py
Requires torch, torchvision, timm, pyyaml (through scripts/export_pytorch.py).
"""

import json
import os
import sys

import timm
import torch
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
import export_pytorch as ex  # noqa: E402

SCRIPT = "scripts/reference/make_export_fixtures.py"
HEAD = dict(hidden=512, dropout=0.5, va_activation="tanh", decoder_layers=1, pooling="avg_max")
SMALL = dict(width_div=16, depths=[2, 1, 1, 1])


def config(name, backbone, groups=None, n_au=8, n_expr=7, **head):
    model = dict(backbone=backbone, groups=groups, head=dict(HEAD, **head), **SMALL)
    return name, model, n_au, n_expr


CONFIGS = [
    config("resnet50", "resnet50"),
    config("resnext50_32x4d_g4", "resnext50_32x4d", groups=4),
    config("resnext50_32x4d_cbam_g4", "resnext50_32x4d_cbam", groups=4),
    config("seresnet50", "seresnet50"),
    config("senet50_vggface2", "senet50_vggface2"),
    config("senet50_vggface2_decoder3", "senet50_vggface2", decoder_layers=3),
    config("resnext50_32x4d_g4_decoder3_max_abaw3", "resnext50_32x4d", groups=4, n_au=12,
           n_expr=8, decoder_layers=3, pooling="max"),
]


def dumps(doc):
    """JSON with one top-level key and one state-dict entry per line."""
    lines = []
    for k, v in doc.items():
        if k == "state_dict":
            rows = ",\n".join("  " + json.dumps(e) for e in v)
            lines.append(f' "{k}": [\n{rows}\n ]')
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main():
    torch.manual_seed(0)
    out_dir = os.path.join(ROOT, "tests", "fixtures", "export")
    os.makedirs(out_dir, exist_ok=True)
    for name, model, n_au, n_expr in CONFIGS:
        net = ex.build_network(model, n_au, n_expr).eval()
        size = 64
        with torch.no_grad():
            va, au, expr = net(torch.randn(1, 3, size, size))
        assert va.shape == (1, 2) and au.shape == (1, n_au) and expr.shape == (1, n_expr)
        sd = net.state_dict()
        doc = {
            "made_by": SCRIPT,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__,
            "model": model, "n_au": n_au, "n_expr": n_expr,
            "parameters": sum(p.numel() for p in net.parameters()),
            "state_dict": sorted([k, list(v.shape)] for k, v in sd.items()),
        }
        path = os.path.join(out_dir, f"{name}.json")
        with open(path, "w") as fh:
            fh.write(dumps(doc))
        counters = len(ex.num_batches_tracked(net))
        print(f"{name:<40} {doc['parameters']:>9} parameters, {len(sd)} tensors "
              f"({counters} num_batches_tracked) -> {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
