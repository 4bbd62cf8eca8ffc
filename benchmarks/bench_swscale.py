"""The video codecs' resize to RGB (swscale through PyAV): an odd resized width against the next
even one, the choice :func:`sdsnodes.codecs._av.rgb_frame` makes.

For each source size, one yuv420p frame (a real decoded frame of a synthetic H.264 video) is
converted to rgb24 at the cover size of a 112- or 224-pixel short side, in a loop, one swscale
thread, one reused ``VideoReformatter``: CPU ms per frame, medians of ``--repeats``. Rows: the
exact (odd) width, *the baseline*, and the width rounded up to even with its extra column
cropped, as ``VideoClip`` and ``VideoChunks`` now resize; plus the mean and largest difference
between the two images, in levels (0-255), over the common columns.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np

from benchmarks._common import Result, add_common_args, default_data_dir, format_table, in_turn

NAME = "swscale"
DESCRIPTION = "video resize to RGB: odd cover width vs the next even one, CPU ms per frame"

CASES = ((192, 256, 112), (480, 640, 224), (720, 1280, 112), (360, 640, 224))
"""(source height, source width, short side): cover widths 149, 299, 199 and, the control,
398 (already even: both rows run the same conversion)."""


def _frame(root, height: int, width: int):
    import av

    from sdsnodes._synthetic import write_video

    path = root / f"swscale-{width}x{height}.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, num_frames=4, width=width, height=height)
    with av.open(str(path)) as container:
        return next(container.decode(video=0))


def _time(frame, width: int, height: int, loops: int) -> float:
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    reformatter.reformat(frame, width=width, height=height, format="rgb24", threads=1)
    start = time.process_time()
    for _ in range(loops):
        reformatter.reformat(
            frame, width=width, height=height, format="rgb24", threads=1
        ).to_ndarray()
    return (time.process_time() - start) / loops * 1e3


def main(argv: Sequence[str] | None = None) -> int:
    from sdsnodes.codecs._resize import cover_shape

    parser = argparse.ArgumentParser(prog="python -m benchmarks.run swscale", description=__doc__)
    add_common_args(parser, repeats=5)
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    loops = 50 if args.quick else 400
    root = (args.dir or default_data_dir()) / "swscale"
    print(f"swscale yuv420p -> rgb24, one thread, {loops} frames per measure, {repeats} repeats")
    for source_h, source_w, short in CASES[:2] if args.quick else CASES:
        frame = _frame(root, source_h, source_w)
        height, width = cover_shape(source_h, source_w, short)
        even = width + (width % 2)
        exact_name = f"exact width {width}"
        rows = {exact_name: [], f"even width {even}, cropped": []}
        for r in range(repeats):
            for name in in_turn(list(rows), r):
                rows[name].append(
                    _time(frame, width if name == exact_name else even, height, loops)
                )
        from av.video.reformatter import VideoReformatter

        exact = VideoReformatter().reformat(frame, width=width, height=height, format="rgb24")
        wide = VideoReformatter().reformat(frame, width=even, height=height, format="rgb24")
        diff = np.abs(exact.to_ndarray().astype(int) - wide.to_ndarray()[:, :width].astype(int))
        table = [
            Result(name, [1e3 / v for v in values], "frames/s", baseline=name == exact_name)
            for name, values in rows.items()
        ]
        print()
        print(
            format_table(table, f"{source_w}x{source_h} -> {width}x{height} (short side {short})")
        )
        for name, values in rows.items():
            print(f"  {name}: {statistics.median(values):.3f} CPU ms per frame")
        print(f"  difference over {width} columns: mean {diff.mean():.2f}, max {diff.max()} levels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
