"""Mixing groups and gradient-accumulation rounds: different datasets on different ranks in one step.

Three caption datasets: ``laion`` and ``coyo`` in one mixing group, ``webvid`` alone. At every
optimizer step the Mixer draws a group (the same on every rank, with the summed weights); inside
``{laion, coyo}`` the ranks are split by weight, so one step trains some ranks on laion and the
others on coyo. With ``num_accum_rounds=R`` each rank keeps its stream for the R micro-batches of
the step, and ``batch["__rounds_left__"]`` says when to call ``optimizer.step()`` (at 0):

    Mixer({"laion": g1, "coyo": g2, "webvid": g3}, weights={"laion": 2, "coyo": 1, "webvid": 1},
          strategy="round_robin", groups=[["laion", "coyo"], ["webvid"]], num_accum_rounds=2,
          stop="never")

In a real job each rank builds its own graph and the rank comes from ``torch.distributed``; here
``--world-size`` ranks are simulated in one process (explicit ``rank=``/``world_size=``), so one
line prints what every rank reads at a micro-batch. ``--resume-at K`` then rebuilds every rank's
loader from its state after batch K, mid-round, and checks that it goes on with the same batches.

    python examples/mix_groups.py
    python examples/mix_groups.py --world-size 8 --accum 4 --steps 6 --resume-at 5
"""

from __future__ import annotations

import argparse
import collections
import functools
import tempfile
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
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


def build_graph(paths: dict[str, str], args: argparse.Namespace, rank: int) -> Mixer:
    """This rank's graph: a batched stream per dataset, mixed by group. Module level, so it
    pickles for spawned workers."""
    streams = {}
    for name, path in paths.items():
        rows = IndexReader(path, name=name, rank=rank, world_size=args.world_size)
        batches = Batcher(Shuffler(rows, seed=args.seed), batch_size=args.batch_size)
        streams[name] = Mapper(batches, collate)  # "caption": list of batch_size str
    return Mixer(streams, WEIGHTS, strategy=args.strategy, groups=GROUPS, stop="never",
                 num_accum_rounds=args.accum, seed=args.seed, rank=rank,
                 world_size=args.world_size)  # fmt: skip


def loader(paths: dict[str, str], args: argparse.Namespace, rank: int) -> StatefulDataLoader:
    dataset = StreamingDataset(functools.partial(build_graph, paths, args, rank))
    return StatefulDataLoader(dataset, batch_size=None, num_workers=args.num_workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, help="where the indexes are written; default: temp")
    parser.add_argument("--world-size", type=int, default=4, help="ranks simulated in-process")
    parser.add_argument("--accum", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps to print")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per micro-batch")
    parser.add_argument("--rows", type=int, default=256, help="rows per dataset")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default="round_robin", choices=[s.value for s in MixStrategy],
                        help="how the groups are drawn (round_robin: laion+coyo 3 steps in 4)")  # fmt: skip
    parser.add_argument("--resume-at", type=int, help="resume every rank after this batch")
    args = parser.parse_args()
    total = args.steps * args.accum
    if args.resume_at is not None and not 0 < args.resume_at < total:
        parser.error(f"--resume-at must be in (0, {total})")

    with tempfile.TemporaryDirectory(prefix="sds-groups-") as tmp:
        paths = make_indexes(args.dir or Path(tmp), args.rows)
        ranks = range(args.world_size)
        runs = [[] for _ in ranks]  # [rank][batch] → (stream, keys, rounds left)
        for rank in ranks:
            for _, b in zip(range(total), loader(paths, args, rank)):
                runs[rank].append((b["__stream__"], b["__key__"], b["__rounds_left__"]))

        print(f"{args.world_size} ranks, groups {GROUPS}, weights {WEIGHTS}, {args.accum} rounds")
        slots: collections.Counter[str] = collections.Counter()
        for i in range(total):
            streams = [runs[rank][i][0] for rank in ranks]
            slots.update(streams)
            left = runs[0][i][2]
            step, micro = i // args.accum + 1, args.accum - left
            print(f"step {step:3d} micro {micro}/{args.accum} streams {' '.join(streams)}")
        print("share of (rank, micro-batch) slots:",
              ", ".join(f"{n} {slots[n] / sum(slots.values()):.0%}" for n in WEIGHTS))  # fmt: skip

        if args.resume_at is not None:
            k = args.resume_at
            for rank in ranks:
                dl = loader(paths, args, rank)
                it = iter(dl)
                for _ in range(k):
                    next(it)
                state = dl.state_dict()
                del it, dl
                fresh = loader(paths, args, rank)
                fresh.load_state_dict(state)
                rest = [(b["__stream__"], b["__key__"], b["__rounds_left__"])
                        for _, b in zip(range(total - k), fresh)]  # fmt: skip
                assert rest == runs[rank][k:], f"rank {rank} resumed differently"
            print(f"resumed every rank after batch {k}: the same {total - k} batches")


if __name__ == "__main__":
    main()
