"""Images and videos mixed into one loader: each step is a whole batch of one stream.

Two ready-made graphs of different shapes — images in batches of 16, ``uint8 [16, 3, H, W]``, and
4-frame clips in batches of 4, ``uint8 [4, T, 3, H, W]`` — feed a :class:`~sdsnodes.Mixer`, which
picks the stream of every step from the weights. Each batch carries ``batch["__stream__"]``, so
the training step knows which model head, loss or resolution it gets:

    Mixer({"img": build_image_graph(..., batch_size=16), "vid": build_video_graph(..., batch_size=4)},
          weights={"img": 0.7, "vid": 0.3}, strategy="weighted_random", stop="all_exhausted")

Run it (it makes two small synthetic datasets in a temp dir, or once in ``--dir``):

    python examples/mixed_streams.py
    python examples/mixed_streams.py --dir /tmp/sds-mix --strategy round_robin --steps 12
"""

from __future__ import annotations

import argparse
import collections
import functools
import tempfile
import warnings
from pathlib import Path

from torchdata.stateful_dataloader import StatefulDataLoader

from sdsnodes import (
    Mixer,
    MixStrategy,
    StopCriterion,
    StreamingDataset,
    build_image_graph,
    build_video_graph,
)
from sdsnodes._synthetic import make_image_dataset, make_video_dataset

# torchdata 0.11's StatefulDataLoader calls torch.set_vital, deprecated in recent torch
warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)


def build_mixed_graph(images: str, videos: str, args: argparse.Namespace) -> Mixer:
    """Two batched graphs, mixed batch by batch. Module level, so it pickles for spawned workers."""
    streams = {
        "img": build_image_graph(
            images, size=args.size, batch_size=16, num_threads=2, seed=args.seed
        ),
        "vid": build_video_graph(
            videos, num_frames=4, fps=4, size=args.size, batch_size=4, num_threads=2, seed=args.seed
        ),
    }
    return Mixer(
        streams,
        weights={"img": args.image_weight, "vid": 1 - args.image_weight},
        strategy=args.strategy,
        stop=args.stop,
        seed=args.seed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dir", type=Path, help="where the demo datasets are made (once); default: a temp dir"
    )
    parser.add_argument("--num-images", type=int, default=128)
    parser.add_argument("--num-videos", type=int, default=16)
    parser.add_argument("--size", type=int, default=32, help="output height and width, pixels")
    parser.add_argument(
        "--image-weight", type=float, default=0.7, help="weight of 'img'; 'vid' gets the rest"
    )
    parser.add_argument("--strategy", default=MixStrategy.WEIGHTED_RANDOM.value,
                        choices=[s.value for s in MixStrategy])  # fmt: skip
    parser.add_argument("--stop", default=StopCriterion.ALL_EXHAUSTED.value,
                        choices=[s.value for s in StopCriterion])  # fmt: skip
    parser.add_argument(
        "--steps", type=int, default=None, help="stop after this many batches (default: one epoch)"
    )
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 < args.image_weight < 1:
        parser.error(f"--image-weight={args.image_weight} must be in (0, 1)")
    if args.stop == StopCriterion.NEVER and args.steps is None:
        parser.error("--stop never needs --steps (the mixed stream never ends)")

    with tempfile.TemporaryDirectory(prefix="sds-mix-") as tmp:
        root = args.dir or Path(tmp)
        images = str(make_image_dataset(root / "images", num_images=args.num_images))
        videos = str(make_video_dataset(root / "videos", num_videos=args.num_videos, seconds=1.0,
                                        width=64, height=48))  # fmt: skip
        # the graph is built once here (bad arguments fail now); each worker runs its own copy
        dataset = StreamingDataset(functools.partial(build_mixed_graph, images, videos, args))
        dl = StatefulDataLoader(dataset, batch_size=None, num_workers=args.num_workers)

        seen: collections.Counter[str] = collections.Counter()
        it = iter(dl)
        for step, batch in enumerate(it, start=1):
            stream = batch["__stream__"]
            media = "image" if stream == "img" else "video"
            shape = list(batch[media].shape)  # img: [B, 3, H, W]; vid: [B, T, 3, H, W]
            # a stream that runs out before the mix ends starts its next epoch (stop="all_exhausted")
            epoch = int(batch["__epoch__"][0])
            print(f"step {step:3d}  stream {stream}  {media} {shape}  ({stream} epoch {epoch})")
            seen[stream] += 1
            if step == args.steps:
                break
        del it  # stops the workers (and their download/decode threads) before the temp dir goes
        dataset.shutdown()  # the graph's threads in this process (num_workers=0)
        total = sum(seen.values())
        shares = ", ".join(
            f"{name} {count} ({count / total:.0%})" for name, count in sorted(seen.items())
        )
        print(f"{total} batches: {shares}")


if __name__ == "__main__":
    main()
