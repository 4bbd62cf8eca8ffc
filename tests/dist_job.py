"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

Writes what this rank saw to ``OUT/rank<r>.json``.
"""

import functools
import json
import sys
import warnings

import torch.distributed as dist
from torchdata.nodes import Batcher, Mapper
from torchdata.stateful_dataloader import StatefulDataLoader

from sdsnodes import IndexReader, Mixer, Shuffler, StreamingDataset, collate
from sdsnodes.distributed import broadcast_from_rank0

warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)


def stream(index, name, batch_size, seed):
    return Mapper(
        Batcher(Shuffler(IndexReader(index, name=name), seed=seed), batch_size, drop_last=False),
        collate,
    )


def single(index_a):
    return stream(index_a, "a", 4, 1)


def mixed(index_a, index_b):
    streams = {"a": stream(index_a, "a", 4, 1), "b": stream(index_b, "b", 2, 2)}
    return Mixer(streams, {"a": 0.6, "b": 0.4}, stop="first_exhausted", seed=3)


def loader(graph):
    return StatefulDataLoader(StreamingDataset(graph), batch_size=None, num_workers=2)


def summary(batch):
    return [batch.get("__stream__", "a"), list(batch["__key__"])]


def main(out, index_a, index_b):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = {"rank": rank, "world_size": dist.get_world_size()}
    result["broadcast"] = broadcast_from_rank0(lambda: f"from rank {dist.get_rank()}")

    dl = loader(functools.partial(single, index_a))
    result["single"] = [summary(b) for b in dl]
    result["single_epoch1"] = [summary(b) for b in dl]

    make = functools.partial(mixed, index_a, index_b)
    result["mixed"] = [summary(b) for b in loader(make)]
    dl = loader(make)
    it = iter(dl)
    result["mixed_head"] = [summary(next(it)) for _ in range(5)]
    state = json.loads(json.dumps(dl.state_dict()))
    del it, dl
    fresh = loader(make)
    fresh.load_state_dict(state)
    result["mixed_resumed"] = [summary(b) for b in fresh]
    dist.barrier()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
