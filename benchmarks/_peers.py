"""The peers of ``bench_peers``: each library's own conversion and reader, called as its docs
show, yielding (images uint8 [B, 3, 224, 224], sample ids [B]) batches.

Every reader decodes with the same Pillow function (:func:`crop224`: RGB, bicubic resize of the
short side to 224, centre crop), shuffles one epoch and uses ``num_workers`` worker processes,
so the rows differ only by the library's plumbing (and sdsnodes' own codec).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import importlib
import io
import math
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

SIZE = 224
Batches = Iterable[tuple[Any, Sequence[int]]]


def crop224(data: bytes | str) -> Any:
    """Decode a JPEG (bytes or path) with Pillow: RGB, bicubic short side to 224, centre crop;
    uint8 [3, 224, 224]."""
    import torch
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        image = image.convert("RGB")
        width, height = image.size
        scale = SIZE / min(width, height)
        cover = (max(SIZE, round(width * scale)), max(SIZE, round(height * scale)))
        image = image.resize(cover, Image.Resampling.BICUBIC)
        left, top = (cover[0] - SIZE) // 2, (cover[1] - SIZE) // 2
        image = image.crop((left, top, left + SIZE, top + SIZE))
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # [3, H, W] uint8


# -- peak PSS --------------------------------------------------------------------------------------


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants alive now (from ``/proc/*/task/*/children``)."""
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # exited meanwhile
        found.append(p)
    return found


def pss_kib(pid: int) -> int:
    """``Pss`` (KiB) of one process from ``/proc/<pid>/smaps_rollup``; 0 once it exited."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def tree_pss_kib(pid: int, tries: int = 20) -> int:
    """Pss (KiB) of ``pid`` and all its descendants, from ``/proc/*/smaps_rollup``.

    Read again while the set of processes changed during the read: a fork between the parent's
    read and the child's counts the pages they now share twice (the parent's whole, the child's
    share). A peak taken while DataLoader workers started read 1,000-1,100 MiB against 870 for
    the same epochs' steady state (2026-12-05), before this check."""
    total = 0
    for _ in range(tries):
        pids = tree_pids(pid)
        total = sum(pss_kib(p) for p in pids)
        if tree_pids(pid) == pids:
            break
    return total


class PeakPss:
    """Samples :func:`tree_pss_kib` of this process every ``interval`` s in a thread; ``peak``
    in MiB once stopped."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak_kib = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, tree_pss_kib(os.getpid()))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> float:
        return self.peak_kib / 1024


# -- conversions (timed apart) ---------------------------------------------------------------------


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder


def convert_webdataset(paths: Sequence[str], out: Path, shards: int) -> list[str]:
    """``webdataset.ShardWriter`` tars of ``ceil(n / shards)`` samples; the shard paths."""
    import webdataset as wds

    _fresh(out).mkdir()
    per = math.ceil(len(paths) / shards)
    with wds.ShardWriter(str(out / "shard-%05d.tar"), maxcount=per, verbose=0) as sink:
        for i, path in enumerate(paths):
            sink.write({"__key__": f"{i:06d}", "jpg": Path(path).read_bytes(), "cls": i})
    return sorted(str(p) for p in out.glob("shard-*.tar"))


def _litdata_item(item: tuple[int, str]) -> dict[str, Any]:
    index, path = item
    return {"index": index, "image": Path(path).read_bytes()}


def convert_litdata(paths: Sequence[str], out: Path, workers: int) -> str:
    """``litdata.optimize`` of {index, image bytes} into 8 MB chunks."""
    import litdata

    litdata.optimize(
        fn=_litdata_item,
        inputs=list(enumerate(paths)),
        output_dir=str(_fresh(out)),
        chunk_bytes="8MB",
        num_workers=workers,
        verbose=False,
        start_method="fork",
    )  # fmt: skip (optimize sets the global start method: fork, as every other loader here)
    return str(out)


def convert_mosaic(paths: Sequence[str], out: Path) -> str:
    """``streaming.MDSWriter`` of {index: int, image: bytes}, 8 MB shards."""
    from streaming import MDSWriter

    with MDSWriter(out=str(_fresh(out)), columns={"index": "int", "image": "bytes"},
                   size_limit="8mb") as writer:  # fmt: skip
        for i, path in enumerate(paths):
            writer.write({"index": i, "image": Path(path).read_bytes()})
    return str(out)


def write_index(paths: Sequence[str], out: Path) -> str:
    """sdsnodes needs no conversion: an index of the paths (``caption`` holds the id)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": list(paths), "caption": [str(i) for i in range(len(paths))]}),
                   out)  # fmt: skip
    return str(out)


# -- readers ---------------------------------------------------------------------------------------


class PathDataset:
    """The plain map-style Dataset: ``(crop224(paths[i]), i)``."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return crop224(self.paths[i]), i


def _one_thread(_: int = 0) -> None:
    import torch

    torch.set_num_threads(1)


def plain(paths: Sequence[str], workers: int, batch: int) -> Batches:
    from torch.utils.data import DataLoader

    return DataLoader(PathDataset(paths), batch_size=batch, shuffle=True, num_workers=workers)


def _tdn_item(paths: Sequence[str], i: int) -> tuple[Any, int]:
    return crop224(paths[i]), i


def _tdn_collate(items: list[tuple[Any, int]]) -> tuple[Any, list[int]]:
    import torch

    return torch.stack([x for x, _ in items]), [i for _, i in items]


def torchdata_nodes(paths: Sequence[str], workers: int, batch: int) -> Batches:
    """torchdata.nodes as its README shows: SamplerWrapper → ParallelMapper (processes) →
    Batcher → Mapper(collate) → Loader."""
    import torchdata.nodes as tn
    from torch.utils.data import RandomSampler

    node = tn.SamplerWrapper(RandomSampler(range(len(paths))))
    node = tn.ParallelMapper(node, functools.partial(_tdn_item, list(paths)),
                             num_workers=workers, method="process")  # fmt: skip
    node = tn.Mapper(tn.Batcher(node, batch_size=batch, drop_last=False), _tdn_collate)
    return tn.Loader(node)


def _wds_sample(sample: dict[str, Any]) -> tuple[Any, int]:
    return crop224(sample["jpg"]), int(sample["cls"])


def webdataset_reader(urls: Sequence[str], workers: int, batch: int) -> Batches:
    """``WebDataset(urls, shardshuffle=…).shuffle(1000)`` → decode → ``batched`` in a
    ``WebLoader`` (the webdataset README's pattern)."""
    import webdataset as wds

    ds = (
        wds.WebDataset(list(urls), shardshuffle=len(urls), empty_check=False,
                       nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker)
        .shuffle(1000).map(_wds_sample).batched(batch)
    )  # fmt: skip
    return wds.WebLoader(ds, batch_size=None, num_workers=workers)


def _litdata_sample(item: dict[str, Any]) -> tuple[Any, int]:
    return crop224(item["image"]), int(item["index"])


def litdata_reader(folder: str, workers: int, batch: int) -> Batches:
    import litdata

    ds = litdata.StreamingDataset(folder, shuffle=True, transform=_litdata_sample)
    return litdata.StreamingDataLoader(ds, batch_size=batch, num_workers=workers)


def mosaic_reader(folder: str, workers: int, batch: int) -> Batches:
    from streaming.base.util import clean_stale_shared_memory
    from torch.utils.data import DataLoader

    from benchmarks._peers_mds import MosaicImages

    clean_stale_shared_memory()
    ds = MosaicImages(local=folder, shuffle=True, batch_size=batch)
    return DataLoader(ds, batch_size=batch, num_workers=workers)


def sdsnodes_reader(index: str, cache: str, workers: int, batch: int) -> Iterator[Any]:
    """``build_image_graph`` in a ``StatefulDataLoader`` (batch_size=None: the graph batches)."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import CacheOptions, ErrorOptions, StreamingDataset, build_image_graph

    build = functools.partial(build_image_graph, index, size=SIZE, batch_size=batch,
                              errors=ErrorOptions(on_error="raise"), cache=CacheOptions(cache))  # fmt: skip
    loader = StatefulDataLoader(StreamingDataset(build), batch_size=None, num_workers=workers)
    for b in loader:
        yield b["image"], [int(c) for c in b["caption"]]


def run_epoch(
    make: Callable[[], Batches], count: int, shape: tuple[int, ...] = (3, SIZE, SIZE)
) -> dict[str, float]:
    """One epoch of ``make()``: wall s, first-batch s, CPU s (this process and its reaped
    children), peak PSS MiB; raises unless every id in ``range(count)`` came exactly once."""
    import resource

    def cpu() -> float:
        me, kids = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    seen: list[int] = []
    first = None
    with PeakPss() as pss:
        cpu0, start = cpu(), time.perf_counter()
        loader = make()
        for images, ids in loader:
            if first is None:
                first = time.perf_counter() - start
            if tuple(images.shape[1:]) != shape:
                raise RuntimeError(f"batch of shape {tuple(images.shape)}")
            seen.extend(int(i) for i in ids)
        del loader
        gc.collect()  # finalize the loader here, not in the next loader's forked workers
        wall, cpu_s = time.perf_counter() - start, cpu() - cpu0
    if sorted(seen) != list(range(count)):
        missing = len(set(range(count)) - set(seen))
        raise RuntimeError(f"coverage: {len(seen)} samples, {missing} ids missing or repeated")
    return {"wall": wall, "first": first or wall, "cpu": cpu_s, "pss": pss.peak}


T = TypeVar("T")

# what every measuring process imports before timing (every loader needs some of it; a loader
# pays for nothing it imports itself, and no loader for another's)
PRELOAD = (
    "numpy", "torch", "torchdata.nodes", "torchdata.stateful_dataloader", "av", "PIL.Image",
    "pyarrow.parquet", "sdsnodes", "webdataset", "litdata", "streaming",
)  # fmt: skip


def run_isolated(
    make: Callable[[], Batches], count: int, shape: tuple[int, ...] = (3, SIZE, SIZE)
) -> dict[str, float]:
    """:func:`run_epoch` in a fresh process (:func:`in_fresh_process`), so its peak PSS and CPU
    are the loader's own and not inflated by what the loaders measured before it left in this
    process (the main-process heap grew by 200-300 MiB over a run, and forked workers inherit
    it). ``make`` must pickle (a ``functools.partial`` of a module-level function).

    Raises:
        RuntimeError: the epoch failed in the child (its message), or the child died.
    """
    return in_fresh_process(run_epoch, make, count, shape)


CHILD_TIMEOUT_S = 300.0
"""How long :func:`in_fresh_process` waits for its child's result before it kills the child's
process tree (a loader that hangs: torchdata.nodes' process ``ParallelMapper`` once waited
forever with its workers idle, 2026-12-05)."""


def in_fresh_process(target: Callable[..., T], *args: Any) -> T:
    """``target(*args)`` in a fresh process (``spawn``) that first imports :data:`PRELOAD` and
    starts DataLoader workers as this process would (fork on Linux); its result, which must
    pickle, as ``target`` and ``args`` must.

    Raises:
        RuntimeError: ``target`` raised in the child (its message), the child died, or it gave
            no result within :data:`CHILD_TIMEOUT_S` (it and its descendants are then killed).
    """
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    method = multiprocessing.get_start_method()  # the workers' start method here (fork)
    child = ctx.Process(target=_run_in_child, args=(target, args, method, sender))
    child.start()
    sender.close()
    if not receiver.poll(CHILD_TIMEOUT_S):
        _kill_tree(child.pid)
        child.join()
        raise RuntimeError(f"no result within {CHILD_TIMEOUT_S:.0f} s: the loader hung (killed)")
    try:
        result = receiver.recv()
    except EOFError:
        child.join()
        raise RuntimeError(f"the measuring process died (exit code {child.exitcode})") from None
    child.join()
    if isinstance(result, _ChildError):
        raise RuntimeError(f"in the measuring process: {result.message}")
    return result


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants (the loader's workers), listed by :func:`tree_pids`
    before any is killed (a killed parent's children would be reparented)."""
    for p in tree_pids(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclasses.dataclass
class _ChildError:
    message: str


def _run_in_child(target: Callable, args: tuple, method: str, sender: Any) -> None:
    from benchmarks._common import silence_known_warnings

    multiprocessing.set_start_method(method, force=True)  # a spawned child would spawn workers
    silence_known_warnings()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # a peer not installed: its loader fails on its own
            pass
    try:
        sender.send(target(*args))
    except Exception as error:  # noqa: BLE001 - reported by the parent
        sender.send(_ChildError(f"{type(error).__name__}: {error}"))
