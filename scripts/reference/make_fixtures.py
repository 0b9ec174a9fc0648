#!/usr/bin/env python3
"""Reference fixtures for crates/backbones and crates/kernels (mtanet-rs).

Builds each backbone with the reference implementations (torchvision, timm, and small faithful
re-implementations of cydonia999/VGGFace2-pytorch `models/senet.py` and Jongchan/attention-module
`MODELS/cbam.py` + `model_resnet.py`), at small width/depth, random init, fixed seed, with
randomised BatchNorm statistics and affine parameters, and writes under
tests/fixtures/backbones/:

  backbones.json                    small configs (width_div, depths, groups) per kind, the
                                    full-size parameter counts (backbone without classifier)
  <kind>.weights.safetensors        the small model's state dict, PyTorch names (a checkpoint)
  <kind>.io.safetensors             input (2x3x36x36), eval output, train output, the weight R
                                    of the scalar loss sum(out_train * R), gradients of that
                                    loss w.r.t. the input ("grad.input") and named weights
                                    ("grad.<state-dict name>"), running stats after the train
                                    pass ("after_train.<name>")
  maxpool.safetensors               max-pool cases with ties and ceil-mode edges:
                                    "<case>.params" = [kernel, stride, padding, ceil],
                                    input, output, grad_output, grad_input
  mtanet.head.safetensors / mtanet.io.safetensors
                                    a tiny MTANet (the resnet50 fixture backbone + a head):
                                    eval outputs and train-mode gradients with dropout 0

Reference outputs are computed in float64 from float32-rounded weights and stored as float32.

Usage: python3 scripts/reference/make_fixtures.py [--out tests/fixtures/backbones]
Requires torch, torchvision, timm, safetensors, numpy.
"""

import argparse
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import timm
import torchvision
from safetensors.torch import load_file, save_file

SCRIPT = "scripts/reference/make_fixtures.py"
BATCH, SIZE = 2, 36

# Small variants: width_div 16 -> stem 4, planes (4, 8, 16, 32), output 128 channels.
SMALL = {
    "resnet50": dict(width_div=16, depths=[2, 1, 1, 1], groups=None),
    "resnext50_32x4d": dict(width_div=16, depths=[2, 1, 1, 1], groups=4),
    "resnext50_32x4d_cbam": dict(width_div=16, depths=[2, 1, 1, 1], groups=4),
    "seresnet50": dict(width_div=16, depths=[2, 1, 1, 1], groups=None),
    "senet50_vggface2": dict(width_div=16, depths=[2, 1, 1, 1], groups=None),
}

# Weights whose gradients are stored (besides the input).
GRAD_KEYS = {
    "resnet50": ["conv1.weight", "bn1.weight", "layer1.0.conv2.weight", "layer1.1.conv1.weight",
                 "layer2.0.downsample.0.weight", "layer4.0.bn3.bias"],
    "resnext50_32x4d": ["conv1.weight", "layer1.0.conv2.weight", "layer3.0.conv2.weight",
                        "layer4.0.bn2.weight"],
    "resnext50_32x4d_cbam": ["conv1.weight", "layer1.0.conv2.weight",
                             "layer1.0.cbam.ChannelGate.mlp.1.weight",
                             "layer1.0.cbam.ChannelGate.mlp.3.bias",
                             "layer2.0.cbam.SpatialGate.spatial.conv.weight",
                             "layer4.0.cbam.SpatialGate.spatial.bn.weight"],
    "seresnet50": ["conv1.weight", "layer1.0.conv2.weight", "layer1.0.se.fc1.weight",
                   "layer3.0.se.fc2.bias", "layer4.0.conv3.weight"],
    "senet50_vggface2": ["conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv4.weight",
                         "layer2.0.conv5.bias", "layer4.0.downsample.0.weight"],
}
AFTER_TRAIN = ["bn1.running_mean", "bn1.running_var", "layer4.0.bn3.running_var"]


# ----------------------------------------------------------------------------------------------
# Reference modules written here (faithful to the public sources named in the docstring).

class VggSeBottleneck(nn.Module):
    """cydonia999/VGGFace2-pytorch models/senet.py Bottleneck: stride in conv1, SE conv4/conv5."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.conv4 = nn.Conv2d(planes * 4, planes * 4 // 16, 1, bias=True)
        self.conv5 = nn.Conv2d(planes * 4 // 16, planes * 4, 1, bias=True)

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out2 = F.avg_pool2d(out, kernel_size=out.size(2))
        out2 = torch.sigmoid(self.conv5(self.relu(self.conv4(out2))))
        if self.downsample is not None:
            residual = self.downsample(x)
        return self.relu(out2 * out + residual)


class BasicConv(nn.Module):
    """Jongchan/attention-module MODELS/cbam.py BasicConv (conv without bias + BN, no ReLU)."""

    def __init__(self, cin, cout, k, padding):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=1, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.01, affine=True)

    def forward(self, x):
        return self.bn(self.conv(x))


class ChannelGate(nn.Module):
    def __init__(self, c, reduction=16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c, c // reduction), nn.ReLU(),
                                 nn.Linear(c // reduction, c))

    def forward(self, x):
        hw = (x.size(2), x.size(3))
        att = self.mlp(F.avg_pool2d(x, hw, stride=hw)) + self.mlp(F.max_pool2d(x, hw, stride=hw))
        return x * torch.sigmoid(att).unsqueeze(2).unsqueeze(3).expand_as(x)


class SpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.spatial = BasicConv(2, 1, 7, padding=3)

    def forward(self, x):
        pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), 1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    def __init__(self, c, reduction=16):
        super().__init__()
        self.ChannelGate = ChannelGate(c, reduction)
        self.SpatialGate = SpatialGate()

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


class CbamBottleneck(nn.Module):
    """Jongchan/attention-module model_resnet.py Bottleneck (fixed version: CBAM(planes*4)),
    with torchvision's groups/width for ResNeXt; CBAM after bn3, before the residual add."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.cbam = CBAM(planes * 4, 16)

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out = self.cbam(out)
        return self.relu(out + residual)


class RefResNet(nn.Module):
    """Stem + four stages for the two reference block types above (no classifier)."""

    def __init__(self, block, layers, stem, planes, ceil_pool, **block_kw):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        if ceil_pool:
            self.maxpool = nn.MaxPool2d(3, 2, padding=0, ceil_mode=True)
        else:
            self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        inplanes = stem
        for i, (p, n) in enumerate(zip(planes, layers)):
            stride = 1 if i == 0 else 2
            ds = None
            if stride != 1 or inplanes != p * 4:
                ds = nn.Sequential(nn.Conv2d(inplanes, p * 4, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(p * 4))
            blocks = [block(inplanes, p, stride, ds, **block_kw)]
            inplanes = p * 4
            blocks += [block(inplanes, p, **block_kw) for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# ----------------------------------------------------------------------------------------------
# Builders: (kind, stem, planes, layers, groups, width_per_group) -> module returning the map.

class FeatureMap(nn.Module):
    """Wraps a torchvision/timm ResNet so forward returns the final feature map; keeps names."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        n = self.net
        x = n.conv1(x)
        x = n.bn1(x)
        x = n.act1(x) if hasattr(n, "act1") else n.relu(x)
        x = n.maxpool(x)
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def state_dict_plain(self):
        return {k: v for k, v in self.net.state_dict().items() if not k.startswith("fc.")}


def torchvision_resnet(stem, planes, layers, groups, wpg):
    from torchvision.models.resnet import ResNet, Bottleneck
    net = ResNet(Bottleneck, layers, groups=groups, width_per_group=wpg)
    if stem != 64 or list(planes) != [64, 128, 256, 512]:
        # Rebuild stem and stages at small width with torchvision's own _make_layer.
        net.inplanes = stem
        net.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        net.bn1 = nn.BatchNorm2d(stem)
        net.layer1 = net._make_layer(Bottleneck, planes[0], layers[0])
        net.layer2 = net._make_layer(Bottleneck, planes[1], layers[1], stride=2)
        net.layer3 = net._make_layer(Bottleneck, planes[2], layers[2], stride=2)
        net.layer4 = net._make_layer(Bottleneck, planes[3], layers[3], stride=2)
    net.fc = nn.Identity()
    return FeatureMap(net)


def timm_seresnet(stem, planes, layers):
    from timm.models.resnet import ResNet, Bottleneck
    net = ResNet(Bottleneck, tuple(layers), channels=tuple(planes),
                 block_args=dict(attn_layer="se"))
    if stem != 64:
        # timm fixes the stem at 64 channels; narrow it and layer1.0's inputs to match.
        net.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        net.bn1 = nn.BatchNorm2d(stem)
        blk = net.layer1[0]
        blk.conv1 = nn.Conv2d(stem, blk.conv1.out_channels, 1, bias=False)
        blk.downsample[0] = nn.Conv2d(stem, planes[0] * 4, 1, bias=False)
    net.fc = nn.Identity()
    return FeatureMap(net)


class Plain(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def state_dict_plain(self):
        return dict(self.net.state_dict())


def build(kind, stem, planes, layers, groups):
    if kind == "resnet50":
        return torchvision_resnet(stem, planes, layers, 1, 64)
    if kind == "resnext50_32x4d":
        return torchvision_resnet(stem, planes, layers, groups, 4 * 32 // groups)
    if kind == "resnext50_32x4d_cbam":
        return Plain(RefResNet(CbamBottleneck, layers, stem, planes, False, groups=groups,
                               base_width=4 * 32 // groups))
    if kind == "seresnet50":
        return timm_seresnet(stem, planes, layers)
    if kind == "senet50_vggface2":
        return Plain(RefResNet(VggSeBottleneck, layers, stem, planes, True))
    raise ValueError(kind)


def param_count(model):
    """Trainable parameters of the backbone without classifier (BN running stats excluded)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("fc.", "net.fc.")))


def full_size_counts():
    counts = {}
    for kind in SMALL:
        m = build(kind, 64, [64, 128, 256, 512], [3, 4, 6, 3], 32)
        counts[kind] = param_count(m)
    # Cross-checks against the libraries' own full-size constructors.
    tv = torchvision.models.resnet50()
    assert counts["resnet50"] == sum(p.numel() for n, p in tv.named_parameters() if not n.startswith("fc."))
    tvx = torchvision.models.resnext50_32x4d()
    assert counts["resnext50_32x4d"] == sum(p.numel() for n, p in tvx.named_parameters() if not n.startswith("fc."))
    se = timm.create_model("seresnet50")
    assert counts["seresnet50"] == sum(p.numel() for n, p in se.named_parameters() if not n.startswith("fc."))
    legacy = timm.create_model("legacy_seresnet50")
    assert counts["senet50_vggface2"] == sum(
        p.numel() for n, p in legacy.named_parameters() if not n.startswith("last_linear.")), \
        "VGGFace2 SENet-50 must have legacy_seresnet50's parameter count"
    return counts


# ----------------------------------------------------------------------------------------------

def randomise(model, gen):
    """Random BN running stats and affine params, small biases: eval mode becomes a real test."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def make_backbone(kind, out_dir, gen, meta):
    cfg = SMALL[kind]
    div = cfg["width_div"]
    stem = 64 // div
    planes = [p // div for p in (64, 128, 256, 512)]
    torch.manual_seed(1000 + list(SMALL).index(kind))
    model = build(kind, stem, planes, cfg["depths"], cfg["groups"] or 1)
    randomise(model, gen)
    # Round weights to f32, then compute the reference in f64.
    model = model.float().double()
    # The checkpoint: weights BEFORE the train pass (which moves the running stats).
    weights = {k: (v.clone() if v.dtype == torch.int64 else f32(v).clone())
               for k, v in model.state_dict_plain().items()}
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        out_eval = model(x)
    model.train()
    xg = x.clone().requires_grad_(True)
    out_train = model(xg)
    r = torch.randn(out_train.shape, generator=gen, dtype=torch.float64)
    (out_train * r).sum().backward()

    sd = model.state_dict_plain()
    io = {"input": f32(x), "out_eval": f32(out_eval), "out_train": f32(out_train),
          "loss_weight": f32(r), "grad.input": f32(xg.grad)}
    params = dict(model.net.named_parameters()) if hasattr(model, "net") else dict(model.named_parameters())
    for key in GRAD_KEYS[kind]:
        io[f"grad.{key}"] = f32(params[key].grad)
    for key in AFTER_TRAIN:
        io[f"after_train.{key}"] = f32(sd[key])
    meta[kind] = dict(cfg, input=[BATCH, 3, SIZE, SIZE], out=list(out_eval.shape))
    return weights, io


def make_backbone_fixtures(out_dir, gen, meta):
    for kind in SMALL:
        weights, io = make_backbone(kind, out_dir, gen, meta)
        header = {"script": SCRIPT, "kind": kind}
        save_file(weights, os.path.join(out_dir, f"{kind}.weights.safetensors"), metadata=header)
        save_file(io, os.path.join(out_dir, f"{kind}.io.safetensors"), metadata=header)


# ----------------------------------------------------------------------------------------------

def make_maxpool(out_dir, gen):
    tensors = {}
    cases = [
        # name, shape, kernel, stride, padding, ceil, tie-heavy integers?
        ("padded_ties", (2, 3, 9, 9), 3, 2, 1, False, True),
        ("padded_even", (2, 2, 10, 8), 3, 2, 1, False, False),
        ("ceil_edge", (2, 3, 10, 10), 3, 2, 0, True, True),
        ("ceil_edge_rect", (1, 2, 8, 11), 3, 2, 0, True, False),
        ("ceil_pad", (1, 2, 10, 7), 3, 2, 1, True, True),
        ("ceil_dropped", (1, 1, 5, 5), 2, 3, 1, True, False),
        ("all_equal", (1, 2, 6, 6), 3, 2, 1, False, None),
    ]
    for name, shape, k, s, p, ceil, ties in cases:
        if ties is None:
            x = torch.zeros(shape, dtype=torch.float64)
        elif ties:
            x = torch.randint(0, 3, shape, generator=gen).to(torch.float64)
        else:
            x = torch.randn(shape, generator=gen, dtype=torch.float64)
        x.requires_grad_(True)
        y = F.max_pool2d(x, k, s, p, ceil_mode=ceil)
        gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        y.backward(gy)
        tensors[f"{name}.params"] = torch.tensor([k, s, p, int(ceil)], dtype=torch.int64)
        tensors[f"{name}.input"] = f32(x)
        tensors[f"{name}.output"] = f32(y)
        tensors[f"{name}.grad_output"] = f32(gy)
        tensors[f"{name}.grad_input"] = f32(x.grad)
    save_file(tensors, os.path.join(out_dir, "maxpool.safetensors"), metadata={"script": SCRIPT})


# ----------------------------------------------------------------------------------------------

class RefMtaNetHead(nn.Module):
    """Our reading of MTANet Fig. 1: [avg-pool, dropout, fc, ReLU] ++ [max-pool, dropout, fc,
    ReLU] -> 2*hidden -> VA (tanh), AU logits, EXPR logits."""

    def __init__(self, c, hidden, n_au, n_expr, dropout):
        super().__init__()
        self.avg_fc = nn.Linear(c, hidden)
        self.max_fc = nn.Linear(c, hidden)
        self.va = nn.Linear(2 * hidden, 2)
        self.au = nn.Linear(2 * hidden, n_au)
        self.expr = nn.Linear(2 * hidden, n_expr)
        self.drop = nn.Dropout(dropout)

    def forward(self, fmap):
        a = F.relu(self.avg_fc(self.drop(fmap.mean((2, 3)))))
        m = F.relu(self.max_fc(self.drop(fmap.amax((2, 3)))))
        f = torch.cat([a, m], 1)
        return torch.tanh(self.va(f)), self.au(f), self.expr(f), f


def make_mtanet(out_dir, gen, meta):
    """Tiny MTANet whose backbone is the resnet50 fixture checkpoint (loaded under `backbone.`);
    only the head weights are stored here."""
    cfg = SMALL["resnet50"]
    backbone = build("resnet50", 4, [4, 8, 16, 32], cfg["depths"], 1)
    with torch.no_grad():
        sd = {k: v for k, v in load_file(os.path.join(out_dir, "resnet50.weights.safetensors")).items()}
        backbone.net.load_state_dict(sd, strict=False)
    torch.manual_seed(77)
    head = RefMtaNetHead(128, 8, 5, 3, 0.0)
    randomise(head, gen)
    backbone, head = backbone.double(), head.float().double()
    weights = {f"head.{k}": f32(v) for k, v in head.state_dict().items()}
    x = torch.randn(BATCH, 3, 40, 40, generator=gen, dtype=torch.float64)
    backbone.eval(), head.eval()
    with torch.no_grad():
        va, au, ex, feat = head(backbone(x))
    backbone.train(), head.train()
    xg = x.clone().requires_grad_(True)
    va_t, au_t, ex_t, _ = head(backbone(xg))
    rv = torch.randn(va_t.shape, generator=gen, dtype=torch.float64)
    ra = torch.randn(au_t.shape, generator=gen, dtype=torch.float64)
    re = torch.randn(ex_t.shape, generator=gen, dtype=torch.float64)
    ((va_t * rv).sum() + (au_t * ra).sum() + (ex_t * re).sum()).backward()
    io = {"input": f32(x), "va": f32(va), "au": f32(au), "expr": f32(ex), "features": f32(feat),
          "r_va": f32(rv), "r_au": f32(ra), "r_expr": f32(re), "grad.input": f32(xg.grad),
          "grad.head.avg_fc.weight": f32(head.avg_fc.weight.grad),
          "grad.head.max_fc.bias": f32(head.max_fc.bias.grad),
          "grad.head.expr.weight": f32(head.expr.weight.grad),
          "grad.backbone.conv1.weight": f32(dict(backbone.net.named_parameters())["conv1.weight"].grad)}
    meta["mtanet"] = dict(backbone="resnet50", backbone_weights="resnet50.weights.safetensors",
                          hidden=8, n_au=5, n_expr=3, dropout=0.0, va_activation="tanh",
                          input=[BATCH, 3, 40, 40])
    header = {"script": SCRIPT, "kind": "mtanet"}
    save_file(weights, os.path.join(out_dir, "mtanet.head.safetensors"), metadata=header)
    save_file(io, os.path.join(out_dir, "mtanet.io.safetensors"), metadata=header)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/backbones")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(20200)
    meta = {"script": SCRIPT, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "small": {}, "relative_error": "max|a-b| / max|b|"}
    make_maxpool(args.out, gen)
    make_backbone_fixtures(args.out, gen, meta["small"])
    make_mtanet(args.out, gen, meta)
    meta["full_size_parameters"] = full_size_counts()
    with open(os.path.join(args.out, "backbones.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print(f"wrote {args.out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
