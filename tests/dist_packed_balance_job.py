"""Run by tests/test_packed_balance.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

Reads a packed dataset with the image preset (rank and world size from the process group),
2 workers, 2 epochs, and all-reduces once per batch as DDP does (a short rank would hang the
other, up to the group's timeout). Writes ``OUT/rank<r>.json``: batches and keys per epoch.
"""

import datetime
import functools
import json
import sys
import warnings

import torch
import torch.distributed as dist
from torchdata.stateful_dataloader import StatefulDataLoader

from sdsnodes import StreamingDataset, build_image_graph

warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)


def main(out: str, src: str) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    factory = functools.partial(build_image_graph, src, size=8, batch_size=2, prefetch_factor=0)
    dl = StatefulDataLoader(StreamingDataset(factory), batch_size=None, num_workers=2)
    epochs = []
    for _ in range(2):
        keys = []
        for batch in dl:
            keys.append(list(batch["__key__"]))
            dist.all_reduce(torch.ones(1))  # the step DDP takes: every rank must join it
        epochs.append(keys)
    with open(f"{out}/rank{dist.get_rank()}.json", "w") as f:
        json.dump(epochs, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
