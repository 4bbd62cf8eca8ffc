"""Mixing groups and gradient-accumulation rounds: different datasets on different ranks in one step.

Three caption datasets: ``laion`` and ``coyo`` in one mixing group, ``webvid`` alone. At every
optimizer step the Mixer draws a group (the same on every rank, with the summed weights); inside
``{laion, coyo}`` the ranks are split by weight, so one step trains some ranks on laion and the
others on coyo. With ``num_accum_rounds=R`` each rank keeps its stream for the R micro-batches of
the step, and ``batch["__rounds_left__"]`` says when to call ``optimizer.step()`` (at 0):

    Mixer({"laion": g1, "coyo": g2, "webvid": g3}, weights={"laion": 2, "coyo": 1, "webvid": 1},
          strategy="round_robin", groups=[["laion", "coyo"], ["webvid"]], num_accum_rounds=2,
          stop="never")

Under torchrun each rank builds its own graph and the rank comes from ``torch.distributed``;
with plain ``python``, ``--world-size`` ranks are simulated in one process (explicit
``rank=``/``world_size=``). Either way one line prints what every rank reads at a micro-batch.
``--resume-at K`` rebuilds every rank's loader from its state after batch K (mid-round when K is
not a multiple of ``--accum``) and checks that it goes on with the same batches.

    python examples/mix_groups.py
    python examples/mix_groups.py --world-size 8 --accum 4 --steps 6 --resume-at 5
    torchrun --nproc_per_node=2 examples/mix_groups.py --num-workers 2 --resume-at 3
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import tempfile
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch.distributed as dist
from torchdata.nodes import Batcher, Mapper
from torchdata.stateful_dataloader import StatefulDataLoader

from sdsnodes import IndexReader, Mixer, MixStrategy, Shuffler, StreamingDataset, collate

# torchdata 0.11's StatefulDataLoader calls torch.set_vital, deprecated in recent torch
warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)

WEIGHTS = {"laion": 2.0, "coyo": 1.0, "webvid": 1.0}
GROUPS = [["laion", "coyo"], ["webvid"]]


def make_indexes(root: Path, rows: int) -> dict[str, str]:
    """One small parquet index of captions per dataset (synthetic)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in WEIGHTS:
        table = pa.table({"caption": [f"{name} caption {i}" for i in range(rows)]})
        paths[name] = str(root / f"{name}.parquet")
        pq.write_table(table, paths[name])
    return paths


def build_graph(paths: dict[str, str], args: argparse.Namespace, rank: int | None) -> Mixer:
    """This rank's graph: a batched stream per dataset, mixed by group. ``rank=None``: the rank
    and world size come from torch.distributed (under torchrun). Module level, so it pickles for
    spawned workers."""
    world_size = None if rank is None else args.world_size
    streams = {}
    for name, path in paths.items():
        rows = IndexReader(path, name=name, rank=rank, world_size=world_size)
        batches = Batcher(Shuffler(rows, seed=args.seed), batch_size=args.batch_size)
        streams[name] = Mapper(batches, collate)  # "caption": list of batch_size str
    return Mixer(streams, WEIGHTS, strategy=args.strategy, groups=GROUPS, stop="never",
                 num_accum_rounds=args.accum, seed=args.seed, rank=rank,
                 world_size=world_size)  # fmt: skip


def loader(paths: dict[str, str], args: argparse.Namespace, rank: int | None):
    dataset = StreamingDataset(functools.partial(build_graph, paths, args, rank))
    return StatefulDataLoader(dataset, batch_size=None, num_workers=args.num_workers)


def read(paths: dict[str, str], args: argparse.Namespace, rank: int | None) -> list[tuple]:
    """(stream, keys, rounds left) of this rank's batches; with ``--resume-at K``, checks that a
    loader resumed from the state after batch K goes on with the same batches."""
    total = args.steps * args.accum
    run = [view(b) for _, b in zip(range(total), loader(paths, args, rank))]
    if args.resume_at is not None:
        dl = loader(paths, args, rank)
        it = iter(dl)
        for _ in range(args.resume_at):
            next(it)
        state = dl.state_dict()  # mid-round when K is not a multiple of --accum
        del it, dl
        fresh = loader(paths, args, rank)
        fresh.load_state_dict(state)
        rest = [view(b) for _, b in zip(range(total - args.resume_at), fresh)]
        assert rest == run[args.resume_at :], f"rank {rank} resumed differently"
    return run


def view(batch: dict) -> tuple:
    return batch["__stream__"], batch["__key__"], batch["__rounds_left__"]


def report(runs: list[list[tuple]], args: argparse.Namespace) -> None:
    print(f"{len(runs)} ranks, groups {GROUPS}, weights {WEIGHTS}, {args.accum} rounds")
    slots: collections.Counter[str] = collections.Counter()
    for i in range(args.steps * args.accum):
        streams = [run[i][0] for run in runs]
        slots.update(streams)
        step, micro = i // args.accum + 1, args.accum - runs[0][i][2]
        print(f"step {step:3d} micro {micro}/{args.accum} streams {' '.join(streams)}")
    print("share of (rank, micro-batch) slots:",
          ", ".join(f"{n} {slots[n] / sum(slots.values()):.0%}" for n in WEIGHTS))  # fmt: skip
    if args.resume_at is not None:
        k = args.resume_at
        print(f"resumed every rank after batch {k}: the same {args.steps * args.accum - k} batches")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, help="where the indexes are written; default: temp")
    parser.add_argument("--world-size", type=int, default=4,
                        help="ranks simulated in-process (under torchrun: its world size)")  # fmt: skip
    parser.add_argument("--accum", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps to print")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per micro-batch")
    parser.add_argument("--rows", type=int, default=256, help="rows per dataset")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default="round_robin", choices=[s.value for s in MixStrategy],
                        help="how the groups are drawn (round_robin: laion+coyo 3 steps in 4)")  # fmt: skip
    parser.add_argument("--resume-at", type=int, help="resume every rank after this batch")
    args = parser.parse_args(argv)
    if args.resume_at is not None and not 0 < args.resume_at < args.steps * args.accum:
        parser.error(f"--resume-at must be in (0, {args.steps * args.accum})")
    return args


def main() -> None:
    args = parse_args()

    if "LOCAL_RANK" in os.environ:  # under torchrun: this process is one rank
        dist.init_process_group("gloo")
        with tempfile.TemporaryDirectory(prefix="sds-groups-") as tmp:
            root = [str(args.dir or tmp)]
            dist.broadcast_object_list(root)  # rank 0's directory, on a shared disk
            if dist.get_rank() == 0:
                make_indexes(Path(root[0]), args.rows)
            dist.barrier()
            paths = {name: str(Path(root[0]) / f"{name}.parquet") for name in WEIGHTS}
            runs = [None] * dist.get_world_size()
            dist.all_gather_object(runs, read(paths, args, None))
            dist.barrier()  # rank 0 removes its temp dir only when every rank is done
        if dist.get_rank() == 0:
            report(runs, args)
        dist.destroy_process_group()
        return
    with tempfile.TemporaryDirectory(prefix="sds-groups-") as tmp:
        paths = make_indexes(args.dir or Path(tmp), args.rows)
        report([read(paths, args, rank) for rank in range(args.world_size)], args)


if __name__ == "__main__":
    main()
