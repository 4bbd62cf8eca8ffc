"""GPU hand-off (runs only where CUDA is available; prints "skipped" elsewhere).

1. Transfer: batches of video clips from the graph moved to the GPU from pageable memory vs
   from pinned memory (torchdata's ``PinMemory`` node at the end of the graph, then
   ``.to("cuda", non_blocking=True)``). Reports host→device GB/s of the transfer itself, and
   checks the tensors arrive on the GPU intact (equal to the CPU batch).
2. Feeding a training step: ``build_image_graph`` in a ``StreamingDataLoader`` against a plain
   DataLoader (the same JPEGs, Pillow decode + bicubic resize + centre crop to 224, as in
   ``bench_peers``), both with ``pin_memory=True`` and ``--workers`` workers, feeding a ResNet-50
   (torchvision, bf16 autocast, channels_last, SGD) one step per batch. Reports images/s over
   the epoch after the first batch, the first batch's wait, and the share of the epoch the
   training loop spent waiting for data (time blocked in ``next``). Baseline: the plain
   DataLoader, measured in the same run, in turn.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

from benchmarks._common import add_common_args, default_data_dir, in_turn, repeats_of

NAME = "gpu"
DESCRIPTION = "pinned vs pageable host→GPU transfer of graph batches (CUDA only)"


def main(argv: list[str] | None = None) -> int:
    import torch
    from torchdata.nodes import Loader, PinMemory

    from sdsnodes import build_video_graph
    from sdsnodes._synthetic import make_video_dataset

    parser = argparse.ArgumentParser(prog="python -m benchmarks.run gpu", description=__doc__)
    add_common_args(parser, repeats=5)
    parser.add_argument("--images", type=int, default=3000, help="JPEGs fed to the step (3000)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers (8)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (64)")
    parser.add_argument("--threads", type=int, nargs="*", default=[],
                        help="also sdsnodes with these num_threads (default: auto only)")  # fmt: skip
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    index = make_video_dataset(
        (args.dir or default_data_dir()) / "gpu-videos", num_videos=16 if args.quick else 48
    )

    def make():
        return build_video_graph(index, num_frames=16, fps=8, size=256, batch_size=8, num_threads=8)

    batches = [b["video"] for b in Loader(make())]  # [B, T, 3, H, W] uint8, pageable
    pinned = [b["video"] for b in Loader(PinMemory(make()))]
    assert all(p.is_pinned() for p in pinned) and not any(b.is_pinned() for b in batches)
    nbytes = sum(b.numel() for b in batches)
    rates: dict[str, list[float]] = {"pageable .to(cuda)": [], "pinned .to(cuda, non_blocking)": []}
    for _ in range(repeats_of(args)):
        for name, source, non_blocking in (
            ("pageable .to(cuda)", batches, False),
            ("pinned .to(cuda, non_blocking)", pinned, True),
        ):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = [t.to("cuda", non_blocking=non_blocking) for t in source]
            torch.cuda.synchronize()
            rates[name].append(nbytes / (time.perf_counter() - start) / 1e9)
    ok = all(torch.equal(o.cpu(), p) for o, p in zip(out, pinned))
    base = statistics.median(rates["pageable .to(cuda)"])
    print(
        f"\n{len(batches)} batches of {tuple(batches[0].shape)} uint8 ({nbytes / 1e6:.0f} MB) on {torch.cuda.get_device_name()}"
    )
    print(f"{'transfer':<34}{'GB/s (median)':>14}{'min':>8}{'max':>8}{'ratio':>8}")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"{name:<34}{med:>14.2f}{min(values):>8.2f}{max(values):>8.2f}{med / base:>8.2f}")
    print(f"tensors intact on the GPU: {ok}; baseline: pageable")
    feed(args)
    return 0 if ok else 1


def _plain_loader(index, workers: int, batch: int):
    import pyarrow.parquet as pq
    from torch.utils.data import DataLoader

    from benchmarks._peers import PathDataset

    paths = pq.read_table(index, columns=["image"])["image"].to_pylist()
    return DataLoader(
        PathDataset(paths), batch_size=batch, shuffle=True, num_workers=workers,
        pin_memory=True, drop_last=True,
    )  # fmt: skip


def _sdsnodes_loader(index, workers: int, batch: int, threads: int | None = None):
    import functools

    from sdsnodes import StreamingDataLoader, StreamingDataset, build_image_graph

    build = functools.partial(build_image_graph, index, size=224, batch_size=batch,
                              drop_last=True, num_threads=threads)  # fmt: skip
    return StreamingDataLoader(StreamingDataset(build), num_workers=workers, pin_memory=True)


def _images(batch):
    return batch["image"] if isinstance(batch, dict) else batch[0]


def _epoch(loader, step) -> tuple[float, float, float, int]:
    """(images/s after the first batch, first batch s, share of time waiting, images)."""
    import torch

    start = time.perf_counter()
    it = iter(loader)
    first = _images(next(it))
    first_s = time.perf_counter() - start
    step(first)
    torch.cuda.synchronize()
    count, waited, t0 = 0, 0.0, time.perf_counter()
    while True:
        w0 = time.perf_counter()
        try:
            images = _images(next(it))
        except StopIteration:
            break
        waited += time.perf_counter() - w0
        step(images)
        count += images.shape[0]
    torch.cuda.synchronize()
    total = time.perf_counter() - t0
    return count / total, first_s, waited / total, count


def feed(args: argparse.Namespace) -> None:
    """Part 2: images/s and data wait of a ResNet-50 step fed by each loader."""
    import torch

    from sdsnodes._synthetic import make_image_dataset

    try:
        from torchvision.models import resnet50
    except ImportError:
        print("\nno torchvision: feeding benchmark skipped")
        return
    root = (args.dir or default_data_dir()) / "gpu-images"
    num_images = 512 if args.quick else args.images
    index = make_image_dataset(root / str(num_images), num_images=num_images, width=320,
                               height=256, progress=True)  # fmt: skip
    model = resnet50().cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    mean = torch.tensor([0.485, 0.456, 0.406], device="cuda").view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device="cuda").view(1, 3, 1, 1) * 255

    def step(images):
        x = images.to("cuda", non_blocking=True).float().sub_(mean).div_(std)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x).float().logsumexp(1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    synthetic = torch.randint(0, 255, (args.batch, 3, 224, 224), dtype=torch.uint8).pin_memory()
    for _ in range(5):
        step(synthetic)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        step(synthetic)
    torch.cuda.synchronize()
    gpu_rate = 20 * args.batch / (time.perf_counter() - t0)
    loaders = {
        "plain DataLoader": lambda: _plain_loader(index, args.workers, args.batch),
        "sdsnodes (raw files)": lambda: _sdsnodes_loader(index, args.workers, args.batch),
    }
    for threads in args.threads:
        loaders[f"sdsnodes, {threads} threads"] = functools.partial(
            _sdsnodes_loader, index, args.workers, args.batch, threads
        )
    rows: dict[str, list[tuple[float, float, float, int]]] = {name: [] for name in loaders}
    for r in range(repeats_of(args)):
        for name in in_turn(list(loaders), r):
            rows[name].append(_epoch(loaders[name](), step))
    print(
        f"\nResNet-50 step fed by each loader: {num_images} JPEGs 320x256 -> 224, batch "
        f"{args.batch}, {args.workers} workers, pin_memory; {os.cpu_count()} CPUs; the step "
        f"alone (no loader): {gpu_rate:.0f} images/s; medians of {repeats_of(args)}"
    )
    print(f"{'loader':<22}{'images/s':>10}{'ratio':>8}{'waiting':>9}{'first batch s':>15}")
    base = statistics.median(v[0] for v in rows["plain DataLoader"])
    for name, values in rows.items():
        rate = statistics.median(v[0] for v in values)
        wait = statistics.median(v[2] for v in values)
        first = statistics.median(v[1] for v in values)
        print(f"{name:<22}{rate:>10.0f}{rate / base:>8.2f}{wait:>8.0%}{first:>15.2f}")
    print("baseline: plain DataLoader; waiting = share of the epoch blocked in next(loader)")


if __name__ == "__main__":
    raise SystemExit(main())
