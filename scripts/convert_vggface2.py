#!/usr/bin/env python3
"""Convert the VGGFace2 SENet-50 weights (Python-2 pickle) to safetensors for mtanet-rs.

The VGGFace2 models of cydonia999/VGGFace2-pytorch ship as `senet50_ft_weight.pkl` (and
`senet50_scratch_weight.pkl`): a Python-2 pickle of `{state_dict_name: numpy array}`, read with
`pickle.load(f, encoding="latin1")`. candle cannot read it, so this script rewrites it as
`.safetensors` with the SAME names, which are exactly what `mtanet-backbones` expects for the
`senet50_vggface2` backbone (`conv1.weight`, `bn1.running_mean`, `layer1.0.conv1.weight`,
`layer1.0.conv4.weight` / `conv5.*` (the SE block), `layer1.0.downsample.0.weight`, ...).

Needs numpy only (no torch): safetensors is written by a tiny writer below (8-byte little-endian
header length, JSON header with dtype/shape/data_offsets, raw little-endian data).

What it does:
  * float arrays -> float32, integer arrays (e.g. `num_batches_tracked`) -> int64;
  * keeps the classifier `fc.*` (8631 identities); mtanet's loader ignores it and reports so;
  * `--legacy-timm` also accepts timm `legacy_seresnet50` names (`layer0.conv1`,
    `se_module.fc1`, `last_linear`, ...) and renames them to the VGGFace2 names (same graph).
    Those weights were trained on ImageNet input (RGB, mean/std), not the VGGFace2 input the
    `senet50_vggface2` backbone is fed, so the file says `input_normalization: imagenet` and
    mtanet's training refuses it (no mtanet backbone takes it as it is): the option is for
    using or comparing the weights outside mtanet;
  * refuses names it does not recognise unless `--keep-unknown`.

Usage:
  python3 scripts/convert_vggface2.py senet50_ft_weight.pkl senet50_ft.safetensors
  mtanet train ... --set model.pretrained=senet50_ft.safetensors   (a local path, never the Hub)
  python3 scripts/convert_vggface2.py --self-test     (round trip on a synthetic pickle)

Input normalisation of these weights (mtanet-affwild2 `Preprocess::vggface2`): BGR, 0-255, minus
mean (91.4953, 103.8827, 131.0912), no std. The file records it in its metadata
(`input_normalization: vggface2`; `imagenet` with `--legacy-timm`), and mtanet refuses a file
whose declared input differs from the one its backbone is fed.
"""

import argparse
import json
import pickle
import re
import struct
import sys

import numpy as np

# A VGGFace2 SENet-50 state-dict name (cydonia999 models/senet.py).
NAME = re.compile(
    r"^(conv1\.weight|bn1\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|fc\.(weight|bias)"
    r"|layer[1-4]\.\d+\.(conv[1-3]\.weight|conv[45]\.(weight|bias)"
    r"|bn[1-3]\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|downsample\.0\.weight"
    r"|downsample\.1\.(weight|bias|running_mean|running_var|num_batches_tracked)))$"
)

# timm legacy_seresnet50 -> VGGFace2 names (same graph, see architectures.md 1(c)).
LEGACY = [
    (re.compile(r"^layer0\.conv1\."), "conv1."),
    (re.compile(r"^layer0\.bn1\."), "bn1."),
    (re.compile(r"\.se_module\.fc1\."), ".conv4."),
    (re.compile(r"\.se_module\.fc2\."), ".conv5."),
    (re.compile(r"^last_linear\."), "fc."),
]

DTYPES = {np.dtype("float32"): "F32", np.dtype("int64"): "I64"}


def save_safetensors(tensors, path, metadata=None):
    """Writes {name: numpy array} as safetensors (names sorted, data 8-byte aligned)."""
    header = {}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])  # ascontiguousarray would turn 0-d into 1-d
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
        if arr.dtype not in DTYPES:
            raise ValueError(f"{name}: unsupported dtype {arr.dtype}")
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": DTYPES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def read_metadata(path):
    """The `__metadata__` of a safetensors file (for the self-test)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)).get("__metadata__", {})


def load_safetensors(path):
    """Reads a safetensors file written above back into numpy (for the self-test)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    inv = {v: k for k, v in DTYPES.items()}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=inv[info["dtype"]].newbyteorder("<")).reshape(info["shape"])
    return out


def rename(name, legacy):
    if legacy:
        for pattern, repl in LEGACY:
            name = pattern.sub(repl, name)
    return name


def convert(weights, legacy=False, keep_unknown=False):
    out = {}
    unknown = []
    for name, value in weights.items():
        name = name.decode("latin1") if isinstance(name, bytes) else str(name)
        new = rename(name, legacy)
        if not NAME.match(new):
            unknown.append(name)
            if not keep_unknown:
                continue
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        elif np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name}: unsupported array dtype {arr.dtype}")
        if new in out:
            raise ValueError(f"two tensors map to {new}")
        out[new] = arr
    if unknown and not keep_unknown:
        raise ValueError(f"{len(unknown)} unrecognised tensor names (e.g. {unknown[:5]}); "
                         "pass --legacy-timm for timm names or --keep-unknown to keep them")
    return out


def self_test():
    import os
    import tempfile
    rng = np.random.default_rng(0)
    fake = {"conv1.weight": rng.standard_normal((4, 3, 7, 7)),
            "bn1.running_var": rng.random(4), "bn1.num_batches_tracked": np.array(3),
            "layer1.0.conv4.weight": rng.standard_normal((1, 16, 1, 1)).astype(np.float32),
            "layer1.0.conv4.bias": rng.standard_normal(1),
            "layer2.0.downsample.1.running_mean": rng.standard_normal(32),
            "fc.weight": rng.standard_normal((5, 128))}
    with tempfile.TemporaryDirectory() as d:
        pkl = os.path.join(d, "w.pkl")
        with open(pkl, "wb") as f:
            pickle.dump(fake, f, protocol=2)
        out = os.path.join(d, "w.safetensors")
        main_args([pkl, out])
        back = load_safetensors(out)
        assert sorted(back) == sorted(fake), sorted(back)
        for k, v in fake.items():
            assert np.array_equal(back[k], np.asarray(v).astype(back[k].dtype)), k
        assert back["bn1.num_batches_tracked"].dtype == np.int64
        assert back["conv1.weight"].dtype == np.float32
        assert read_metadata(out)["input_normalization"] == "vggface2"
        legacy_pkl = os.path.join(d, "legacy.pkl")
        with open(legacy_pkl, "wb") as f:
            pickle.dump({"layer0.conv1.weight": fake["conv1.weight"]}, f, protocol=2)
        legacy_out = os.path.join(d, "legacy.safetensors")
        main_args(["--legacy-timm", legacy_pkl, legacy_out])
        assert read_metadata(legacy_out)["input_normalization"] == "imagenet"
        legacy = {"layer0.conv1.weight": fake["conv1.weight"],
                  "layer1.0.se_module.fc1.bias": fake["layer1.0.conv4.bias"]}
        assert sorted(convert(legacy, legacy=True)) == ["conv1.weight", "layer1.0.conv4.bias"]
        try:
            convert({"layer1.0.se.fc1.weight": np.zeros(1)})
            raise AssertionError("unknown name accepted")
        except ValueError:
            pass
        try:
            import safetensors.numpy  # optional cross-check with the reference reader
            ref = safetensors.numpy.load_file(out)
            assert all(np.array_equal(ref[k], back[k]) for k in back)
        except ImportError:
            pass
    print("self-test ok")


def main_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pkl", nargs="?", help="senet50_ft_weight.pkl (Python-2 pickle of numpy arrays)")
    ap.add_argument("out", nargs="?", help="output .safetensors")
    ap.add_argument("--legacy-timm", action="store_true",
                    help="also rename timm legacy_seresnet50 names to VGGFace2 names (ImageNet "
                         "weights: the file declares ImageNet input, which mtanet's "
                         "senet50_vggface2 refuses)")
    ap.add_argument("--keep-unknown", action="store_true", help="keep unrecognised names as they are")
    ap.add_argument("--self-test", action="store_true", help="round-trip a synthetic pickle and exit")
    args = ap.parse_args(argv)
    if args.self_test:
        self_test()
        return
    if not args.pkl or not args.out:
        ap.error("pkl and out are required")
    with open(args.pkl, "rb") as f:
        weights = pickle.load(f, encoding="latin1")
    if not isinstance(weights, dict):
        sys.exit(f"{args.pkl}: expected a dict of arrays, got {type(weights).__name__}")
    tensors = convert(weights, args.legacy_timm, args.keep_unknown)
    save_safetensors(tensors, args.out, metadata={
        "source": args.pkl,
        "script": "scripts/convert_vggface2.py",
        "input_normalization": "imagenet" if args.legacy_timm else "vggface2",
    })
    n = sum(v.size for k, v in tensors.items() if not k.startswith("fc.") and "running" not in k
            and "num_batches" not in k)
    print(f"wrote {args.out}: {len(tensors)} tensors, {n} backbone parameters "
          f"(26039024 expected for the full SENet-50)")


if __name__ == "__main__":
    main_args(sys.argv[1:])
