"""Tensor-parallel groups over torchrun: the ranks of a group train on the same batches.

The job's ranks form groups of ``--tp`` consecutive ranks (tensor or context parallelism: each
rank of a group holds part of one model replica), and the groups are the data-parallel replicas.
Every group reads its own share of each epoch (sharded by its data-parallel rank), and every rank
of a group gets the very same batches: under ``--mode broadcast`` (the default) the group's first
rank loads and :class:`sdsnodes.GroupLoader` broadcasts each batch to the others, which load
nothing; under ``--mode replicate`` every rank loads the group's share itself.

The loop checks each step that its group agrees (a digest of the batch, all-gathered in the
group), and at the end resumes from the state taken after ``--steps`` batches, exactly.

    torchrun --nproc_per_node=4 examples/tp_groups.py --tp 2 --steps 3
    torchrun --nproc_per_node=4 examples/tp_groups.py --tp 2 --mode replicate

(``python -m torch.distributed.run`` is the same as ``torchrun``.) Runs on CPU with the gloo
backend; the demo dataset of small images is made once under ``--dir``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torchdata.stateful_dataloader import StatefulDataLoader

from sdsnodes import GroupLoader, StreamingDataset, build_image_graph
from sdsnodes._synthetic import make_image_dataset

# torchdata 0.11's StatefulDataLoader calls torch.set_vital, deprecated in recent torch
warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)


def say(*parts: object) -> None:
    """Print a line in one write, so the lines of several ranks never interleave."""
    sys.stdout.write(" ".join(map(str, parts)) + "\n")
    sys.stdout.flush()


def digest(batch: dict) -> str:
    """A short hash of a batch's keys and pixels."""
    h = hashlib.sha256(" ".join(batch["__key__"]).encode())
    h.update(batch["image"].numpy().tobytes())  # [B, 3, 32, 32] uint8
    return h.hexdigest()[:12]


def tp_groups(tp: int) -> torch.distributed.ProcessGroup:
    """Groups of ``tp`` consecutive ranks; this rank's. Every rank creates every group."""
    world_size = dist.get_world_size()
    if world_size % tp:
        raise SystemExit(f"--tp {tp} must divide the world size {world_size}")
    groups = [dist.new_group(list(range(g, g + tp))) for g in range(0, world_size, tp)]
    return groups[dist.get_rank() // tp]


def make_loader(index: Path, group, args) -> GroupLoader:
    # rank and world_size left None: the dataset gives the readers the data-parallel ones
    graph = functools.partial(
        build_image_graph, str(index), size=32, batch_size=args.batch_size, num_threads=2,
        seed=args.seed,
    )  # fmt: skip
    dataset = StreamingDataset(graph, group=group, group_mode=args.mode)  # a collective
    return GroupLoader(StatefulDataLoader(dataset, batch_size=None, num_workers=args.num_workers))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "sdsnodes-example-tp",
                        help="where the demo dataset is made (once)")  # fmt: skip
    parser.add_argument("--tp", type=int, default=2, help="ranks per tensor-parallel group")
    parser.add_argument("--mode", choices=["broadcast", "replicate"], default=None,
                        help="how the group gets its batches (default: broadcast)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=3, help="batches before the checkpoint")
    parser.add_argument("--num-images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = not dist.is_initialized()  # (tests call main() inside a running job)
    if started:
        dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    rank = dist.get_rank()
    torch.set_num_threads(1)
    if rank == 0:
        make_image_dataset(args.dir, num_images=args.num_images)  # once, idempotent
    dist.barrier()
    group = tp_groups(args.tp)
    loader = make_loader(args.dir / "index.parquet", group, args)
    info = loader.info
    where = f"rank {rank} (dp {info.dp_rank}/{info.dp_world_size}, tp {info.group_rank}/{info.group_size})"

    state, after = None, []
    for step, batch in enumerate(loader):
        # model(batch) here: every rank of the group holds its part of the replica
        mine = digest(batch)
        theirs: list = [None] * info.group_size
        dist.all_gather_object(theirs, mine, group=group)
        if len(set(theirs)) != 1:
            raise SystemExit(f"{where}: step {step}: the group's batches differ: {theirs}")
        if step < args.steps:
            say(f"{where}: step {step}: same batch as its group {mine} keys {batch['__key__']}")
        if step + 1 == args.steps:
            state = loader.state_dict()  # only the loading rank's holds a loader state
        elif step >= args.steps:
            after.append(mine)
        if step == args.steps + 1:
            break  # every rank of the group stops at the same step

    resumed = make_loader(args.dir / "index.parquet", group, args)
    resumed.load_state_dict(state)
    again = [digest(batch) for _, batch in zip(after, resumed)]  # stops after len(after)
    if again != after:
        raise SystemExit(f"{where}: resumed {again}, expected {after}")
    say(f"{where}: resumed exactly after step {args.steps - 1}: {again}")
    if started:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
