import threading

import pyarrow as pa
import pytest
import torch
from torchdata.nodes import Batcher, Loader, Mapper

from sdsnodes import IndexReader, Mixer, Shuffler, StreamingDataset, build_video_graph, collate


def test_getitem_decodes_the_same_chain(video_index):
    ds = StreamingDataset(
        lambda: build_video_graph(video_index, num_frames=4, size=32, batch_size=2)
    )
    assert len(ds) == 12
    sample = ds[3]
    assert sample["__key__"] == "3" and sample["video"].shape == (4, 3, 32, 32)
    assert torch.equal(ds[3]["video"], sample["video"])  # deterministic
    assert ds[-1]["__index__"] == 11
    with pytest.raises(IndexError):
        ds[12]
    assert ds.get("5")["__index__"] == 5
    with pytest.raises(KeyError):
        ds.get("nope")


def test_random_access_beside_a_running_iterator_and_threads(video_index):
    ds = StreamingDataset(
        lambda: build_video_graph(video_index, num_frames=4, size=32, batch_size=2)
    )
    it = iter(Loader(build_video_graph(video_index, num_frames=4, size=32, batch_size=2)))
    next(it)
    results = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, ds[i]["video"]))
        for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(6))
    assert torch.equal(results[2], ds[2]["video"])
    assert len(list(it)) == 5


def test_get_by_key_in_a_mixed_graph():
    def stream(n, name):
        return Mapper(
            Batcher(Shuffler(IndexReader(pa.table({"x": list(range(n))}), name=name)), 2), collate
        )

    ds = StreamingDataset(Mixer({"a": stream(5, "a"), "b": stream(7, "b")}))
    assert len(ds) == 12
    sample = ds.get("b/6")
    assert sample["x"] == 6 and sample["__stream__"] == "b"
    with pytest.raises(KeyError, match="mixed streams"):
        ds[0]
