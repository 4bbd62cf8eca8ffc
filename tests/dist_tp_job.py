"""Run by tests/test_tp_groups.py under ``torchrun --nproc_per_node=4`` (gloo, CPU): 2 data-parallel
groups x 2 tensor-parallel ranks, groups {0, 1} and {2, 3}.

Ends with ``examples/tp_groups.py``'s ``main()``. Writes what this rank saw to ``OUT/rank<r>.json``.
"""

import contextlib
import functools
import io
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torchdata.nodes import Batcher, Mapper
from torchdata.stateful_dataloader import StatefulDataLoader

from sdsnodes import GroupLoader, IndexReader, Shuffler, StreamingDataset, collate

warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)


def with_pixels(batch):
    batch["pixels"] = batch["x"][:, None, None].to(torch.float32) * torch.ones(3, 2)  # [B, 3, 2]
    return batch


def graph(index, seed=1, rank=None, world_size=None):
    reader = IndexReader(index, name="a", rank=rank, world_size=world_size)
    return Mapper(
        Mapper(Batcher(Shuffler(reader, seed=seed), 4, drop_last=False), collate), with_pixels
    )


def summary(batch):
    return [list(batch["__key__"]), float(batch["pixels"].sum()), str(batch["pixels"].dtype)]


def grouped(make, group, mode):
    dataset = StreamingDataset(make, group=group, group_mode=mode)
    return GroupLoader(StatefulDataLoader(dataset, batch_size=None, num_workers=2))


def run_mode(index, group, mode):
    make = functools.partial(graph, index)
    loader = grouped(make, group, mode)
    out = {"epoch0": [summary(b) for b in loader], "epoch1": [summary(b) for b in loader]}
    out["info"] = list(map(str, vars(loader.info).values()))
    loader = grouped(make, group, mode)
    it = iter(loader)
    out["head"] = [summary(next(it)) for _ in range(2)]
    state = json.loads(json.dumps(loader.state_dict()))
    out["state_is_empty"] = state["loader"] is None
    del it, loader
    fresh = grouped(make, group, mode)
    fresh.load_state_dict(state)
    out["resumed"] = [summary(b) for b in fresh]
    return out


def error_of(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the test reads the message
        return f"{type(error).__name__}: {error}"
    return None


class Failing:
    """Two batches, then a KeyError (an iterable that is not a DataLoader)."""

    def __iter__(self):
        yield {"x": torch.arange(3)}
        yield {"x": torch.arange(3) + 3}
        raise KeyError("column 'video' missing")


def main(out, index):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates every group
    tp = groups[rank // 2]
    result = {"rank": rank}
    result["broadcast"] = run_mode(index, tp, None)
    result["replicate"] = run_mode(index, tp, "replicate")

    # a TP group whose ranks disagree on the config: rank 3 shuffles with another seed
    seed = 2 if rank == 3 else 1
    result["mismatch"] = error_of(
        lambda: StreamingDataset(functools.partial(graph, index, seed), group=tp)
    )
    # a graph built with the global rank
    built = graph(index, rank=rank, world_size=4)
    result["global_rank"] = error_of(lambda: StreamingDataset(built, group=tp))

    # a receiver that iterates the DataLoader instead of a GroupLoader is told so
    dataset = StreamingDataset(functools.partial(graph, index), group=tp)
    if rank % 2:
        result["receiver_iterates"] = error_of(
            lambda: next(iter(StatefulDataLoader(dataset, batch_size=None)))
        )

    # an error on the loading rank reaches the receivers
    seen = []

    def consume():
        for batch in GroupLoader(Failing(), group=tp):
            seen.append(batch["x"].tolist())

    result["source_error"] = [error_of(consume), seen]
    unpicklable = [{"x": torch.arange(2), "fn": lambda: 0}]  # a lambda does not pickle
    result["pack_error"] = error_of(lambda: list(GroupLoader(unpicklable, group=tp)))
    # the example, in this job (a torchrun launch of its own would cost seconds of start-up)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import tp_groups

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        tp_groups.main(["--dir", f"{out}/example", "--steps", "3"])
    result["example"] = printed.getvalue().splitlines()

    dist.barrier()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
