#!/usr/bin/env python3
"""Exports a trained mtanet-rs run to PyTorch (TorchScript) and optionally ONNX, checked
against our own forward pass.

The network is rebuilt from PyTorch modules: the backbone from torchvision (ResNet-50,
ResNeXt-50), timm (SE-ResNet-50) or the reference modules of scripts/reference/make_fixtures.py
(ResNeXt-50 + CBAM after Jongchan/attention-module, the VGGFace2 SENet-50 after
cydonia999/VGGFace2-pytorch), at the run's width, depths and groups, its state-dict names under
`backbone.`; the MTANet head (`MtaNetHead` below) under `head.`. Our tensor names are these
state-dict names, so the checkpoint's `model.*` tensors load with `strict=True` (PyTorch's
BatchNorm `num_batches_tracked` counters, which we do not keep, are set to 0; they only matter
for BatchNorm with `momentum=None`).

Then the same random input (normalised-image scale, N x 3 x S x S with S = data.image_size)
goes through the PyTorch module and through `mtanet model forward --mtanet CHECKPOINT` (the
checkpoint file chosen above); the three outputs (va, au_logits, expr_logits) must agree to a
relative error (max |diff| / max |ours|) of at most 1e-4. OUT.pt is a TorchScript archive
(`torch.jit.load(OUT.pt)`), OUT.pt2 a torch.export program (`torch.export.load(OUT.pt2).module()`); neither needs mtanet code.
Both take a batch of any size (inputs normalised as the backbone expects: ImageNet mean/std,
or the VGGFace2 mean on 0..255 pixels for senet50_vggface2), return (va, au_logits,
expr_logits) in eval mode, carry the run's config.yaml and a JSON description as extra files,
and are checked again after reloading. With --onnx OUT.onnx the module is also exported to
ONNX (dynamic batch; torch's torch.export-based exporter, or the TorchScript-based one
without onnxscript) and checked the same way in onnxruntime.

Usage (from the repository root):
  python3 scripts/export_pytorch.py RUN_DIR/checkpoints/last.safetensors OUT.pt [--onnx OUT.onnx]
  python3 scripts/export_pytorch.py RUN_DIR OUT.pt            (a run directory works too)
A run directory gives the checkpoint its figures come from, as `mtanet predict` picks it:
checkpoints/best.safetensors when the run's selection.criterion is not `last` and that file
exists, else checkpoints/last.safetensors; a file path is used as given. The first line
printed names the checkpoint used and why.
Options: --mtanet-bin PATH (default: $MTANET_BIN, else target/release/mtanet, else
`cargo run --release --`), --batch N (2), --seed N (0), --no-check.
Requires torch, torchvision, timm, safetensors, pyyaml, numpy; --onnx also onnx and
onnxruntime (and onnxscript for torch's exporter).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "reference"))
import make_fixtures as mf  # noqa: E402  (torchvision/timm builders and the reference modules)

TOLERANCE = 1e-4
POOLINGS = ("avg_max", "avg", "max")
# `ResNetConfig::from_kind`: (groups, width_per_group) at full size.
FULL_GROUPS = {
    "resnet50": (1, 64),
    "resnext50_32x4d": (32, 4),
    "resnext50_32x4d_cbam": (32, 4),
    "seresnet50": (1, 64),
    "senet50_vggface2": (1, 64),
}
OUTPUTS = ("va", "au_logits", "expr_logits")


class Backbone(nn.Module):
    """The stem and four stages of a library ResNet (its own modules, so its own state-dict
    names), returning the final feature map; no global pool, no classifier."""

    def __init__(self, net):
        super().__init__()
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.act = nn.ReLU(inplace=False)
        self.maxpool = net.maxpool
        self.layer1, self.layer2 = net.layer1, net.layer2
        self.layer3, self.layer4 = net.layer3, net.layer4

    def forward(self, x):
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def decoder(width, out, layers):
    """One task decoder: a Linear, or for several layers Linear/ReLU/.../Linear (indices 0, 2, ...)."""
    if layers == 1:
        return nn.Linear(width, out)
    mods = []
    for _ in range(layers - 1):
        mods += [nn.Linear(width, width), nn.ReLU()]
    mods.append(nn.Linear(width, out))
    return nn.Sequential(*mods)


class MtaNetHead(nn.Module):
    """The shared encoder (per kept branch: global avg / max pool -> dropout -> Linear -> ReLU,
    concatenated as [avg, max]) and the three task decoders (crates/backbones/src/mtanet.rs)."""

    def __init__(self, c, hidden, n_au, n_expr, dropout, pooling, decoder_layers, va_activation):
        super().__init__()
        if pooling not in POOLINGS or decoder_layers < 1:
            raise ValueError(f"pooling {pooling!r}, decoder_layers {decoder_layers}")
        self.use_avg = pooling in ("avg", "avg_max")
        self.use_max = pooling in ("max", "avg_max")
        if self.use_avg:
            self.avg_fc = nn.Linear(c, hidden)
        if self.use_max:
            self.max_fc = nn.Linear(c, hidden)
        width = hidden * (2 if pooling == "avg_max" else 1)
        self.va = decoder(width, 2, decoder_layers)
        self.au = decoder(width, n_au, decoder_layers)
        self.expr = decoder(width, n_expr, decoder_layers)
        self.drop = nn.Dropout(dropout)
        self.va_tanh = va_activation == "tanh"
        self.width = width

    def features(self, fmap):
        """The shared feature vector (width `self.width`) of a backbone feature map."""
        branches = []
        if self.use_avg:
            branches.append(F.relu(self.avg_fc(self.drop(fmap.mean((2, 3))))))
        if self.use_max:
            branches.append(F.relu(self.max_fc(self.drop(fmap.amax((2, 3))))))
        return branches[0] if len(branches) == 1 else torch.cat(branches, 1)

    def forward(self, fmap):
        f = self.features(fmap)
        va = self.va(f)
        if self.va_tanh:
            va = torch.tanh(va)
        return va, self.au(f), self.expr(f)


class MtaNet(nn.Module):
    """backbone + head, returning (va, au_logits, expr_logits)."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))


def build_backbone(kind, width_div, depths, groups):
    """The backbone `ResNetConfig::from_kind(kind).scaled(width_div, depths, groups)` describes
    (`groups` only for the ResNeXt kinds, as `build::model::backbone_config` does)."""
    stem = max(64 // width_div, 1)
    planes = [max(p // width_div, 1) for p in (64, 128, 256, 512)]
    depths = list(depths or [3, 4, 6, 3])
    g0, wpg0 = FULL_GROUPS[kind]
    if g0 > 1 and groups:
        g, wpg = groups, max(wpg0 * g0 // groups, 1)
    else:
        g, wpg = g0, wpg0
    if kind in ("resnet50", "resnext50_32x4d"):
        net = mf.torchvision_resnet(stem, planes, depths, g, wpg).net
    elif kind == "resnext50_32x4d_cbam":
        net = mf.RefResNet(mf.CbamBottleneck, depths, stem, planes, False, groups=g,
                           base_width=wpg)
    elif kind == "seresnet50":
        net = mf.timm_seresnet(stem, planes, depths).net
    elif kind == "senet50_vggface2":
        net = mf.RefResNet(mf.VggSeBottleneck, depths, stem, planes, True)
    else:
        raise ValueError(f"unknown backbone {kind!r}")
    return Backbone(net), 4 * planes[3]


def build_network(model_cfg, n_au, n_expr):
    """An MtaNet for the `model` section of a resolved config.yaml and the head sizes."""
    head_cfg = model_cfg.get("head") or {}
    backbone, c = build_backbone(model_cfg["backbone"], int(model_cfg.get("width_div") or 1),
                                 model_cfg.get("depths"), model_cfg.get("groups"))
    head = MtaNetHead(c, int(head_cfg.get("hidden", 512)), n_au, n_expr,
                      float(head_cfg.get("dropout", 0.5)), head_cfg.get("pooling", "avg_max"),
                      int(head_cfg.get("decoder_layers", 1)),
                      head_cfg.get("va_activation", "tanh"))
    return MtaNet(backbone, head)


def num_batches_tracked(module):
    """State-dict names of PyTorch's BatchNorm step counters (ours has none)."""
    return sorted(k for k in module.state_dict() if k.endswith("num_batches_tracked"))


def resolve_run(path):
    """(checkpoint file, config.yaml, why that file) of a run directory or a checkpoint file in
    one. For a run directory the file is the one its figures come from, as `mtanet predict`
    picks it: checkpoints/best.safetensors when the run's selection.criterion is not `last`
    and that file exists, else checkpoints/last.safetensors. A file is used as given."""
    if os.path.isdir(path):
        cfg = os.path.join(path, "config.yaml")
        last = os.path.join(path, "checkpoints", "last.safetensors")
        best = os.path.join(path, "checkpoints", "best.safetensors")
        if not os.path.isfile(cfg):
            sys.exit(f"error: {cfg} not found (expected RUN_DIR/checkpoints/*.safetensors with "
                     f"RUN_DIR/config.yaml)")
        with open(cfg) as fh:
            criterion = ((yaml.safe_load(fh) or {}).get("selection") or {}).get("criterion",
                                                                                 "last")
        if criterion != "last" and os.path.isfile(best):
            ckpt = best
            weights = ("the weights of the evaluation with the best total (each task's figure "
                       "comes from that task's best evaluation, whose weights are best-va, "
                       "best-au and best-expr.safetensors)" if criterion == "per_task"
                       else "the weights of the evaluation the run reports")
            why = f"selection.criterion `{criterion}`: {weights}; {last} holds the last weights"
        elif criterion == "last":
            ckpt = last
            why = "selection.criterion `last`: the run reports its last evaluation"
        else:
            ckpt = last
            why = (f"selection.criterion `{criterion}`, but the run has no best.safetensors (no "
                   f"evaluation was offered to model selection yet): the last weights")
    else:
        ckpt = path
        cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))),
                           "config.yaml")
        why = "the file given"
    for p in (ckpt, cfg):
        if not os.path.isfile(p):
            sys.exit(f"error: {p} not found (expected RUN_DIR/checkpoints/*.safetensors with "
                     f"RUN_DIR/config.yaml)")
    return ckpt, cfg, why


def load_checkpoint(ckpt):
    """The network's `model.*` tensors without the prefix, the names of the loss's own
    tensors, the metadata (`state`) and the head sizes."""
    tensors = load_file(ckpt)
    with safe_open(ckpt, "pt") as f:
        meta = f.metadata() or {}
    model, loss_only = {}, []
    for k, v in tensors.items():
        if not k.startswith("model."):
            continue
        name = k[len("model."):]
        # The network is backbone.* and head.*; the rest (the uncertainty weighting's
        # log-variances) belongs to the loss.
        if name.startswith(("backbone.", "head.")):
            model[name] = v
        else:
            loss_only.append(name)
    if "head.au.weight" in model:
        n_au, n_expr = model["head.au.weight"].shape[0], model["head.expr.weight"].shape[0]
    else:  # deeper decoders: the last layer of head.au / head.expr
        last = lambda task: max((k for k in model if k.startswith(f"head.{task}.")
                                 and k.endswith(".weight")),
                                key=lambda k: int(k.split(".")[2]))
        n_au, n_expr = model[last("au")].shape[0], model[last("expr")].shape[0]
    return model, sorted(loss_only), meta, n_au, n_expr


def model_keys(config):
    """The keys that define the network, as `mtanet`'s model check compares them: the `model`
    section but `pretrained` and `head.dropout`, then `data.image_size` and `data.resize`."""
    flat = {}

    def walk(node, key):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            flat[key] = node

    walk((config or {}).get("model") or {}, "model")
    for k in ("model.pretrained", "model.head.dropout"):
        flat.pop(k, None)
    data = (config or {}).get("data") or {}
    for k in ("image_size", "resize"):
        flat[f"data.{k}"] = data.get(k)
    return flat


def check_config_is_the_checkpoints(config, meta, cfg_path, ckpt):
    """Exits unless `config` defines the network the checkpoint says it was trained with (its
    `config` metadata), key by key: a config.yaml edited after training would export another
    network, with or without --no-check. A key only one side spells (a default a newer binary
    writes out, or one trimmed by hand) is not compared: both then mean the schema's default."""
    if not meta.get("config"):
        return
    try:
        trained = yaml.safe_load(meta["config"])
        if not isinstance(trained, dict):
            raise ValueError("not a mapping")
    except (yaml.YAMLError, ValueError) as e:
        sys.exit(f"error: {ckpt}: its `config` metadata is not a configuration ({e})")
    trained, given = model_keys(trained), model_keys(config)
    differ = sorted(k for k in set(trained) & set(given)
                    if trained[k] is not None and given[k] is not None
                    and trained[k] != given[k])
    if differ:
        sys.exit(f"error: {cfg_path} differs from the configuration {ckpt} was trained with in "
                 + ", ".join(f"{k} ({given.get(k)!r} against {trained.get(k)!r})"
                             for k in differ)
                 + "; export with the run's own config.yaml")


def mtanet_command(explicit):
    if explicit:
        return [explicit]
    if os.environ.get("MTANET_BIN"):
        return [os.environ["MTANET_BIN"]]
    built = os.path.join(ROOT, "target", "release", "mtanet")
    if os.path.isfile(built):
        return [built]
    return ["cargo", "run", "--release", "--quiet", "--manifest-path",
            os.path.join(ROOT, "Cargo.toml"), "--"]


def rel_err(ours, theirs):
    ours, theirs = ours.double(), theirs.double()
    return ((ours - theirs).abs().max() / ours.abs().max().clamp_min(1e-12)).item()


def compare(label, ours, theirs):
    worst = 0.0
    parts = []
    for name, a, b in zip(OUTPUTS, ours, theirs):
        if tuple(a.shape) != tuple(b.shape):
            sys.exit(f"error: {label}: {name} has shape {tuple(b.shape)}, ours {tuple(a.shape)}")
        e = rel_err(a, b)
        worst = max(worst, e)
        parts.append(f"{name} {tuple(a.shape)} rel err {e:.2e}")
    status = "ok" if worst <= TOLERANCE else "FAILED"
    print(f"{label}: " + ", ".join(parts) + f" -> {status} (tolerance {TOLERANCE:g})")
    return worst <= TOLERANCE


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="RUN_DIR (its best.safetensors under a selection "
                    "criterion other than `last`, else last.safetensors) or a checkpoint file")
    ap.add_argument("out", help="TorchScript archive to write (.pt)")
    ap.add_argument("--onnx", help="also export ONNX here and check it with onnxruntime")
    ap.add_argument("--mtanet-bin", help="the mtanet binary")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-check", action="store_true",
                    help="skip the comparison with `mtanet model forward`")
    args = ap.parse_args()
    if args.onnx:
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            sys.exit(f"error: --onnx needs {' and '.join(missing)}: "
                     f"pip install {' '.join(missing)}")

    ckpt, cfg_path, why = resolve_run(args.checkpoint)
    print(f"checkpoint: {ckpt} ({why})")
    with open(cfg_path) as fh:
        config = yaml.safe_load(fh)
    model_cfg = config["model"]
    size = int((config.get("data") or {}).get("image_size") or 112)
    weights, loss_only, meta, n_au, n_expr = load_checkpoint(ckpt)
    check_config_is_the_checkpoints(config, meta, cfg_path, ckpt)
    state = json.loads(meta.get("state", "{}") or "{}")
    net = build_network(model_cfg, n_au, n_expr)
    counters = num_batches_tracked(net)
    full = dict(weights)
    for k in counters:
        full[k] = torch.zeros((), dtype=torch.long)
    net.load_state_dict(full, strict=True)
    net.eval()
    n_params = sum(p.numel() for p in net.parameters())
    print(f"{ckpt}: {model_cfg['backbone']} width_div {model_cfg.get('width_div')} depths "
          f"{model_cfg.get('depths')} groups {model_cfg.get('groups')}, head "
          f"{model_cfg.get('head')}, {n_au} AUs, {n_expr} expressions; step "
          f"{state.get('global_step', '?')}")
    print(f"loaded {len(weights)} tensors with strict=True ({n_params} parameters; "
          f"{len(counters)} BatchNorm num_batches_tracked set to 0; loss tensors not part "
          f"of the network: {', '.join(loss_only) or 'none'})")

    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, size, size, generator=gen)
    with torch.no_grad():
        theirs = net(x)

    ok = True
    if not args.no_check:
        with tempfile.TemporaryDirectory() as tmp:
            inp, outp = os.path.join(tmp, "input.safetensors"), os.path.join(tmp, "out.safetensors")
            save_file({"input": x.contiguous()}, inp)
            cmd = mtanet_command(args.mtanet_bin) + [
                "model", "forward", "--mtanet", ckpt, "--input", inp, "--out", outp]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"error: {' '.join(cmd)} failed:\n{res.stderr}")
            ours_map = load_file(outp)
            ours = [ours_map[k] for k in OUTPUTS]
        ok &= compare("PyTorch vs mtanet model forward", ours, theirs)
    else:
        ours = theirs

    description = {"made_by": "scripts/export_pytorch.py", "checkpoint": os.path.abspath(ckpt),
                   "backbone": model_cfg["backbone"], "n_au": n_au, "n_expr": n_expr,
                   "input": ["batch", 3, size, size], "outputs": list(OUTPUTS),
                   "torch": torch.__version__}
    # The checkpoint's own description: AU and expression names in head order, and the input
    # preprocessing (channel order, scale, mean, std, size).
    for key in ("vocab", "preprocess"):
        if meta.get(key):
            description[key] = json.loads(meta[key])
    with open(cfg_path, "rb") as fh:
        extra = {"config.yaml": fh.read().decode(), "mtanet.json": json.dumps(description)}
    batch = torch.export.Dim("batch", min=1, max=4096)
    x_odd = torch.randn(args.batch + 1, 3, size, size, generator=gen)
    # Each file is written beside its final name and renamed there only once every check has
    # passed: a failed export leaves no file that looks like a good one.
    out_tmp = partial_path(args.out)
    onnx_tmp = partial_path(args.onnx) if args.onnx else None
    try:
        ok = export_and_check(args, net, x, x_odd, batch, extra, ours, ok,
                              out_tmp, onnx_tmp)
        if not ok:
            sys.exit("error: outputs differ beyond the tolerance; nothing written")
        os.replace(out_tmp, args.out)
        print(f"wrote {args.out}")
        if onnx_tmp:
            os.replace(onnx_tmp, args.onnx)
            print(f"wrote {args.onnx}")
    finally:
        for p in (out_tmp, onnx_tmp):
            if p and os.path.exists(p):
                os.remove(p)
    print("ok")


def partial_path(path):
    """Where `path` is written until its checks pass: beside it, with the same suffix."""
    root, ext = os.path.splitext(path)
    return f"{root}.partial-{os.getpid()}{ext}"


def export_and_check(args, net, x, x_odd, batch, extra, ours, ok, out_tmp, onnx_tmp):
    """Writes the export to `out_tmp` (and ONNX to `onnx_tmp`), reloads and compares each with
    `ours`; returns whether every comparison held (with `ok` before them)."""
    if args.out.endswith(".pt2"):
        program = torch.export.export(net, (x,), dynamic_shapes={"x": {0: batch}})
        torch.export.save(program, out_tmp, extra_files=extra)
        reloaded = torch.export.load(out_tmp).module()
        kind = "torch.export program"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated
            with torch.no_grad():
                scripted = torch.jit.trace(net, x, strict=False)
            torch.jit.save(scripted, out_tmp,
                           _extra_files={k: v.encode() for k, v in extra.items()})
            reloaded = torch.jit.load(out_tmp)
        kind = "TorchScript"
    with torch.no_grad():
        same, again = reloaded(x), reloaded(x_odd)
    assert again[0].shape[0] == args.batch + 1, "the batch size is fixed in the export"
    ok &= compare(f"{kind} {args.out} (reloaded)", ours, same)

    if args.onnx:
        import numpy as np
        import onnx
        import onnxruntime as ort
        names = dict(input_names=["input"], output_names=list(OUTPUTS))
        try:
            torch.onnx.export(net, (x,), onnx_tmp, dynamo=True, verbose=False,
                              dynamic_shapes={"x": {0: batch}}, **names)
            exporter = "torch.export-based exporter"
        except ImportError:  # no onnxscript: the TorchScript-based exporter
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(net, (x,), onnx_tmp, dynamo=False, opset_version=17,
                                  dynamic_axes={k: {0: "batch"} for k in ["input", *OUTPUTS]},
                                  **names)
            exporter = "TorchScript-based exporter"
        model = onnx.load(onnx_tmp)
        onnx.checker.check_model(model)
        sess = ort.InferenceSession(onnx_tmp, providers=["CPUExecutionProvider"])
        got = sess.run(list(OUTPUTS), {"input": x.numpy()})
        opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        ok &= compare(f"ONNX {args.onnx} ({exporter}, opset {opset}; onnxruntime "
                      f"{ort.__version__})", ours, [torch.from_numpy(np.asarray(g)) for g in got])
        odd = sess.run(list(OUTPUTS), {"input": x_odd.numpy()})
        assert odd[0].shape[0] == args.batch + 1, "the ONNX batch axis is not dynamic"
    return ok


if __name__ == "__main__":
    main()
