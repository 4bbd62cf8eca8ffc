"""Ray Data, both ways: sdsnodes' index and codecs inside Ray, and Ray's output inside our graph.

- :func:`read_index`: the rows of an index, read as :class:`~sdsnodes.IndexReader` reads
  them, as a ``ray.data.Dataset``;
- :func:`decode_batches`: a function for ``ds.map_batches(...)``, so Ray workers decode with our
  codecs (downloads through the machine-wide cache); ``ds.iter_torch_batches()`` then feeds
  training;
- :class:`RaySource` is a graph source over a ``Dataset`` or one iterator of
  ``ds.streaming_split(n, equal=True)``, so a training rank consumes Ray's preprocessing
  through the rest of our graph (``Batcher``, ``Mixer``, ``Prefetcher``).

Resume: Ray's streaming split cannot be checkpointed or seeked (Ray 2.x), so a
:class:`RaySource` resumes exactly at epoch boundaries only; see its docstring.

Ray is optional (``pip install "sdsnodes[ray]"``), imported on first use, never by ``import sdsnodes``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchdata.nodes import BaseNode

from sdsnodes.codecs import Codec, Decoded
from sdsnodes.errors import DecodeError, DownloadError, ErrorPolicy
from sdsnodes.options import CacheOptions, ErrorOptions, IndexOptions
from sdsnodes.sample import EPOCH, INDEX, KEY, Sample
from sdsnodes.storage import fetch, filesystem, is_remote, local_path

logger = logging.getLogger(__name__)
_END = object()


def _ray() -> Any:
    """The ``ray`` module with ``ray.data`` loaded, or an ImportError naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401 - loads the submodule
    except ImportError as error:
        raise ImportError(
            f'sdsnodes.ray needs Ray Data ({error}): pip install "sdsnodes[ray]"'
        ) from error
    return ray


def read_index(
    src: str | os.PathLike | pa.Table,
    storage_options: dict[str, Any] | None = None,
    *,
    index: IndexOptions | None = None,
    name: str | None = None,
    index_cache_dir: str | None = None,
    block_rows: int = 65_536,
) -> Any:
    """The rows of an index as a ``ray.data.Dataset``, read by sdsnodes' index reading.

    The index is read in this (the driver's) process exactly as
    ``IndexReader(src, storage_options, name=name, index=index)`` reads it (any source it reads,
    converted once per machine or fetched from a published index, with ``IndexOptions``'
    ``filter``, ``rename``, ``key_column``, ``max_rows``…), then handed to Ray in blocks.

    Args:
        src: the index source (parquet, CSV, JSON, directory, wildcard, ``.txt``, tar shards,
            a published index prefix) or a table in memory.
        storage_options (dict | None): fsspec options for a remote source.
        index (IndexOptions | None): filter, renames, key column, caps; ``lazy=True`` is
            refused (use ``ray.data.read_parquet``, which reads row groups in Ray's tasks).
        name (str | None): prefix of ``__key__`` (``"name/row"``).
        index_cache_dir (str | None): where converted indexes live (``<cache>/index``).
        block_rows (int): rows per Ray block, >= 1.

    Returns:
        ray.data.Dataset: one row per index row: its columns plus ``__key__`` (str) and
        ``__index__`` (int64, the row number), in index order.

    Raises:
        ImportError: Ray Data is not installed (``pip install "sdsnodes[ray]"``).
        ValueError: as ``IndexReader`` (a missing, unreadable or empty source, a filter that
            does not fit), ``index.lazy`` is True, or ``block_rows < 1``.
    """
    ray = _ray()
    from sdsnodes.nodes.index_reader import IndexReader

    if block_rows < 1:
        raise ValueError(f"{block_rows=} must be >= 1")
    index = index or IndexOptions()
    if index.lazy:
        raise ValueError(
            "IndexOptions(lazy=True) reads parquet by row groups on demand; under Ray use "
            "ray.data.read_parquet(...) for that, or lazy=None/False (converted once per machine)"
        )
    reader = IndexReader(src, storage_options, name=name, index_cache_dir=index_cache_dir,
                         index=dataclasses.replace(index, lazy=False))  # fmt: skip
    table = reader.index.table
    rows = table.num_rows
    prefix = f"{name}/" if name else ""
    if KEY in table.column_names:
        raw = table.column(KEY).cast(pa.string())
        keys = raw if not prefix else pc.binary_join_element_wise(prefix, raw, "")
        table = table.drop_columns([KEY])
    else:
        keys = pa.array([f"{prefix}{i}" for i in range(rows)], pa.string())
    table = table.append_column(KEY, keys).append_column(
        INDEX, pa.array(np.arange(rows, dtype=np.int64))
    )
    blocks = [table.slice(start, block_rows) for start in range(0, rows, block_rows)]
    return ray.data.from_arrow(blocks)


class DecodeBatches:
    """``ds.map_batches(decode_batches(codecs))``: decode columns of a batch with our codecs.

    Made by :func:`decode_batches`; picklable (each Ray worker opens its own cache connection).
    """

    def __init__(
        self,
        codecs: Mapping[str, Codec],
        cache: CacheOptions | None,
        storage_options: dict[str, Any] | None,
        seed: int,
        errors: ErrorOptions,
    ) -> None:
        self.codecs = dict(codecs)
        self.cache = cache
        self.storage_options = storage_options
        self.seed = int(seed)
        self.errors = errors
        self._state: tuple[Any, ErrorPolicy] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_state": None}

    def _worker(self) -> tuple[Any, ErrorPolicy]:
        if self._state is None:  # once per Ray worker process
            cache, c = None, self.cache
            if c is not None:
                from sdsnodes.cache import Cache
                from sdsnodes.storage import default_cache_dir

                cache = Cache(c.cache_dir or default_cache_dir(), c.max_bytes, c.ttl, c.policy)
            self._state = (cache, ErrorPolicy(self.errors.on_error, self.errors.max_error_rate))
        return self._state

    def _decode(self, codec: Codec, value: Any, rng: np.random.Generator, sample: Sample) -> Any:
        needs = getattr(codec, "needs_sample", False)

        def run(v: Any) -> Any:
            return codec(v, rng, sample=sample) if needs else codec(v, rng)

        if not is_remote(value):
            return run(local_path(value) if isinstance(value, str) else value)
        cache, _ = self._worker()
        if cache is None:  # no cache: the object's bytes, read with fsspec
            fs, path = filesystem(value, self.storage_options)
            return run(fs.cat_file(path))
        with cache.pinned(value, lambda tmp: fetch(value, tmp, self.storage_options)) as path:
            return run(str(path))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decode one numpy batch; the rows that decoded come out (see :func:`decode_batches`)."""
        from sdsnodes.nodes.decoder import sample_rng

        _, policy = self._worker()
        n = len(next(iter(batch.values()))) if batch else 0
        kept: list[int] = []
        decoded: dict[str, list] = {}
        for i in range(n):
            sample = {k: _py(v[i]) for k, v in batch.items()}
            out: dict[str, Any] = {}
            try:
                for j, (column, codec) in enumerate(self.codecs.items()):
                    source = getattr(codec, "source_column", None) or column
                    value = sample.get(source)
                    if value is None:
                        raise DecodeError(str(source), f"column {source!r} is None")
                    result = self._decode(codec, value, sample_rng(self.seed, sample, j), sample)
                    if isinstance(result, Decoded):
                        out.update({f"{column}.{k}": v for k, v in result.info.items()})
                        result = result.value
                    out[column] = result
            except (DecodeError, DownloadError, OSError) as error:
                reason = getattr(error, "reason", None) or (
                    "missing" if isinstance(error, FileNotFoundError)
                    else "download" if isinstance(error, DownloadError) else "decode"
                )  # fmt: skip
                policy.skip(reason, error, f"{KEY}={sample.get(KEY)!r}")
                continue
            policy.ok()
            kept.append(i)
            for k, v in out.items():
                decoded.setdefault(k, []).append(v)
        result = {k: v[kept] for k, v in batch.items() if k not in decoded}
        result.update({k: _column(v) for k, v in decoded.items()})
        return result


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _column(values: list) -> np.ndarray:
    """Decoded values stacked when of one shape and dtype, else an object array (ragged)."""
    arrays = [v.numpy() if isinstance(v, torch.Tensor) else v for v in values]
    if arrays and all(isinstance(a, np.ndarray) for a in arrays):
        if len({(a.shape, a.dtype) for a in arrays}) == 1:
            return np.stack(arrays)
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def decode_batches(
    codecs: Mapping[str, Codec],
    *,
    cache: CacheOptions | None = None,
    storage_options: dict[str, Any] | None = None,
    seed: int = 0,
    errors: ErrorOptions | None = None,
) -> DecodeBatches:
    """A function for ``ds.map_batches(fn, batch_format="numpy")`` that decodes with our codecs.

    Each row's ``column`` (a local path, a URL, or bytes) becomes ``codecs[column](value,
    rng)``, exactly as :class:`~sdsnodes.Decoder` computes it (same codec, same per-sample
    ``rng`` from ``(seed, __epoch__, __index__, column)``, ``Decoded`` facts under
    ``"<column>.<name>"``). Remote files go through the machine-wide download cache when
    ``cache`` is given (every Ray worker of a machine shares the directory and its budget),
    else their bytes are read with fsspec.

    Example::

        ds = sdsnodes.ray.read_index("s3://bucket/index.parquet")
        ds = ds.map_batches(decode_batches({"image": ImageTensor(size=(224, 224))},
                                           cache=CacheOptions("/mnt/cache", max_bytes=50 << 30)),
                            batch_format="numpy", batch_size=64)
        for batch in ds.select_columns(["image"]).iter_torch_batches(batch_size=64):
            batch["image"]  # uint8 [B, C, H, W]

    Args:
        codecs (Mapping[str, Codec]): column → codec, run in order.
        cache (CacheOptions | None): download cache for remote files; None reads them into
            memory.
        storage_options (dict | None): fsspec options for remote files.
        seed (int): seed of the codecs' randomness (clip starts, crops).
        errors (ErrorOptions | None): a row that fails (missing file, corrupt media, a None
            value) is dropped, counted by reason and logged in that Ray worker
            (``on_error="skip"``, the default), or raised (``"raise"``, failing the task as Ray
            does); past ``max_error_rate`` of one worker's rows it raises ``TooManyErrors``.

    Returns:
        DecodeBatches: the callable. Decoded columns hold numpy arrays: ``[B, ...]`` stacked when
        every row has one shape (e.g. ``ImageTensor(size=(h, w))``: uint8 ``[B, C, h, w]``),
        else one array per row.

    Raises:
        ValueError: ``codecs`` is empty or holds something not callable.
    """
    if not codecs:
        raise ValueError(
            "codecs must map at least one column to a codec, e.g. {'image': ImageTensor()}"
        )
    for column, codec in codecs.items():
        if not callable(codec):
            raise ValueError(f"codec for column {column!r} is not callable: {codec!r}")
    return DecodeBatches(codecs, cache, storage_options, seed, errors or ErrorOptions())


class RaySource(BaseNode[Sample]):
    """A graph source over a ``ray.data.Dataset`` or one ``streaming_split`` iterator.

    Each epoch iterates the dataset (or the split) once, a block at a time, yielding its rows:
    tensor columns become torch tensors (Ray's read-only arrays copied once per block), numpy
    scalars Python ones, and each sample gets ``__epoch__``. Give each training rank its split of ``ds.streaming_split(world_size,
    equal=True)`` (equal rows per rank, so DDP never waits on a short rank) and run the graph
    in the training process (``torchdata.nodes.Loader``, or a DataLoader with
    ``num_workers=0``): Ray's workers already run the preprocessing, and a split read by several
    DataLoader workers would be read by each.

    Resume (Ray's streaming split is not checkpointable: it can neither save its position nor
    seek): the state holds the epoch, the samples taken in it and whether it was over. A state
    taken before the epoch's first sample resumes that epoch from its start; one taken after
    its last sample resumes at the next epoch's start, exactly; one taken in the middle resumes
    at the **next** epoch's start too, with a ``RuntimeWarning`` naming how many samples of the
    epoch were taken (the rest of that epoch is not seen). Save checkpoints at epoch ends for
    exact resumes. What an epoch holds (and its order) is Ray's: deterministic only if the
    Ray pipeline is.

    Args:
        dataset_or_split (ray.data.Dataset | ray.data.DataIterator): the dataset, or one
            iterator of ``ds.streaming_split(n, equal=True)`` (every split's consumer must
            start each epoch, as Ray requires).

    State:
        ``{EPOCH_KEY: int, POSITION_KEY: int, FINISHED_KEY: bool}``.

    Raises:
        TypeError: ``dataset_or_split`` is neither a Dataset nor a DataIterator.
        ImportError: Ray Data is not installed.
        RuntimeError: (at ``reset``) iterated by a DataLoader with ``num_workers > 1``.
    """

    EPOCH_KEY = "epoch"
    POSITION_KEY = "position"
    FINISHED_KEY = "finished"

    def __init__(self, dataset_or_split: Any) -> None:
        super().__init__()
        data = _ray().data
        if not isinstance(dataset_or_split, (data.Dataset, data.DataIterator)):
            raise TypeError(
                "RaySource takes a ray.data.Dataset or one iterator of "
                f"ds.streaming_split(n, equal=True), not {type(dataset_or_split).__name__}"
            )
        self.data = dataset_or_split
        self._epoch = -1
        self._position = 0
        self._finished = False
        self._rows: Any = iter(())
        self._ahead: Any = _END

    def reset(self, initial_state: dict | None = None) -> None:
        super().reset(initial_state)
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            raise RuntimeError(
                f"RaySource under a DataLoader with num_workers={info.num_workers}: each worker "
                "would read the whole split; use num_workers=0 or torchdata.nodes.Loader (Ray's "
                "workers do the preprocessing)"
            )
        if initial_state is None:
            epoch = self._epoch + 1
        else:
            epoch = int(initial_state[self.EPOCH_KEY])
            taken = int(initial_state[self.POSITION_KEY])
            if initial_state[self.FINISHED_KEY]:
                epoch += 1
            elif taken > 0:
                import warnings

                warnings.warn(
                    f"RaySource: the state was taken after {taken} samples of epoch {epoch}; "
                    "Ray's streaming split cannot seek, so the rest of that epoch is skipped "
                    f"and epoch {epoch + 1} starts (checkpoint at epoch ends to resume exactly)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                epoch += 1
        self._epoch, self._position, self._finished = epoch, 0, False
        self._rows = _rows(self.data)  # starts Ray's epoch
        self._ahead = next(self._rows, _END)  # one row ahead: the epoch's end is known at once
        self._finished = self._ahead is _END

    def next(self) -> Sample:
        if self._ahead is _END:
            raise StopIteration
        row, self._ahead = self._ahead, next(self._rows, _END)
        self._position += 1
        self._finished = self._ahead is _END
        sample = dict(row)
        sample[EPOCH] = self._epoch
        return sample

    def get_state(self) -> dict:
        return {
            self.EPOCH_KEY: self._epoch,
            self.POSITION_KEY: self._position,
            self.FINISHED_KEY: self._finished,
        }


def _rows(data: Any) -> Any:
    """The rows of one pass over ``data``, read a block at a time (Ray's ``iter_rows`` builds
    each row's tensors one by one): tensor columns become torch tensors, copied once per block
    (Ray's arrays are read-only views of its object store) and viewed per row; other values
    Python ones."""
    for batch in data.iter_batches(batch_size=None, batch_format="numpy"):
        columns = {
            k: torch.from_numpy(np.array(v)) if v.ndim > 1 and v.dtype != object else v
            for k, v in batch.items()
        }  # a tensor column: [N, ...]
        n = len(next(iter(batch.values()))) if batch else 0
        for i in range(n):
            yield {
                k: v[i] if isinstance(v, torch.Tensor) else _value(v[i]) for k, v in columns.items()
            }


def _value(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.dtype != object:  # one row of a ragged column
        return torch.from_numpy(value if value.flags.writeable else value.copy())
    return _py(value)
