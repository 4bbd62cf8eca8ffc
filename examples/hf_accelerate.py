"""A Hugging Face Accelerate training loop over sdsnodes that saves and restores the loader.

``accelerator.register_for_checkpointing(loader, progress)`` puts the ``StatefulDataLoader``'s
``state_dict()`` (and the step) into every ``accelerator.save_state(dir)``, beside the model,
the optimizer and the RNG states; ``accelerator.load_state(dir)`` hands it back to
``loader.load_state_dict``, so the loop goes on with the batch after the saved step: the same
samples in the same order as a run that was never stopped.

    python examples/hf_accelerate.py --steps 8 --ckpt-dir /tmp/acc           # saves step-3, step-6
    python examples/hf_accelerate.py --steps 8 --resume /tmp/acc/step-3

The loader is *not* passed to ``accelerator.prepare``: sdsnodes shards the index by rank and
worker itself (under ``accelerate launch`` each process reads its own share), and batches are
moved with ``.to(accelerator.device, non_blocking=True)`` from pinned memory (``pin_memory``
when CUDA is there). Each step prints its epoch, loss and sample keys. Without ``--src`` it
streams a small synthetic image dataset made once under ``--dir``.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torchdata.stateful_dataloader import StatefulDataLoader

from sdsnodes import CacheOptions, StreamingDataset, build_image_graph
from sdsnodes._synthetic import make_image_dataset

# torchdata 0.11's StatefulDataLoader calls torch.set_vital, deprecated in recent torch
warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)


class Progress:
    """The step count, saved and restored by ``accelerator.save_state``/``load_state``."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = state["step"]


def make_model() -> nn.Module:
    """Encode 4x4 patches into 16 channels and decode them back: [B, 3, H, W] -> same."""
    return nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=4, stride=4),  # [B, 16, H/4, W/4]
        nn.ReLU(),
        nn.ConvTranspose2d(16, 3, kernel_size=4, stride=4),  # [B, 3, H, W]
        nn.Sigmoid(),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", help="your own index with an 'image' and a 'caption' column")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "sdsnodes-accelerate",
                        help="where the demo dataset is made (once) and the cache lives")  # fmt: skip
    parser.add_argument("--num-images", type=int, default=24)
    parser.add_argument("--steps", type=int, default=8, help="train until this step")
    parser.add_argument("--ckpt-dir", help="accelerator.save_state here every --ckpt-every steps")
    parser.add_argument("--ckpt-every", type=int, default=3)
    parser.add_argument("--resume", help="a folder written by accelerator.save_state")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    accelerator = Accelerator()
    src = args.src or str(make_image_dataset(args.dir / "data", num_images=args.num_images))
    graph = functools.partial(
        build_image_graph, src, size=16, batch_size=args.batch_size, seed=args.seed,
        num_threads=2, cache=CacheOptions(str(args.dir / "cache")),
    )  # fmt: skip
    # the same config on resume (index, seed, batch_size, num_workers): the state refers to it
    loader = StatefulDataLoader(
        StreamingDataset(graph), batch_size=None, num_workers=args.num_workers,
        pin_memory=torch.cuda.is_available(),  # page-locked batches: async copies to the GPU
    )  # fmt: skip
    torch.manual_seed(args.seed)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = Progress()
    accelerator.register_for_checkpointing(loader, progress)  # saved beside model and optimizer
    if args.resume:
        accelerator.load_state(args.resume)  # calls loader.load_state_dict(...)
        accelerator.print(f"resumed from {args.resume} at step {progress.step}")

    empty_epochs = 0
    while progress.step < args.steps and empty_epochs < 2:
        empty_epochs += 1  # a state saved after an epoch's last batch ends that epoch at once
        for batch in loader:  # each pass over the loader is one epoch
            empty_epochs = 0
            images = batch["image"].to(accelerator.device, non_blocking=True)  # [B, 3, H, W] uint8
            images = images.float() / 255
            loss = nn.functional.mse_loss(model(images), images)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            progress.step += 1
            epoch = int(batch["__epoch__"][0])
            accelerator.print(f"step {progress.step:3d}  epoch {epoch}  loss {loss.item():.4f}  "
                              f"keys {batch['__key__']}", flush=True)  # fmt: skip
            if args.ckpt_dir and progress.step % args.ckpt_every == 0:
                accelerator.save_state(f"{args.ckpt_dir}/step-{progress.step}")
            if progress.step >= args.steps:
                break
    loader.dataset.shutdown()  # stop the graph's threads in this process


if __name__ == "__main__":
    main()
