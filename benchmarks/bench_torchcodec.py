"""VideoClip's two backends on the same files and clips: PyAV (*the baseline*) and torchcodec
(``backend="torchcodec"``), one process, one decoder thread, clips per second.

Data: ``--num-files`` (16) H.264 mp4 of ``--seconds`` (8) s, 320x240 at 24 frames/s
(``sdsnodes._synthetic.make_video_dataset``). Two clips per file and repeat, each at a random
(seeded, the same for both backends) start:

- **16 frames at 8 fps, short side 128**: frames dropped, resized by swscale in both.
- **16 frames at the source rate, source size**: no resize.
- **audio: 10-s crops of 30-s FLAC (44.1 kHz stereo) to 16 kHz mono**: ``AudioWaveform``,
  resampled by torchaudio (PyAV path) or by FFmpeg's swresample while decoding (torchcodec).

torchcodec needs ``pip install torchcodec`` and FFmpeg's shared libraries; without them the
benchmark says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from benchmarks._common import (
    Result,
    add_common_args,
    default_data_dir,
    format_table,
    in_turn,
    repeats_of,
    silence_known_warnings,
    timed,
    write_json,
)

NAME = "torchcodec"
DESCRIPTION = "VideoClip decoded by PyAV vs torchcodec (backend='torchcodec'), clips per second"
CONFIGS = {
    "16 frames at 8 fps, short side 128": {"num_frames": 16, "fps": 8.0, "size": 128},
    "16 frames at the source rate and size": {"num_frames": 16},
    "audio: 10-s crops, 44.1 kHz stereo -> 16 kHz mono": {
        "sample_rate": 16000, "channels": 1, "duration": 10.0,
    },
}  # fmt: skip
AUDIO = "audio: 10-s crops, 44.1 kHz stereo -> 16 kHz mono"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.run {NAME}", description=DESCRIPTION
    )
    parser.add_argument("--num-files", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    add_common_args(parser, repeats=5)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from sdsnodes import AudioWaveform, VideoClip
    from sdsnodes._synthetic import make_video_dataset, write_audio
    from sdsnodes.codecs._torchcodec import check_backend

    args = parse(argv)
    silence_known_warnings()
    try:
        check_backend("torchcodec")
    except ValueError as error:
        print(f"torchcodec: skipped, {error}")
        return 0
    count = 4 if args.quick else args.num_files
    root = (args.dir or default_data_dir()) / f"torchcodec-{count}x{args.seconds:g}s"
    index = make_video_dataset(
        root, num_videos=count, seconds=args.seconds, width=320, height=240, fps=24
    )
    import pyarrow.parquet as pq

    videos = pq.read_table(index).column("video").to_pylist()
    sounds = []
    for i in range(count):  # 30-s FLAC, kept between runs
        sound = root / f"{i:05d}.flac"
        if not sound.exists():
            write_audio(sound, seconds=30.0, sample_rate=44100, channels=2)
        sounds.append(str(sound))
    rows: dict[tuple[str, str], Result] = {}
    for config in CONFIGS:
        for backend in ("pyav", "torchcodec"):
            rows[config, backend] = Result(
                backend, unit="clips/s", group=config, baseline=backend == "pyav"
            )
    for repeat in range(repeats_of(args)):
        for config, options in CONFIGS.items():
            for backend in in_turn(["pyav", "torchcodec"], repeat):
                if config == AUDIO:
                    clip, paths = AudioWaveform(**options, backend=backend), sounds
                else:
                    clip, paths = VideoClip(**options, backend=backend, threads=1), videos
                seeds = range(2 * len(paths))

                def run(clip=clip, seeds=seeds, repeat=repeat, paths=paths) -> int:
                    for seed in seeds:
                        clip(paths[seed % len(paths)], np.random.default_rng((repeat, seed)))
                    return len(seeds)

                seconds, clips = timed(run)
                rows[config, backend].values.append(clips / seconds)
    results = list(rows.values())
    print()
    print(
        format_table(
            results,
            title=f"VideoClip backends: {count} files of {args.seconds:g} s, 320x240, 24 fps",
        )
    )
    if args.json:
        path = write_json(NAME, results, {"num_files": count, **vars(args), "dir": str(root)})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
