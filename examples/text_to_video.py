"""Text-to-video batches with ``build_text_to_video_graph``: a clip, the clip's own audio, one
caption chosen among two columns, and precomputed VAE latents sliced to the clip.

The demo dataset has, per video: an H.264 mp4 with an AAC track, a long and a short caption,
and ``latents/<i>.npy``, the latent of the whole video as a causal video VAE (CogVideoX,
HunyuanVideo, Wan) would store it: [C, 1 + (T - 1) / 4, H / 8, W / 8], its first latent frame
coding frame 0 alone and each next one 4 frames. The graph slices it to the frames of the clip
(``latent_stride=4, latent_causal=True``), so latents and pixels always match.

Run it:

    python examples/text_to_video.py                       # a small demo dataset in a temp dir
    python examples/text_to_video.py --dir /tmp/sds-t2v    # ... or in (and reused from) this dir
    python examples/text_to_video.py --partial-reads       # remote videos in byte ranges
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torchdata.nodes import Loader

from sdsnodes import CacheOptions, build_text_to_video_graph, error_stats, shutdown
from sdsnodes._synthetic import caption, write_video

FPS = 24  # of the demo videos
STRIDE = 4  # source frames per latent frame of the (pretend) causal VAE


def make_demo_dataset(root: Path, num_videos: int, seconds: float) -> Path:
    """Videos with audio, two caption columns and a latent per video; ``root/index.parquet``."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "latents").mkdir(exist_ok=True)
    rows: dict[str, list] = {"video": [], "caption": [], "short_caption": [], "latent": []}
    frames = round(seconds * FPS)
    for i in range(num_videos):
        video, latent = root / "videos" / f"{i:04d}.mp4", root / "latents" / f"{i:04d}.npy"
        if not video.exists():
            write_video(video, num_frames=frames, fps=FPS, width=128, height=96, seed=i,
                        audio_rate=16000)  # fmt: skip
        if not latent.exists():
            shape = (4, 1 + (frames - 1) // STRIDE, 96 // 8, 128 // 8)  # [C, T', h, w]
            np.save(latent, np.random.default_rng(i).standard_normal(shape, dtype=np.float32))
        long = caption(i)
        rows["video"].append(str(video))
        rows["caption"].append(long)
        rows["short_caption"].append(" ".join(long.split()[:3]))  # "a red square"
        rows["latent"].append(str(latent))
    index = root / "index.parquet"
    pq.write_table(pa.table(rows), index)
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", help="your own index with video, caption, short_caption, latent")
    parser.add_argument("--dir", type=Path, help="where the demo dataset is made (default: temp)")
    parser.add_argument("--num-videos", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--partial-reads", action="store_true", help="read remote videos in ranges")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sds-t2v-") as tmp:
        root = args.dir or Path(tmp)
        src = args.src or str(make_demo_dataset(root, args.num_videos, seconds=3.0))
        graph = build_text_to_video_graph(
            src,
            num_frames=16,  # T
            fps=8,  # frames/s of the clip: 2 s of video
            size=64,  # H = W
            caption_column=["caption", "short_caption"],  # one of the two, at random (seeded)
            audio=True,  # the video's own track, cut to the clip: [1, 2 s x 16000]
            latent_columns=["latent"],
            latent_stride=STRIDE,
            latent_causal=True,
            partial_reads=args.partial_reads,
            batch_size=args.batch_size,
            cache=CacheOptions(str(root / "cache")),
            seed=args.seed,
        )
        loader = Loader(graph)
        for i, batch in enumerate(loader):
            if i == 0:
                print("first batch:")
                for key, value in batch.items():
                    if hasattr(value, "shape"):
                        print(f"  {key:<16} {str(value.dtype):<14} {list(value.shape)}")
                    else:
                        print(f"  {key:<16} {'list':<14} len {len(value)}: {value[0]!r}")
            starts, ends = batch["video.clip_start"].tolist(), batch["video.clip_end"].tolist()
            spans = ", ".join(f"{a:.2f}-{b:.2f}" for a, b in zip(starts, ends))
            print(f"batch {i}: clips [{spans}] s, captions from {batch['caption.caption_column']}")
        skipped = {k: v for k, v in error_stats(loader.state_dict()).items() if k != "seen"}
        print(f"skipped samples: {skipped or 'none'}")
        # stop the graph's threads before the interpreter exits: a daemon thread freeing a
        # tensor during interpreter shutdown aborts the process (torch + Python < 3.13)
        shutdown(graph)


if __name__ == "__main__":
    main()
