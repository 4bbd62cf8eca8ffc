"""The disk bound: a shared cache directory never holds more than ``max_bytes`` plus one file per
process, also when the index has no size column (the first window knows no size) and when the
Decoder reads ahead (each sample it holds keeps its file pinned).

A real image graph (``build_image_graph``: downloader → Decoder → Evictor → Batcher → Prefetcher)
over the loopback HTTP server, read by ``StatefulDataLoader`` with 0 and 2 workers, ~200 KiB PNGs
and a 1 MiB budget (5 files) — far less than what the windows and read-aheads would pin. The
consumer pauses 20 ms per batch, as a training step does, so the Prefetcher fills and the
Decoder's read-ahead (2 samples per decode thread) stays full. A thread walks the cache
directory every 2 ms and sums the sizes of the cached files and ``*.tmp`` downloads (the SQLite
ledger and the lock files apart).
"""

from __future__ import annotations

import io
import os
import threading
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _faults import LONG, SEED, scaled
from PIL import Image
from torchdata.stateful_dataloader import StatefulDataLoader

from sdsnodes import (
    CacheOptions,
    ErrorOptions,
    FetchOptions,
    StreamingDataset,
    build_image_graph,
    error_stats,
)

MAX_BYTES = 1 << 20
KIB = 1024
STEP_S = 0.02  # the consumer's "training step" per batch: the read-aheads fill meanwhile


class DiskSampler:
    """A thread summing the sizes of the data files under ``root`` every ``interval_s``
    (ledger ``ledger.sqlite*`` and ``.locks/`` excluded); keeps the peak in bytes."""

    def __init__(self, root: str, interval_s: float = 0.002) -> None:
        self.root, self.interval_s = root, interval_s
        self.peak = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def size(self) -> int:
        total = 0
        for top, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if d not in (".locks", "index")]
            for name in files:
                if top == self.root and name.startswith("ledger.sqlite"):
                    continue
                try:
                    total += os.stat(os.path.join(top, name)).st_size
                except FileNotFoundError:  # evicted or renamed while we look
                    pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.size())
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def noise_pngs(http_dir, n: int, seed: int) -> tuple[list[str], list[int]]:
    """``n`` served PNGs of random pixels (incompressible: 180-200 KiB each)."""
    rng = np.random.default_rng(seed)
    urls, sizes = [], []
    for i in range(n):
        side = int(rng.integers(245, 258))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
        (http_dir.path / f"{i:03d}.png").write_bytes(buf.getvalue())
        urls.append(http_dir.url_for(f"{i:03d}.png"))
        sizes.append(len(buf.getvalue()))
    return urls, sizes


CASES = [  # (size column, download threads, decode threads, num_workers); all with SDS_FAULTS=long
    (with_size, downloads, decoders, workers)
    for with_size, downloads, decoders in [(False, 32, 4), (True, 16, 4), (True, 16, 8)]
    for workers in (0, 2)
    if LONG or (with_size, decoders, workers) != (True, 4, 2)
]


@pytest.mark.parametrize(("with_size", "download_threads", "decode_threads", "num_workers"), CASES)
def test_peak_disk_stays_within_max_bytes_plus_one_file_per_process(
    http_server, http_dir, tmp_path, num_workers, with_size, download_threads, decode_threads
):
    n = int(scaled(48, 400))
    urls, sizes = noise_pngs(http_dir, n, SEED)
    table = {"image": urls, **({"size": sizes} if with_size else {})}
    index = tmp_path / f"index-{uuid.uuid4().hex[:6]}.parquet"
    pq.write_table(pa.table(table), index)
    cache_dir = str(tmp_path / "cache")
    graph = build_image_graph(
        str(index), size=32, batch_size=4, caption_column=None,
        cache=CacheOptions(cache_dir, max_bytes=MAX_BYTES),
        fetch=FetchOptions(max_in_flight=download_threads), errors=ErrorOptions(on_error="raise"),
        num_threads=decode_threads,
        seed=SEED,
    )  # fmt: skip
    loader = StatefulDataLoader(StreamingDataset(graph), batch_size=None, num_workers=num_workers)
    processes = max(1, num_workers)
    bound = MAX_BYTES + processes * max(sizes)
    delivered = 0
    with DiskSampler(cache_dir) as sampler:
        for batch in loader:
            delivered += len(batch["image"])
            time.sleep(STEP_S)
    assert delivered == n
    assert error_stats(loader.state_dict()) == {}
    ratio = sampler.peak / bound
    print(
        f"FIGURE disk: {'size' if with_size else 'no size'} column, {download_threads} downloads, "
        f"{decode_threads} decoders, {processes} process(es): peak {sampler.peak / KIB:.0f} KiB = "
        f"{sampler.peak / MAX_BYTES:.2f} x max_bytes, {ratio:.2f} of max_bytes + {processes} "
        f"file(s) ({sampler.samples} samples)"
    )
    assert sampler.peak <= bound, (
        f"peak {sampler.peak} B > max_bytes {MAX_BYTES} + {processes} x largest {max(sizes)} B"
    )
