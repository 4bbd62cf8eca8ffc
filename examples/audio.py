"""10-s audio crops at 16 kHz mono from WAV, FLAC and AAC files recorded at 44.1 kHz, with
``build_audio_graph`` and torchdata's Loader.

Each sample is a crop of ``--duration`` seconds starting at a random (seeded) time, mixed down to
mono and resampled with torchaudio; a batch holds ``audio`` float32 [B, 1, S], S = duration x
16000, and its ``caption``. In training, wrap the graph in ``StreamingDataset`` and a
``StatefulDataLoader`` (see ``examples/train_video.py``).

Run it:

    python examples/audio.py                        # makes a small demo dataset in a temp dir
    python examples/audio.py --dir /tmp/sds-audio   # ... or in (and reused from) this dir
    python examples/audio.py --src my_index.parquet --audio-column path --caption-column text
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from torchdata.nodes import Loader

from sdsnodes import CacheOptions, build_audio_graph, error_stats, shutdown
from sdsnodes._synthetic import write_audio


def make_demo_dataset(root: Path, num_files: int, seconds: float) -> Path:
    """``num_files`` sounds of ``seconds`` s at 44.1 kHz (WAV stereo, FLAC and AAC mono) and
    ``root/index.parquet`` with columns ``audio`` (path) and ``caption``."""
    root.mkdir(parents=True, exist_ok=True)
    paths, captions = [], []
    for i in range(num_files):
        ext, channels = [(".wav", 2), (".flac", 1), (".m4a", 1)][i % 3]
        path = root / f"sound{i:03d}{ext}"
        if not path.exists():
            write_audio(path, seconds=seconds, sample_rate=44100, channels=channels)
        paths.append(str(path))
        captions.append(f"a tone at 440 Hz getting louder every second ({ext[1:]}, {channels} ch)")
    index = root / "index.parquet"
    pq.write_table(pa.table({"audio": paths, "caption": captions}), index)
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", help="your own index (parquet/CSV/JSON/JSONL/dir/wildcard/.txt)")
    parser.add_argument("--dir", type=Path, help="where the demo dataset is made (default: temp)")
    parser.add_argument("--num-files", type=int, default=8)
    parser.add_argument("--audio-column", default="audio")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--duration", type=float, default=10.0, help="crop length in seconds")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sds-audio-") as tmp:
        root = args.dir or Path(tmp)
        src = args.src or str(make_demo_dataset(root, args.num_files, args.duration + 2.0))
        graph = build_audio_graph(
            src,
            sample_rate=16000,  # Hz, after resampling
            channels=1,  # mono mixdown
            duration=args.duration,  # s per crop: every crop has the same length, so they stack
            audio_column=args.audio_column,
            caption_column=args.caption_column,
            batch_size=args.batch_size,
            cache=CacheOptions(
                str(root / "cache")
            ),  # where remote files (s3://, https://...) are cached
            seed=args.seed,
        )
        loader = Loader(graph)
        for i, batch in enumerate(loader):  # one epoch; iterate `loader` again for the next
            if i == 0:
                print("first batch:")
                for key, value in batch.items():
                    if hasattr(value, "shape"):
                        print(f"  {key:<16} {str(value.dtype):<14} {list(value.shape)}")
                    else:
                        print(f"  {key:<16} {'list':<14} len {len(value)}: {value[0]!r}")
            starts = ", ".join(f"{s:.2f}" for s in batch["audio.audio_start"].tolist())
            print(f"batch {i}: audio {list(batch['audio'].shape)} crops start at [{starts}] s")
        skipped = {k: v for k, v in error_stats(loader.state_dict()).items() if k != "seen"}
        print(f"skipped samples: {skipped or 'none'}")
        # stop the graph's threads before the interpreter exits: a daemon thread freeing a
        # tensor during interpreter shutdown aborts the process (torch + Python < 3.13)
        shutdown(graph)


if __name__ == "__main__":
    main()
