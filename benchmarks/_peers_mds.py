"""mosaicml-streaming's reader for ``bench_peers`` (a module of its own: importing it imports
``streaming``, and DataLoader workers must find the class by name)."""

from __future__ import annotations

from typing import Any

from streaming import StreamingDataset

from benchmarks._peers import crop224


class MosaicImages(StreamingDataset):
    """``StreamingDataset`` decoding in ``__getitem__``, the pattern of streaming's docs."""

    def __getitem__(self, i: int) -> tuple[Any, int]:
        item = super().__getitem__(i)
        return crop224(item["image"]), int(item["index"])


def mds_s3_epoch(remote: str, count: int, workers: int, batch: int, cache: str) -> int:
    """One shuffled epoch of MDS shards at ``remote`` (``s3://…``) as a streaming user calls it:
    ``StreamingDataset(remote=remote, local=cache, shuffle=True)`` in a torch ``DataLoader``.

    streaming reads S3 through boto3, pointed at the endpoint by ``S3_ENDPOINT_URL`` (and the
    ``AWS_*`` credentials) in the environment, as its docs say; the caller sets them. ``cache``
    must be a fresh folder (a cold epoch: every shard downloaded).

    Returns:
        int: the samples delivered (``count``).

    Raises:
        RuntimeError: the ids delivered are not ``range(count)``, each once.
    """
    from streaming.base.util import clean_stale_shared_memory
    from torch.utils.data import DataLoader

    clean_stale_shared_memory()
    ds = MosaicImages(remote=remote, local=cache, shuffle=True, batch_size=batch)
    seen: list[int] = []
    for _, ids in DataLoader(ds, batch_size=batch, num_workers=workers):
        seen.extend(int(i) for i in ids)
    if sorted(seen) != list(range(count)):
        missing = len(set(range(count)) - set(seen))
        raise RuntimeError(f"coverage: {len(seen)} samples, {missing} ids missing or repeated")
    return len(seen)
