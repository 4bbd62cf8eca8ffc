"""GPU hand-off (runs only where CUDA is available; prints "skipped" elsewhere): batches of video
clips from the graph moved to the GPU from pageable memory vs from pinned memory (torchdata's
``PinMemory`` node at the end of the graph, then ``.to("cuda", non_blocking=True)``).

Reports host→device throughput (GB/s) of the transfer itself, and checks the tensors arrive on
the GPU intact (equal to the CPU batch).
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks._common import add_common_args, default_data_dir, repeats_of

NAME = "gpu"
DESCRIPTION = "pinned vs pageable host→GPU transfer of graph batches (CUDA only)"


def main(argv: list[str] | None = None) -> int:
    import torch
    from torchdata.nodes import Loader, PinMemory

    from sdsnodes import build_video_graph
    from sdsnodes._synthetic import make_video_dataset

    parser = argparse.ArgumentParser(prog="python -m benchmarks.run gpu", description=__doc__)
    add_common_args(parser, repeats=5)
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
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
