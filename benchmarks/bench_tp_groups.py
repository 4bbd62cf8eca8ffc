"""Tensor-parallel groups: a group's batches broadcast from its first rank vs loaded on every rank.

Launches ``torchrun --nproc_per_node=4`` (gloo, 127.0.0.1) with this file as the job: the 4 ranks
form 2 data-parallel groups of 2 tensor-parallel ranks ({0, 1}, {2, 3}). Each measurement is one
epoch of a fresh ``GroupLoader(StatefulDataLoader(StreamingDataset(build_image_graph(...),
group=tp), batch_size=None, num_workers=--num-workers))`` on every rank, worker start-up
included, between two barriers; its time is the slowest rank's.

Rows (each a way for the two ranks of a group to get the same batches):

- **replicate** (*the baseline*, ``group_mode="replicate"``): every rank loads its group's shard
  itself (downloads, decodes); no communication.
- **broadcast** (``group_mode="broadcast"``, the default): the group's first rank loads and
  :class:`sdsnodes.GroupLoader` broadcasts each batch (a header, then one uint8 buffer: the
  pickled structure and the tensors' bytes); the other rank loads nothing.
- **broadcast_object_list**: the same, with ``torch.distributed.broadcast_object_list([batch])``
  (pickles every tensor), the obvious way to write it.

Two groups of rows: batches per rank per wall second, and batches per CPU second of the whole job
(CPU time of the 4 ranks and of their reaped DataLoader workers; the machine may have fewer
cores than processes, and this figure does not depend on how many it lends). Then the bytes moved
per step and group: the payload the source sends to each receiver, and the encoded image bytes
read from storage by the group's loading ranks. Last, the transfer alone: milliseconds per step
to broadcast one batch of the same shape (random pixels) 50 times, packed vs
``broadcast_object_list``, nothing loaded.

Data: ``--num-images`` (384) synthetic JPEG/PNG/WebP images of 256x192 px (``make_image_dataset``),
decoded and resized to ``--size`` (128), batches of ``--batch-size`` (16): a batch is a uint8
[16, 3, 128, 128] tensor (786 KB) plus captions and keys.

    python -m benchmarks.run tp_groups
    python -m benchmarks.run tp_groups --quick
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and str(ROOT) not in sys.path:  # run by torchrun as a file
    sys.path.insert(0, str(ROOT))

from benchmarks._common import (  # noqa: E402
    Result,
    add_common_args,
    default_data_dir,
    format_table,
    in_turn,
    repeats_of,
    silence_known_warnings,
    write_json,
)

NAME = "tp_groups"
DESCRIPTION = (
    "TP groups (4 gloo ranks, 2 DP x 2 TP): batches/s and bytes per step, broadcast from the "
    "group's first rank vs loaded on every rank"
)
MODES = ("replicate", "broadcast", "broadcast_object_list")
WALL = "batches per rank per wall second"
CPU = "batches per CPU second (whole job)"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    add_common_args(parser, repeats=5)
    parser.add_argument(
        "--num-images", type=int, default=None, help="images (default 384, 64 quick)"
    )
    parser.add_argument("--size", type=int, default=128, help="output side in px (default 128)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers per rank")
    parser.add_argument("--job", type=Path, default=None, help=argparse.SUPPRESS)  # torchrun side
    return parser.parse_args(argv)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its reaped children."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# -- the torchrun side ---------------------------------------------------------------------------


class ObjectListLoader:
    """The naive broadcast: ``broadcast_object_list([batch])`` per step, None at the end."""

    def __init__(self, loader, group, source: int, loads: bool) -> None:
        self.loader, self.group, self.source, self.loads = loader, group, source, loads
        self.bytes_sent = 0

    def __iter__(self):
        import pickle

        import torch.distributed as dist

        if not self.loads:
            while True:
                box = [None]
                dist.broadcast_object_list(box, src=self.source, group=self.group)
                if box[0] is None:
                    return
                yield box[0]
        for batch in self.loader:
            self.bytes_sent += len(pickle.dumps(batch))  # what broadcast_object_list sends
            dist.broadcast_object_list([batch], src=self.source, group=self.group)
            yield batch
        dist.broadcast_object_list([None], src=self.source, group=self.group)


def epoch(mode: str, make, group, sizes: dict[int, int], num_workers: int) -> dict:
    """One epoch on this rank: (seconds, CPU seconds, batches, bytes sent, storage bytes read)."""
    import torch.distributed as dist
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import GroupLoader, StreamingDataset

    dist.barrier()
    cpu, start = cpu_seconds(), time.perf_counter()
    group_mode = "broadcast" if mode == "broadcast_object_list" else mode
    dataset = StreamingDataset(make, group=group, group_mode=group_mode)
    loader = StatefulDataLoader(dataset, batch_size=None, num_workers=num_workers)
    info = dataset.group_info
    if mode == "broadcast_object_list":
        wrapped = ObjectListLoader(loader, group, info.source, info.loads)
    else:
        wrapped = GroupLoader(loader)
    batches = read = 0
    for batch in wrapped:
        batches += 1
        if info.loads:
            read += sum(sizes[int(i)] for i in batch["__index__"])
    seconds = time.perf_counter() - start
    dist.barrier()  # the slowest rank ends the measurement
    return {
        "seconds": seconds, "cpu": cpu_seconds() - cpu, "batches": batches,
        "sent": wrapped.bytes_sent, "read": read,
    }  # fmt: skip


def transfer_ms(batch: dict, group, source: int, loads: bool, naive: bool, steps: int) -> float:
    """Milliseconds per step to get ``batch`` from the source to the group (no loading)."""
    import torch.distributed as dist

    from sdsnodes._group_wire import receive, send

    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        if naive:
            box = [batch if loads else None]
            dist.broadcast_object_list(box, src=source, group=group)
        elif loads:
            send(batch, source, group)
        else:
            receive(source, group)
    seconds = time.perf_counter() - start
    dist.barrier()
    return seconds / steps * 1e3


def job(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    from sdsnodes import build_image_graph

    silence_known_warnings()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    config = json.loads((args.job / "config.json").read_text())
    index = Path(config["index"])
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    group = groups[rank // 2]
    import pyarrow.parquet as pq

    paths = pq.read_table(index, columns=["image"]).column("image").to_pylist()
    sizes = {i: os.path.getsize(p) for i, p in enumerate(paths)}
    make = functools.partial(
        build_image_graph, str(index), size=config["size"], batch_size=config["batch_size"],
        num_threads=2, seed=0,
    )  # fmt: skip
    epoch("replicate", make, group, sizes, config["num_workers"])  # warm-up: page cache, imports
    runs: dict[str, list] = {mode: [] for mode in MODES}
    for repeat in range(config["repeats"]):
        for mode in in_turn(MODES, repeat):
            mine = epoch(mode, make, group, sizes, config["num_workers"])
            everyone: list = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, mine)
            runs[mode].append(everyone)
        if rank == 0:
            print(f"  repeat {repeat + 1}/{config['repeats']} done", flush=True)
    # the transfer alone: one batch of the epoch's shape, sent again and again
    batch = {
        "image": torch.randint(0, 256, (config["batch_size"], 3, config["size"], config["size"]),
                               dtype=torch.uint8),
        "caption": [f"a caption of some {i} words" for i in range(config["batch_size"])],
        "__key__": [str(i) for i in range(config["batch_size"])],
    }  # fmt: skip
    source, loads = (rank // 2) * 2, rank % 2 == 0
    transfer: dict[str, list] = {"broadcast": [], "broadcast_object_list": []}
    for repeat in range(config["repeats"]):
        for mode in in_turn(list(transfer), repeat):
            ms = transfer_ms(batch, group, source, loads, mode != "broadcast", 50)
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, ms)
            transfer[mode].append(max(everyone))
    runs["transfer_ms"] = transfer
    if rank == 0:
        (args.job / "runs.json").write_text(json.dumps(runs))
    dist.destroy_process_group()
    return 0


# -- the launcher --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.job is not None:
        return job(args)
    silence_known_warnings()
    from sdsnodes._synthetic import make_image_dataset

    num_images = args.num_images or (64 if args.quick else 384)
    repeats = repeats_of(args)
    folder = (args.dir or default_data_dir()) / f"images-n{num_images}-256x192"
    index = make_image_dataset(folder, num_images=num_images, width=256, height=192)
    config = {
        "index": str(index), "num_images": num_images, "size": args.size,
        "batch_size": args.batch_size, "num_workers": args.num_workers, "repeats": repeats,
        "ranks": "4 (gloo, 127.0.0.1): 2 DP groups x 2 TP ranks",
    }  # fmt: skip
    print(
        f"{num_images} images 256x192 -> {args.size}x{args.size}, batches of {args.batch_size}, "
        f"4 ranks = 2 DP x 2 TP (gloo), {args.num_workers} worker(s) per rank, {repeats} "
        f"repeat(s), order alternating; {os.cpu_count()} CPUs",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "config.json").write_text(json.dumps(config))
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=4", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}", __file__, "--job", str(out),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        done = subprocess.run(cmd, env=env, text=True, timeout=3600)
        if done.returncode != 0:
            print(f"torchrun exited {done.returncode}", file=sys.stderr)
            return done.returncode
        runs = json.loads((out / "runs.json").read_text())
    rows: list[Result] = []
    bytes_rows = []
    for mode in MODES:
        wall = Result(mode, unit="batches/s", group=WALL, baseline=mode == "replicate")
        cpu = Result(mode, unit="batches/s", group=CPU, baseline=mode == "replicate")
        sent, read = [], []
        for everyone in runs[mode]:
            batches = everyone[0]["batches"]
            wall.values.append(batches / max(r["seconds"] for r in everyone))
            cpu.values.append(batches * len(everyone) / sum(r["cpu"] for r in everyone))
            # per step and group: group 0 is ranks 0 (source) and 1
            sent.append(everyone[0]["sent"] / batches)
            read.append((everyone[0]["read"] + everyone[1]["read"]) / batches)
        if mode == "replicate":
            wall.note = "every rank loads"
        rows += [wall, cpu]
        bytes_rows.append((mode, statistics.median(sent), statistics.median(read)))
    rows.sort(key=lambda r: r.group != WALL)
    print(format_table(rows, title=f"{NAME}: batches per rank (higher is better)"))
    print()
    print("bytes moved per step, per group of 2 ranks (medians)")
    print(f"{'loader':<24}  {'sent to each receiver':>22}  {'read from storage':>18}")
    print("-" * 68)
    for mode, sent_b, read_b in bytes_rows:
        print(f"{mode:<24}  {sent_b / 1e3:>19.1f} KB  {read_b / 1e3:>15.1f} KB")
    print()
    print(
        "the transfer alone, ms per step (lower is better; one batch of the same shape sent 50 times)"
    )
    print(f"{'loader':<24}  {'ms (median)':>12}  {'min':>8}  {'max':>8}")
    print("-" * 60)
    for mode, values in runs["transfer_ms"].items():
        print(
            f"{mode:<24}  {statistics.median(values):>12.2f}  {min(values):>8.2f}  {max(values):>8.2f}"
        )
    if args.json:
        config["transfer_ms"] = runs["transfer_ms"]
        config["bytes_per_step"] = {m: {"sent": s, "read": r} for m, s, r in bytes_rows}
        write_json(NAME, rows, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
