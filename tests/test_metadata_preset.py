"""``build_metadata_graph`` (index rows, no media) and ``build_text_to_video_graph``'s
``embedding_tokens`` / ``allow_pickle`` (SDS's text embeddings)."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest
from torchdata.nodes import Loader

from sdsnodes import (
    CacheOptions,
    IndexOptions,
    build_metadata_graph,
    build_text_to_video_graph,
    error_stats,
    shutdown,
)
from sdsnodes._synthetic import write_video
from sdsnodes.index import read_index
from tests.utils import check_node_resume, keys_of

ROWS = pa.table({
    "caption": [f"caption {i}" for i in range(23)],
    "score": [float(i) for i in range(23)],
    "emb": [f"e{i}.pkl" for i in range(23)],
})  # fmt: skip


def batches(graph) -> list[dict]:
    try:
        return list(Loader(graph))
    finally:
        shutdown(graph)


def test_rows_batched_with_only_the_columns_asked():
    got = batches(build_metadata_graph(ROWS, columns=["caption", "score"], batch_size=5,
                                       shuffle=False, prefetch_factor=0))  # fmt: skip
    assert [len(b["caption"]) for b in got] == [5, 5, 5, 5, 3]
    first = got[0]
    assert sorted(first) == ["__epoch__", "__index__", "__key__", "caption", "score"]
    assert first["caption"] == [f"caption {i}" for i in range(5)]
    assert first["score"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    every = batches(build_metadata_graph(ROWS, batch_size=30, shuffle=False))
    assert "emb" in every[0] and len(every[0]["emb"]) == 23


def test_missing_column_and_bad_columns_are_named():
    with pytest.raises(ValueError, match=r"no column 'nope' \(columns\).*caption"):
        build_metadata_graph(ROWS, columns=["nope"])
    with pytest.raises(ValueError, match="list of column names"):
        build_metadata_graph(ROWS, columns="caption")


def test_resumes_exactly_and_filters():
    def make():
        return build_metadata_graph(ROWS, columns=["caption"], batch_size=4, seed=3,
                                    index=IndexOptions(filter="score < 20"))  # fmt: skip

    epoch0 = check_node_resume(make, midpoints=[1, 3, 5])
    assert len(epoch0) == 5 and len({k for b in epoch0 for k in b}) == 20


def test_ranks_read_disjoint_shares():
    shares = [
        [
            k
            for b in batches(
                build_metadata_graph(ROWS, batch_size=4, rank=r, world_size=2, drop_last=False)
            )
            for k in keys_of(b)
        ]  # fmt: skip
        for r in range(2)
    ]
    assert len(shares[0]) == len(shares[1]) == 12  # as many rows on each rank (one repeated)
    assert len(set(shares[0]) | set(shares[1])) == 23 and len(set(shares[0]) & set(shares[1])) <= 1


def test_metadata_only_directory_of_sidecars(tmp_path):
    for i in range(4):
        (tmp_path / f"{i:04d}.txt").write_text(f"caption {i}")
        (tmp_path / f"{i:04d}.json").write_text(f'{{"aesthetic": {i}}}')
    index = read_index(tmp_path, group_by_key=True)
    (batch,) = batches(build_metadata_graph(index, columns=["caption", "aesthetic"],
                                            batch_size=4, shuffle=False))  # fmt: skip
    assert batch["caption"] == [f"caption {i}" for i in range(4)]
    assert batch["aesthetic"].tolist() == [0, 1, 2, 3]


def test_directory_src_is_grouped_through_the_index_reader(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"{i:04d}.mp4").write_bytes(b"not decoded")
        (data / f"{i:04d}.txt").write_text(f"caption {i}")
    graph = build_metadata_graph(
        str(data), columns=["caption"], batch_size=3, shuffle=False,
        index=IndexOptions(key_column="key"), cache=CacheOptions(cache_dir=str(tmp_path / "c")),
    )  # fmt: skip
    (batch,) = batches(graph)
    assert batch["__key__"] == ["0000", "0001", "0002"]
    assert batch["caption"] == ["caption 0", "caption 1", "caption 2"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """2 short videos, each with a .pkl text embedding (SDS's dict) of a different length."""
    root = tmp_path_factory.mktemp("emb")
    rows = {"video": [], "caption": [], "emb": []}
    for i, tokens in enumerate((3, 7)):
        write_video(root / f"v{i}.mp4", num_frames=12, fps=12, width=32, height=32, seed=i)
        emb = {"embeddings": np.ones((tokens, 4), np.float32), "eot_location": 1}
        (root / f"e{i}.pkl").write_bytes(pickle.dumps(emb))
        rows["video"].append(str(root / f"v{i}.mp4"))
        rows["caption"].append(f"caption {i}")
        rows["emb"].append(str(root / f"e{i}.pkl"))
    return pa.table(rows)


def t2v(index, **options):
    options = {"embedding_columns": ["emb"], **options}
    return build_text_to_video_graph(index, num_frames=4, fps=8, size=16, batch_size=2,
                                     shuffle=False, **options)  # fmt: skip


def test_embedding_tokens_pad_cut_and_zero_after_eot(clips):
    (batch,) = batches(t2v(clips, embedding_tokens=5, allow_pickle=True))
    emb = batch["emb"]
    assert emb.shape == (2, 5, 4)  # 3 and 7 stored tokens, both 5 rows
    assert emb[:, :2].eq(1).all() and emb[:, 2:].eq(0).all()  # zero after the eot token (1)


def test_paired_embedding_is_cut_too(clips):
    index = clips.append_column("alt", pa.array(["alt 0", "alt 1"]))
    index = index.append_column("emb2", index.column("emb"))
    (batch,) = batches(t2v(index, embedding_tokens=2, allow_pickle=True, seed=1,
                           caption_column=["caption", "alt"], embedding_columns=["emb", "emb2"]))  # fmt: skip
    assert batch["caption_embedding"].shape == (2, 2, 4)


def test_pickles_need_allow_pickle(clips, caplog):
    graph = t2v(clips, embedding_tokens=5)
    loader = Loader(graph)
    try:
        assert list(loader) == []  # every sample skipped and counted: pickles are refused
        assert error_stats(loader.state_dict()) == {"decode": 2}
    finally:
        shutdown(graph)
    assert "allow_pickle=True" in caplog.text
    with pytest.raises(ValueError, match="num_tokens"):
        t2v(clips, embedding_tokens=0)
