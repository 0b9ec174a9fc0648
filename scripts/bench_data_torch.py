#!/usr/bin/env python3
"""PyTorch side of `cargo run --release -p mtanet-affwild2 --example bench_data`.

Decodes, augments and normalises the same 112x112 JPEGs with PIL + torchvision, doing the
work of the Rust loader: RandomResizedCrop(112, scale=(0.85, 1), ratio=(0.9, 1.1)),
RandomHorizontalFlip, ColorJitter(brightness=0.2, contrast=0.2), ToTensor, ImageNet Normalize,
batched to (N, 3, 112, 112).

Usage: python3 scripts/bench_data_torch.py JPG_LIST_FILE [--seconds S]
Prints `workers=0 img/s=...` (one process, one torch thread) and `workers=2 img/s=...`
(DataLoader with 2 worker processes). Exits 3 if torch/torchvision are not installed.
"""
import argparse
import sys
import time

try:
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms
except ImportError as e:  # pragma: no cover
    print(f"skipped: {e}", file=sys.stderr)
    sys.exit(3)


class Jpgs(Dataset):
    def __init__(self, paths):
        self.paths = paths
        self.tf = transforms.Compose(
            [
                transforms.RandomResizedCrop(112, scale=(0.85, 1.0), ratio=(0.9, 1.1)),
                transforms.RandomHorizontalFlip(),
                transforms.ColorJitter(brightness=0.2, contrast=0.2),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            return self.tf(im.convert("RGB"))


def rate(ds, workers, seconds):
    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers, drop_last=False)
    n, start = 0, time.perf_counter()
    while True:
        for batch in loader:
            n += batch.shape[0]
        el = time.perf_counter() - start
        if el >= seconds:
            return n / el


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("list")
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    paths = [l.strip() for l in open(a.list) if l.strip()]
    torch.set_num_threads(1)
    ds = Jpgs(paths)
    for workers in (0, 2):
        print(f"workers={workers} img/s={rate(ds, workers, a.seconds):.0f}", flush=True)


if __name__ == "__main__":
    main()
