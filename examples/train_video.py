"""A tiny video autoencoder trained over StreamingDataset + StatefulDataLoader, with exact resume.

Every ``--ckpt-every`` steps it saves the model, the optimizer, the step and ``dl.state_dict()``
to ``--ckpt`` with ``torch.save``, as a job that may be killed at any time would. ``--resume``
loads that file and goes on from the batch after the saved step, up to ``--steps`` in all: the
keys and losses printed after a resume are those an uninterrupted run prints at the same steps.

    python examples/train_video.py --steps 12 --ckpt /tmp/x.pt            # steps 1..12, saves at 5, 10
    python examples/train_video.py --steps 12 --ckpt /tmp/x.pt --resume   # steps 11..12 again
    python examples/train_video.py --steps 24 --ckpt /tmp/x.pt --resume   # steps 11..24

``--loader-state URL`` keeps the loader's position apart from the model, at any fsspec URL
(``s3://bucket/run/data.json``, ``gs://…``, a path), written atomically by
:func:`sdsnodes.save_state` with the graph's config, which :func:`sdsnodes.load_state` checks
on resume (credentials and endpoints from the environment, e.g. ``AWS_ENDPOINT_URL_S3``).

Without ``--src`` it streams a small demo dataset of H.264 clips, made once under ``--dir``.
A progress bar on stderr shows samples/s, wait % (data stall time: the share of the time the
loop waited for batches) and the cache hit rate, from :func:`sdsnodes.stats`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm import tqdm

from sdsnodes import CacheOptions, StreamingDataset, build_video_graph, load_state, save_state
from sdsnodes._synthetic import make_video_dataset
from sdsnodes.metrics import postfix, stats, timed

# torchdata 0.11's StatefulDataLoader calls torch.set_vital, deprecated in recent torch
warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)


def make_model() -> nn.Module:
    """Encode each frame's 4x4 patches into 16 channels and decode them back."""
    return nn.Sequential(
        nn.Conv3d(3, 16, kernel_size=(1, 4, 4), stride=(1, 4, 4)),  # [B, 16, T, H/4, W/4]
        nn.ReLU(),
        nn.ConvTranspose3d(16, 3, kernel_size=(1, 4, 4), stride=(1, 4, 4)),  # [B, 3, T, H, W]
        nn.Sigmoid(),
    )


def save_checkpoint(path: str, step: int, model: nn.Module, optimizer, dl, loader_state) -> None:
    """Write the checkpoint atomically: a crash mid-write never leaves a half file. With
    ``loader_state`` (a URL) the loader's position goes there, with the step, first."""
    checkpoint = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
    if loader_state:
        save_state({"step": step, "loader": dl.state_dict()}, loader_state, graph=dl)
    else:
        checkpoint["loader"] = dl.state_dict()  # the position after batch `step`: JSON-compatible
    tmp = f"{path}.tmp"
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", help="your own index with a 'video' and a 'caption' column")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "sdsnodes-example",
                        help="where the demo dataset is made (once) and the cache lives")  # fmt: skip
    parser.add_argument("--num-videos", type=int, default=32)
    parser.add_argument("--steps", type=int, default=24, help="train until this step (1-based)")
    parser.add_argument("--ckpt", help="checkpoint file (torch.save); none saved without it")
    parser.add_argument("--ckpt-every", type=int, default=5, help="save every this many steps")
    parser.add_argument("--resume", action="store_true", help="load --ckpt, go on after its step")
    parser.add_argument("--loader-state", help="URL for the loader's state (s3://, gs://, a path)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.resume and not args.ckpt:
        parser.error("--resume needs --ckpt")

    src = args.src or str(make_video_dataset(args.dir, num_videos=args.num_videos, seconds=2.0))
    graph = functools.partial(
        build_video_graph, src, num_frames=4, fps=4, size=32, batch_size=args.batch_size,
        num_threads=2, seed=args.seed, cache=CacheOptions(str(args.dir / "cache")),
    )  # fmt: skip
    # the same config on resume: same index, seed, batch_size and num_workers
    dataset = StreamingDataset(graph)
    dl = StatefulDataLoader(dataset, batch_size=None, num_workers=args.num_workers)

    torch.manual_seed(args.seed)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = 0
    if args.resume:
        checkpoint = torch.load(args.ckpt, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step = checkpoint["step"]
        if args.loader_state:
            saved = load_state(args.loader_state, graph=dl)  # refuses another graph config
            if saved["step"] != step:
                parser.error(f"--loader-state is at step {saved['step']}, --ckpt at step {step}")
            dl.load_state_dict(saved["loader"])
        else:
            dl.load_state_dict(checkpoint["loader"])
        print(f"resumed from {args.ckpt} at step {step}; continuing at step {step + 1}")
        if step >= args.steps:
            print(f"nothing to do: the checkpoint is at step {step}, --steps is {args.steps}")

    loader = timed(dl)  # measures how long each step waited for its batch (data stall time)
    bar = tqdm(total=args.steps, initial=step, unit="step", file=sys.stderr)
    empty_epochs = 0
    while step < args.steps and empty_epochs < 2:
        empty_epochs += 1  # a state saved after an epoch's last batch ends that epoch at once
        for batch in loader:  # each pass over `loader` is one epoch
            empty_epochs = 0
            step += 1
            # samples/s, wait % (the share of time the loop waited for data), cache hit %
            bar.set_postfix(postfix(stats(loader, ledger=False)), refresh=False)
            bar.update()
            clips = batch["video"].permute(0, 2, 1, 3, 4).float() / 255  # [B, C, T, H, W] in [0, 1]
            loss = nn.functional.mse_loss(model(clips), clips)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch = int(batch["__epoch__"][0])
            tqdm.write(
                f"step {step:3d}  epoch {epoch}  loss {loss.item():.4f}  keys {batch['__key__']}"
            )
            if args.ckpt and step % args.ckpt_every == 0:
                save_checkpoint(args.ckpt, step, model, optimizer, dl, args.loader_state)
                tqdm.write(f"saved {args.ckpt} at step {step}")
            if step >= args.steps:
                break
    bar.close()
    s = stats(loader)
    print(f"data stall: waited {s['wait_s']:.2f} s of {s['elapsed_s']:.2f} s for batches; "
          f"decode s per codec {s['decode_s']}; skipped {s['skipped'] or 'none'}")  # fmt: skip
    dataset.shutdown()  # stop the graph's threads in this process (there are some if num_workers=0)


if __name__ == "__main__":
    main()
