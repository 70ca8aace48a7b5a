"""``gpucnn bench --input-pipeline``: decoded training images per second of the image-folder
pipeline (gpucnn.data.workers: RandomResizedCrop + flip + normalise, batches in shared memory)
against what a PyTorch user would write: ``torch.utils.data.DataLoader(num_workers=N)`` over a
Pillow-based Dataset with the same decode and the same transforms (gpucnn.data.transforms; the
torchvision wheels do not import beside the CPU-only torch here). A comparison only, not a
timed test.

Without ``--data-dir`` it writes its own JPEG folders (smooth synthetic images with noise,
quality 90) at 256x256 (cropped to 224) and 32x32 (kept at 32) into a temporary directory.
Each side runs ``--rounds`` passes over the images after one warm-up pass (worker start-up
excluded), the two sides alternating pass by pass; the median images/s and the spread of the
per-round ratios are reported.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

from ..argtypes import int_in

__all__ = ["main", "build_parser"]


def _write_folder(root, size, n, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        c = i % 4
        os.makedirs(os.path.join(root, "train", f"class{c}"), exist_ok=True)
        f = rng.uniform(1, 6, 3)
        img = np.stack([np.sin(f[k] * (xx + yy * (k + 1)) + c) for k in range(3)], -1)
        img = (img * 100 + 128 + rng.normal(0, 12, img.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(root, "train", f"class{c}", f"{i}.jpg"),
                                  quality=90)
    return root


def _torch_pass(paths, crop, batch, workers, mean, std):
    """A function running one pass of a torch DataLoader over the folder (images counted)."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from ..data.datasets import normalize
    from ..data.transforms import augmented_pixels

    class Folder(Dataset):  # what a user writes: decode with Pillow, transform, to a tensor
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            px = augmented_pixels(paths[i], 3, (crop, crop), 0, 0, i)
            return torch.from_numpy(normalize(px[None], mean, std)[0])

    loader = DataLoader(Folder(), batch_size=batch, shuffle=True, num_workers=workers,
                        persistent_workers=True)
    return lambda r: sum(len(x) for x in loader), lambda: None


def _gpucnn_pass(paths, crop, batch, workers, mean, std):
    from ..data.workers import BatchPipeline
    pipe = BatchPipeline(paths, 3, (3, crop, crop), mean, std, batch, workers)

    def one(r):  # the trainer's use: each batch from its slot, no copy
        order = np.random.default_rng(r).permutation(len(paths))
        return sum(len(x) for x, _ in pipe.batches(order, batch, 0, r, copy=False))
    return one, pipe.close


def _rates(sides, rounds):
    """Images/s of each side per round, the sides alternating (one warm-up pass each)."""
    rates = [[] for _ in sides]
    for r in range(rounds + 1):
        for k, (one, _) in enumerate(sides):
            t0 = time.perf_counter()
            n = one(r)
            if r:
                rates[k].append(n / (time.perf_counter() - t0))
    return rates


def run(folders, workers, batch, rounds, log=print):
    from ..data.folder import class_files, find_classes
    out = []
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    for label, root, crop in folders:
        train = os.path.join(root, "train")
        paths = [p for c in find_classes(train) for p in class_files(os.path.join(train, c))]
        sides = [_gpucnn_pass(paths, crop, batch, workers, mean, std),
                 _torch_pass(paths, crop, batch, workers, mean, std)]
        try:
            g, t = _rates(sides, rounds)
        finally:
            for _, close in sides:
                close()
        row = {"folder": label, "images": len(paths), "crop": crop, "workers": workers,
               "batch_size": batch, "gpucnn_images_per_s": statistics.median(g),
               "torch_dataloader_images_per_s": statistics.median(t),
               "gpucnn_rounds": g, "torch_rounds": t}
        row["ratio"] = row["gpucnn_images_per_s"] / row["torch_dataloader_images_per_s"]
        row["round_ratios"] = [a / b for a, b in zip(g, t)]
        log(f"{label}: gpucnn {row['gpucnn_images_per_s']:.0f} images/s, torch DataLoader "
            f"{row['torch_dataloader_images_per_s']:.0f} images/s ({row['ratio']:.2f}x), "
            f"per-round ratios {min(row['round_ratios']):.2f}-{max(row['round_ratios']):.2f}; "
            f"{workers} workers, {len(paths)} images, batch {batch}")
        out.append(row)
    return out


def build_parser():
    ap = argparse.ArgumentParser(prog="gpucnn bench --input-pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None,
                    help="an image folder (DIR/train/<class>/*) to read, cropped to --crop "
                         "(default: write 256x256 and 32x32 JPEG folders to a temp dir)")
    ap.add_argument("--crop", type=int_in(1, 4096), default=224,
                    help="crop size with --data-dir (default: %(default)s)")
    ap.add_argument("--images", type=int_in(8, 100000), default=512,
                    help="images per written folder (default: %(default)s)")
    ap.add_argument("--workers", type=int_in(1, 256), default=2,
                    help="worker processes on both sides (default: %(default)s)")
    ap.add_argument("--batch-size", type=int_in(1, 4096), default=64,
                    help="images per batch on both sides (default: %(default)s)")
    ap.add_argument("--rounds", type=int_in(1, 100), default=3,
                    help="timed passes per side, after one warm-up (default: %(default)s)")
    ap.add_argument("--json", default=None, help="also write the results here; an existing "
                    "file is replaced only if it is a previous bench output (default: none)")
    ap.add_argument("--overwrite", action="store_true",
                    help="let --json replace a file that is not a previous bench output "
                         "(default: refuse)")
    return ap


def main(argv):
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:  # --help, or an argparse error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    from ..outputs import OutputRefused, check_outputs
    try:
        check_outputs([("--json", args.json, "bench")], args.overwrite, "nothing was run")
    except OutputRefused as exc:
        print(f"gpucnn bench: error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpucnn-pipeline-") as tmp:
        if args.data_dir:
            folders = [(args.data_dir, args.data_dir, args.crop)]
        else:
            print(f"writing {args.images} synthetic JPEGs at 256x256 and at 32x32 to {tmp}")
            folders = [("jpeg 256x256 -> 224", _write_folder(f"{tmp}/256", 256, args.images),
                        224),
                       ("jpeg 32x32 -> 32", _write_folder(f"{tmp}/32", 32, args.images), 32)]
        try:
            rows = run(folders, args.workers, args.batch_size, args.rounds)
        except ImportError as exc:
            print(f"gpucnn bench: error: the comparison needs PyTorch: {exc}", file=sys.stderr)
            return 2
    if args.json:
        from ..outputs import write_json
        write_json(args.json, {"schema": "gpucnn-bench/input-pipeline/1",
                               "cpu": platform.processor() or platform.machine(),
                               "cores": os.cpu_count(), "results": rows})
    return 0
