"""Checks a results/ folder the way a PyTorch user would read it, with TensorBoard's own readers.

For every run directory (results/<experiment>/<run_id>/ holding an event file):
- EventAccumulator loads it with the expected scalar tags, per-AU F1 and the confusion image;
- the confusion image decodes as a PNG (with Pillow when installed, else its header is read);
- the `config` text summary (the resolved config.yaml, markdown) is there;
- the HParams plugin's summaries parse with tensorboard.plugins.hparams.metadata: the
  experiment (hparam and metric infos), the session start (the run's hparams) and, for a
  finished run (report.json present), the session end with status success; every metric of
  the experiment is a scalar the run wrote.
It prints, per run, the hparams and the final value of each metric it read.
Then results/table1.csv and results/runs.csv load in pandas.

Run: pip install tensorboard pandas pillow && python3 scripts/check_results.py [results]
"""
import glob
import io
import os
import struct
import sys

import pandas as pd
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata as hp_metadata

root = sys.argv[1] if len(sys.argv) > 1 else "results"
EXPECTED_SCALARS = [
    "train/loss_total", "train/loss_va", "train/loss_au", "train/loss_expr",
    "train/sigma_va", "train/sigma_au", "train/sigma_expr", "train/lr", "train/img_per_s",
    "val/va.ccc_valence", "val/va.ccc_arousal", "val/au.f1", "val/au.accuracy", "val/au.score",
    "val/expr.f1", "val/expr.accuracy", "val/expr.score",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data):
    """(width, height) of a PNG, decoded with Pillow when available."""
    assert data[:8] == PNG_MAGIC, "not a PNG"
    try:
        from PIL import Image
    except ImportError:
        return struct.unpack(">II", data[16:24])
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.size


def value_of(v):
    """A google.protobuf.Value as a Python value."""
    kind = v.WhichOneof("kind")
    return getattr(v, kind) if kind else None


def fmt(x):
    return f"{x:g}" if isinstance(x, float) else str(x)


runs = sorted(d for d in glob.glob(os.path.join(root, "*", "*"))
              if glob.glob(os.path.join(d, "events.out.tfevents.*")))
assert runs, f"no runs with event files under {root}"
for d in runs:
    ea = EventAccumulator(d, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    missing = [t for t in EXPECTED_SCALARS if t not in tags["scalars"]]
    assert not missing, f"{d}: missing scalar tags {missing}"
    assert any(t.startswith("val/au_f1/") for t in tags["scalars"]), f"{d}: no per-AU F1"
    assert "val/expr_confusion" in tags["images"], f"{d}: no confusion image"
    image = ea.Images("val/expr_confusion")[-1]
    w, h = png_size(image.encoded_image_string)
    assert (w, h) == (image.width, image.height), f"{d}: PNG {w}x{h}, event {image.width}x{image.height}"

    text = ea.PluginTagToContent("text")
    assert "config" in text, f"{d}: no `config` text summary"
    config_md = ea.Tensors("config")[-1].tensor_proto.string_val[0].decode()
    assert "model:" in config_md and "backbone:" in config_md, f"{d}: config text {config_md[:80]!r}"

    content = ea.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    for tag in (hp_metadata.EXPERIMENT_TAG, hp_metadata.SESSION_START_INFO_TAG):
        assert tag in content, f"{d}: no {tag}"
    experiment = hp_metadata.parse_experiment_plugin_data(content[hp_metadata.EXPERIMENT_TAG])
    start = hp_metadata.parse_session_start_info_plugin_data(
        content[hp_metadata.SESSION_START_INFO_TAG])
    hparams = {k: value_of(v) for k, v in sorted(start.hparams.items())}
    infos = {i.name for i in experiment.hparam_infos}
    assert set(hparams) <= infos, f"{d}: hparams {set(hparams) - infos} not in the experiment"
    for key in ("seed", "profile", "row", "model.backbone"):
        assert key in hparams, f"{d}: no hparam {key}"
    finished = os.path.exists(os.path.join(d, "report.json"))
    status = "running or stopped"
    if hp_metadata.SESSION_END_INFO_TAG in content:
        end = hp_metadata.parse_session_end_info_plugin_data(
            content[hp_metadata.SESSION_END_INFO_TAG])
        status = api_pb2.Status.Name(end.status)
        assert end.status == api_pb2.STATUS_SUCCESS, f"{d}: session ended {status}"
    assert not finished or status == "STATUS_SUCCESS", f"{d}: finished without a session end"
    metrics = {}
    for info in experiment.metric_infos:
        tag = info.name.tag
        if tag in tags["scalars"]:
            metrics[tag] = ea.Scalars(tag)[-1].value
    assert metrics, f"{d}: none of the experiment's metrics was written"
    print(f"{d}: {len(tags['scalars'])} scalar tags, confusion image {w}x{h}, config text "
          f"{len(config_md)} chars, session {status}")
    print("  hparams: " + ", ".join(f"{k}={fmt(v)}" for k, v in hparams.items()))
    print("  metrics: " + ", ".join(f"{k[len('val/'):]}={v:.3f}" for k, v in metrics.items()))
for name in ["table1.csv", "runs.csv"]:
    p = os.path.join(root, name)
    if os.path.exists(p):
        df = pd.read_csv(p)
        print(f"{p}: {df.shape[0]} rows x {df.shape[1]} columns")
print(f"ok: {len(runs)} runs")
