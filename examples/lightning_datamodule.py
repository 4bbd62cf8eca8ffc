"""A PyTorch Lightning DataModule over sdsnodes whose checkpoints resume the data exactly.

``ImageDataModule.train_dataloader()`` returns a ``StreamingDataLoader`` (a
``StatefulDataLoader`` whose ``len()`` is the number of batches per epoch, which Lightning
sizes its epochs by) over a ``StreamingDataset(build_image_graph(...))``. Lightning keeps a
stateful loader's ``state_dict()`` in every checkpoint beside the model and the optimizer, and ``trainer.fit(...,
ckpt_path=...)`` loads it back: the run goes on with the batch after the checkpointed step, the
same samples in the same order as a run that was never stopped. (The loader's state sits under
``checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]``; Lightning >= 2.2 does this
for any loader with ``state_dict``/``load_state_dict``.)

    python examples/lightning_datamodule.py --steps 8 --ckpt-dir /tmp/ckpts    # saves at 3, 6
    python examples/lightning_datamodule.py --steps 8 --resume /tmp/ckpts/step=3.ckpt

Each step prints its epoch, loss and sample keys: after ``--resume`` the lines of steps 4..8
equal those of the first run. Batches are pinned (``pin_memory``) when CUDA is there and moved
with ``.to(device, non_blocking=True)``. Without ``--src`` it streams a small synthetic image
dataset made once under ``--dir``.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from sdsnodes import CacheOptions, StreamingDataLoader, StreamingDataset, build_image_graph
from sdsnodes._synthetic import make_image_dataset

# torchdata 0.11's StatefulDataLoader calls torch.set_vital, deprecated in recent torch
warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)


class ImageDataModule(pl.LightningDataModule):
    """Batches of ``image`` uint8 [B, 3, size, size] and ``caption`` list[str] from ``src``."""

    def __init__(self, src: str, cache_dir: str, *, size: int = 16, batch_size: int = 4,
                 num_workers: int = 2, seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.graph = functools.partial(
            build_image_graph, src, size=size, batch_size=batch_size, seed=seed,
            num_threads=2, cache=CacheOptions(cache_dir),
        )  # fmt: skip
        self.num_workers = num_workers
        self.loader: StreamingDataLoader | None = None

    def train_dataloader(self) -> StreamingDataLoader:
        # the same config on resume (index, seed, batch_size, num_workers): the state refers to it
        self.loader = StreamingDataLoader(
            StreamingDataset(self.graph), num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),  # page-locked batches: async copies to the GPU
        )  # fmt: skip
        return self.loader

    def transfer_batch_to_device(self, batch: dict, device: torch.device, dataloader_idx: int):
        # tensors go over with non_blocking=True (overlaps the copy when pinned); strings stay
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in batch.items()}  # fmt: skip


class TinyAutoencoder(pl.LightningModule):
    """Encode 4x4 patches into 16 channels and decode them back: [B, 3, H, W] -> same."""

    def __init__(self, lr: float = 1e-2) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=4, stride=4),  # [B, 16, H/4, W/4]
            nn.ReLU(),
            nn.ConvTranspose2d(16, 3, kernel_size=4, stride=4),  # [B, 3, H, W]
            nn.Sigmoid(),
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"].float() / 255  # [B, 3, H, W] in [0, 1]
        loss = nn.functional.mse_loss(self.net(images), images)
        epoch = int(batch["__epoch__"][0])
        print(f"step {self.global_step + 1:3d}  epoch {epoch}  loss {loss.item():.4f}  "
              f"keys {batch['__key__']}", flush=True)  # fmt: skip
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", help="your own index with an 'image' and a 'caption' column")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "sdsnodes-lightning",
                        help="where the demo dataset is made (once) and the cache lives")  # fmt: skip
    parser.add_argument("--num-images", type=int, default=24)
    parser.add_argument("--steps", type=int, default=8, help="train until this step")
    parser.add_argument("--ckpt-dir", help="save a checkpoint every --ckpt-every steps here")
    parser.add_argument("--ckpt-every", type=int, default=3)
    parser.add_argument("--resume", help="a checkpoint (.ckpt) to go on from")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    src = args.src or str(make_image_dataset(args.dir / "data", num_images=args.num_images))
    data = ImageDataModule(src, str(args.dir / "cache"), batch_size=args.batch_size,
                           num_workers=args.num_workers, seed=args.seed)  # fmt: skip
    torch.manual_seed(args.seed)
    model = TinyAutoencoder()
    callbacks = []
    if args.ckpt_dir:  # keeps every checkpoint: step=3.ckpt, step=6.ckpt, ...
        callbacks.append(ModelCheckpoint(args.ckpt_dir, filename="{step}", save_top_k=-1,
                                         every_n_train_steps=args.ckpt_every))  # fmt: skip
    trainer = pl.Trainer(
        max_steps=args.steps, max_epochs=-1, accelerator="auto", devices=1, logger=False,
        callbacks=callbacks, enable_checkpointing=bool(callbacks), enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=data, ckpt_path=args.resume)
    if data.loader is not None:
        data.loader.dataset.shutdown()  # stop the graph's threads in this process


if __name__ == "__main__":
    main()
