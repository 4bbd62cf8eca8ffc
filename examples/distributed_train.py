"""Data-parallel training over torchrun: every rank streams its share, checkpoints, elastic resume.

Each rank builds the same graph; rank 0 reads the index and broadcasts it. Every (rank, worker)
pair reads a disjoint share of each epoch, and every rank gets the same number of batches (the
shares are padded to equal length), so DDP's all-reduce never waits on a rank that ran out. At the
end of the run each rank saves its ``dl.state_dict()`` to ``--ckpt-dir/rank<r>.pt``, and rank 0
the model and ``latest.json`` (the world size and step of the checkpoint).

``--resume-elastic`` reads the loader states of *all* the old ranks and hands them to
:func:`sdsnodes.load_elastic_state`: the new job may have another ``--nproc_per_node`` and
``--num-workers``, and it reads the rest of the epoch with no sample lost or repeated.

    torchrun --nproc_per_node=2 examples/distributed_train.py --ckpt-dir /tmp/ckpt --steps 3
    torchrun --nproc_per_node=1 examples/distributed_train.py --ckpt-dir /tmp/ckpt --resume-elastic

(``python -m torch.distributed.run`` is the same as ``torchrun``.) Runs on CPU with the gloo
backend; the demo dataset of small images is made once under ``--dir``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchdata.stateful_dataloader import StatefulDataLoader

from sdsnodes import StreamingDataset, build_image_graph, load_elastic_state
from sdsnodes._synthetic import make_image_dataset


def say(*parts: object) -> None:
    """Print a line in one write, so the lines of several ranks never interleave."""
    sys.stdout.write(" ".join(map(str, parts)) + "\n")
    sys.stdout.flush()


# torchdata 0.11's StatefulDataLoader calls torch.set_vital, deprecated in recent torch
warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)


def make_model() -> nn.Module:
    """A tiny image autoencoder: 4x4 patches → 8 channels → back."""
    return nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=4, stride=4),  # [B, 8, H/4, W/4]
        nn.ReLU(),
        nn.ConvTranspose2d(8, 3, kernel_size=4, stride=4),  # [B, 3, H, W]
        nn.Sigmoid(),
    )


def save(ckpt_dir: Path, step: int, dl: StatefulDataLoader, model: nn.Module, optimizer) -> None:
    """Every rank writes its loader state; rank 0 then writes the model and ``latest.json``."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {"rank": rank, "world_size": world_size, "step": step, "loader": dl.state_dict()}
    torch.save(state, ckpt_dir / f"rank{rank}.pt.tmp")
    os.replace(ckpt_dir / f"rank{rank}.pt.tmp", ckpt_dir / f"rank{rank}.pt")
    dist.barrier()  # all loader states are on disk before latest.json names them
    if rank == 0:
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
            ckpt_dir / "model.pt",
        )
        (ckpt_dir / "latest.json.tmp").write_text(
            json.dumps({"world_size": world_size, "step": step})
        )
        os.replace(ckpt_dir / "latest.json.tmp", ckpt_dir / "latest.json")
    dist.barrier()


def load_loader_states(ckpt_dir: Path) -> tuple[list[dict], int]:
    """The loader states of every rank of the checkpointed job (whatever its world size), and its step."""
    latest = json.loads((ckpt_dir / "latest.json").read_text())
    states = []
    for rank in range(latest["world_size"]):  # rank files of an older, larger job are ignored
        saved = torch.load(ckpt_dir / f"rank{rank}.pt", weights_only=True)
        if (saved["world_size"], saved["step"]) != (latest["world_size"], latest["step"]):
            raise ValueError(
                f"{ckpt_dir}/rank{rank}.pt is from another checkpoint than latest.json"
            )
        states.append(saved["loader"])
    return states, latest["step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "sdsnodes-example-dist",
                        help="where the demo dataset is made (once)")  # fmt: skip
    parser.add_argument(
        "--ckpt-dir", type=Path, default=None, help="checkpoint folder (none saved without it)"
    )
    parser.add_argument("--resume-elastic", action="store_true",
                        help="continue from --ckpt-dir, saved with any world size / num_workers")  # fmt: skip
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="batches per rank to train (default: to the epoch's end)",
    )
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.resume_elastic and not args.ckpt_dir:
        parser.error("--resume-elastic needs --ckpt-dir")

    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    if rank == 0:
        make_image_dataset(args.dir, num_images=args.num_images)  # once, idempotent
    dist.barrier()

    # Every rank builds the graph, in the same order: building it is a collective (rank 0 reads
    # the index, the others receive it). Its shard comes from torch.distributed and the workers.
    graph = functools.partial(
        build_image_graph, str(args.dir / "index.parquet"), size=32, batch_size=args.batch_size,
        num_threads=2, seed=args.seed,
    )  # fmt: skip
    dataset = StreamingDataset(graph)

    torch.manual_seed(args.seed)
    model = DistributedDataParallel(make_model())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    step = 0
    if args.resume_elastic:
        states, step = load_loader_states(args.ckpt_dir)
        cursor = load_elastic_state(dataset, states)  # before the loader's first iter()
        checkpoint = torch.load(args.ckpt_dir / "model.pt", weights_only=True)
        model.module.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        reader = next(iter(cursor["readers"].values()))
        say(f"rank {rank}/{world_size}: elastic resume from {len(states)} rank(s) at step {step}: epoch "
              f"{reader['epoch']}, {reader['base'] + len(reader['skip'])} samples already read")  # fmt: skip
    # the new num_workers may differ from the old one: the cursor does not depend on the layout
    dl = StatefulDataLoader(dataset, batch_size=None, num_workers=args.num_workers)

    batches = samples = 0
    for batch in dl:  # one pass = the rest of the epoch (all of it without --resume-elastic)
        images = batch["image"].float() / 255  # [B, 3, 32, 32] in [0, 1]
        loss = nn.functional.mse_loss(model(images), images)  # DDP all-reduces the gradients
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        batches += 1
        samples += len(batch["__key__"])
        line = (f"rank {rank} step {step} epoch {int(batch['__epoch__'][0])} loss {loss.item():.4f} "
                f"keys {json.dumps(batch['__key__'])}\n")  # fmt: skip
        sys.stdout.write(line)  # one write: lines of the two ranks never interleave
        sys.stdout.flush()
        if batches == args.steps:
            break
    say(f"rank {rank}/{world_size}: {batches} batches, {samples} samples")
    if args.ckpt_dir:
        save(args.ckpt_dir, step, dl, model.module, optimizer)
        if rank == 0:
            say(f"saved {args.ckpt_dir} at step {step} ({world_size} rank(s))")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
