"""Parity with SDS (seed 000, snap-research/sds) for a user moving their config and data over
(issue 15): the mixing orders per cycle, ``split_file_paths.txt`` of index shards, pickled
latents behind ``allow_pickle``."""

from __future__ import annotations

import collections
import gzip
import io
import json
import pickle

import media
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import torch
from torchdata.nodes import Loader
from utils import check_node_resume, json_roundtrip, mixer_states

from sdsnodes import DecodeError, IndexReader, Latent, Mixer, MixStrategy, Shuffler
from sdsnodes.codecs.latent import TextEmbedding
from sdsnodes.index import read_index
from sdsnodes.index.materialize import materialize
from sdsnodes.nodes._schedule import cycle_order, draw

# -- mixing orders ---------------------------------------------------------------------------

#: counts per cycle → one cycle of SDS's ``consecutive_interleaved`` and ``consecutive``
CYCLES = {
    (2, 3, 4): ("abcabcbcc", "aabbbcccc"),  # SDS's own test case
    (3, 2, 1): ("abcaba", "aaabbc"),
    (1, 1, 1): ("abc", "abc"),
    (5, 1): ("abaaaa", "aaaaab"),
    (1, 4): ("abbbb", "abbbb"),
    (2, 0, 3): ("acacc", "aaccc"),  # a zero count is never drawn
    (4,): ("aaaa", "aaaa"),
}


def letters(indices) -> str:
    return "".join("abc"[i] for i in indices)


@pytest.mark.parametrize("counts", list(CYCLES))
def test_consecutive_interleaved_cycle_is_sds(counts):
    interleaved, blocks = CYCLES[counts]
    assert letters(cycle_order(MixStrategy.CONSECUTIVE_INTERLEAVED, counts, 0, 0)) == interleaved
    assert letters(cycle_order(MixStrategy.CONSECUTIVE, counts, 0, 0)) == blocks


@pytest.mark.parametrize(
    "strategy, index", [(MixStrategy.CONSECUTIVE_INTERLEAVED, 0), (MixStrategy.CONSECUTIVE, 1)]
)
@pytest.mark.parametrize("counts", [(2, 3, 4), (3, 2, 1), (5, 1)])
def test_every_cycle_repeats_the_order_whatever_the_seed(strategy, index, counts):
    total = sum(counts)
    probs = [c / total for c in counts]
    for seed in (0, 7):
        drawn = letters(draw(strategy, probs, seed, step) for step in range(4 * total))
        assert drawn == CYCLES[counts][index] * 4


def reader(n: int, name: str) -> Shuffler:
    return Shuffler(IndexReader(pa.table({"x": list(range(n))}), name=name), seed=1)


def streams(sizes=(("a", 30), ("b", 40), ("c", 50))) -> dict:
    return {name: reader(n, name) for name, n in sizes}


@pytest.mark.parametrize(
    "strategy, expected",
    [("consecutive_interleaved", "abcabcbcc"), ("consecutive", "aabbbcccc")],
)
def test_the_mixer_yields_the_sds_cycle(strategy, expected):
    mixer = Mixer(streams(), {"a": 2, "b": 3, "c": 4}, strategy=strategy, stop="never")
    it = iter(Loader(mixer))
    assert "".join(next(it)["__stream__"] for _ in range(27)) == expected * 3


def test_equal_weights_with_a_cycle_length():
    def names(strategy):
        mixer = Mixer(streams(), None, strategy=strategy, stop="never", cycle_length=12)
        it = iter(Loader(mixer))
        return "".join(next(it)["__stream__"] for _ in range(24))

    assert names("consecutive") == "aaaabbbbcccc" * 2
    assert names("consecutive_interleaved") == "abc" * 8


@pytest.mark.parametrize("strategy", ["consecutive_interleaved", "consecutive"])
def test_resume_mid_cycle_is_exact(strategy):
    """States taken inside a cycle of 9 (after 1, 4, 5 and 13 items) resume the same order and
    the same samples."""
    epoch0 = check_node_resume(
        lambda: Mixer(streams(), {"a": 2, "b": 3, "c": 4}, strategy=strategy, seed=3),
        midpoints=[1, 4, 5, 13],
        key_fn=lambda item: (item["__stream__"], item["__key__"]),
    )
    expected = "abcabcbcc" if strategy == "consecutive_interleaved" else "aabbbcccc"
    assert "".join(s for s, _ in epoch0[:18]) == expected * 2


def _per_stream(items) -> dict[str, list[str]]:
    out = collections.defaultdict(list)
    for item in items:
        out[item["__stream__"]].append(item["__key__"])
    return out


def test_a_state_saved_under_the_old_meaning_still_resumes():
    """Before issue 15, ``consecutive_interleaved`` gave blocks (what ``consecutive`` gives now),
    and the Mixer's state held no strategy: such a checkpoint loads under either name.
    ``consecutive`` resumes the old order exactly; ``consecutive_interleaved`` resumes every
    stream where it stopped (nothing lost or repeated) in the new order from the saved step."""
    weights = {"a": 2, "b": 3, "c": 4}

    def make(strategy):
        return Mixer(streams(), weights, strategy=strategy, stop="never", seed=3)

    old = Loader(make("consecutive"))  # the old meaning, under its new name
    it = iter(old)
    before = [next(it) for _ in range(13)]  # mid-cycle: 4 items into the second cycle
    state = json_roundtrip(old.state_dict())
    for mixer_state in mixer_states(state):  # as saved before issue 15: no strategy stored
        for key in (Mixer.STRATEGY_KEY, Mixer.ROUNDS_KEY, Mixer.GROUPS_KEY, Mixer.GROUP_DRAWS_KEY):
            del mixer_state[key]
    uninterrupted = before + [next(it) for _ in range(36)]

    same = Loader(make("consecutive"))
    same.load_state_dict(state)
    it = iter(same)
    after = [next(it) for _ in range(36)]
    assert [(i["__stream__"], i["__key__"]) for i in after] == [
        (i["__stream__"], i["__key__"]) for i in uninterrupted[13:]
    ]

    new = Loader(make("consecutive_interleaved"))
    new.load_state_dict(state)
    it = iter(new)
    after = [next(it) for _ in range(36)]
    # steps 13.. of the new order: 13 % 9 = 4 → the rest of a cycle "bcbcc", then whole cycles
    assert "".join(i["__stream__"] for i in after) == "bcbcc" + "abcabcbcc" * 3 + "abca"
    # each stream goes on from its own position: its keys are a prefix of what it yields alone
    it = iter(Loader(make("consecutive")))
    reference = _per_stream(next(it) for _ in range(200))
    for name, keys in _per_stream(before + after).items():
        assert keys == reference[name][: len(keys)], name


def test_a_state_saved_now_refuses_the_other_strategy():
    """A state saved since issue 15 holds its strategy: loading it under another (say
    ``consecutive_interleaved`` for a run saved with ``consecutive``) is a clear error, not a
    silently different order."""

    def make(strategy):
        return Mixer(streams(), {"a": 2, "b": 3, "c": 4}, strategy=strategy, stop="never")

    loader = Loader(make("consecutive"))
    it = iter(loader)
    [next(it) for _ in range(5)]
    state = json_roundtrip(loader.state_dict())
    assert [m[Mixer.STRATEGY_KEY] for m in mixer_states(state)] == ["consecutive"]
    fresh = Loader(make("consecutive_interleaved"))
    fresh.load_state_dict(state)
    with pytest.raises(ValueError, match="saved with strategy='consecutive'.*before issue 15"):
        next(iter(fresh))
    same = Loader(make("consecutive"))
    same.load_state_dict(state)
    assert next(iter(same))["__stream__"] == "c"  # step 5 of aabbbcccc


# -- split_file_paths.txt: a .txt of index shards ----------------------------------------------


def shard_tables() -> list[pa.Table]:
    return [
        pa.table({"video": [f"v{s}_{i}.mp4" for i in range(n)], "shard": [s] * n})
        for s, n in enumerate((3, 4, 2))
    ]


def expected_rows() -> list[tuple[str, int]]:
    return [(v, t["shard"][0].as_py()) for t in shard_tables() for v in t["video"].to_pylist()]


def rows_of(table: pa.Table) -> list[tuple[str, int]]:
    return list(zip(table["video"].to_pylist(), table["shard"].to_pylist()))


@pytest.fixture
def local_split(tmp_path):
    """split_file_paths.txt beside shards/ (parquet, CSV, JSONL): relative, absolute, comments."""
    shards = tmp_path / "shards"
    shards.mkdir()
    a, b, c = shard_tables()
    pq.write_table(a, shards / "part-0.parquet")
    pa_csv.write_csv(b, shards / "part-1.csv")
    (shards / "part-2.jsonl").write_text("".join(json.dumps(row) + "\n" for row in c.to_pylist()))
    txt = tmp_path / "split_file_paths.txt"
    txt.write_text(
        f"# shards of one index\nshards/part-0.parquet\n\n{shards / 'part-1.csv'}\n"
        "shards/part-2.jsonl\n"
    )
    return txt


def test_local_split_file_paths_is_read_as_index_shards(local_split, tmp_path):
    table, key = materialize(local_split, cache_dir=tmp_path / "ix")
    assert rows_of(table) == expected_rows()
    assert rows_of(read_index(local_split)) == expected_rows()
    assert "path" not in table.column_names  # not a list of media files
    reader = IndexReader(str(local_split), index_cache_dir=str(tmp_path / "ix"))
    assert [(r["video"], r["shard"]) for r in Loader(reader)] == expected_rows()
    # a changed shard is a changed index: a new fingerprint, never the stale copy
    pq.write_table(shard_tables()[2], local_split.parent / "shards" / "part-0.parquet")
    table, key2 = materialize(local_split, cache_dir=tmp_path / "ix")
    assert key2 != key and table.num_rows == 8


def test_the_txt_mode_can_be_forced_and_a_mix_is_refused(local_split, tmp_path):
    as_media = read_index(local_split, txt="media")  # one row per line, as before
    assert as_media.num_rows == 3 and "path" in as_media.column_names
    table, _ = materialize(local_split, cache_dir=tmp_path / "ix", txt="media")
    assert table["path"].to_pylist() == as_media["path"].to_pylist()
    media = tmp_path / "media.txt"
    media.write_text("a.mp4\nb.jpg\n")
    assert read_index(media)["video"].to_pylist() == [f"{tmp_path}/a.mp4", None]
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("shards/part-0.parquet\na.mp4\n")
    with pytest.raises(ValueError, match="txt='index'.*txt='media'"):
        materialize(mixed, cache_dir=tmp_path / "ix")
    with pytest.raises(ValueError, match="a.mp4' is not an index file"):
        read_index(mixed, txt="index")
    assert read_index(mixed, txt="media").num_rows == 2
    with pytest.raises(ValueError, match="txt='bogus' must be 'index'"):
        materialize(local_split, cache_dir=tmp_path / "ix", txt="bogus")
    missing = tmp_path / "missing.txt"
    missing.write_text("shards/part-0.parquet\nshards/nope.parquet\n")
    with pytest.raises(ValueError, match="nope.parquet', listed in .* does not exist"):
        materialize(missing, cache_dir=tmp_path / "ix")
    with pytest.raises(ValueError, match="nope.parquet', listed in .* does not exist"):
        read_index(missing)


def test_split_file_paths_of_remote_parquet_shards(s3_server, s3_bucket, tmp_path):
    """Shards on S3 (moto), listed by a .txt on S3 (relative lines) or a local one (URLs)."""
    fs = s3_server.fs()
    names = []
    for n, shard in enumerate(shard_tables()):
        pq.write_table(shard, tmp_path / f"part-{n}.parquet")
        fs.put_file(str(tmp_path / f"part-{n}.parquet"), f"{s3_bucket}/idx/shards/part-{n}.parquet")
        names.append(f"shards/part-{n}.parquet")
    fs.pipe(f"{s3_bucket}/idx/split_file_paths.txt", "\n".join(names).encode())
    local = tmp_path / "split_file_paths.txt"
    local.write_text("".join(f"{s3_bucket}/idx/{name}\n" for name in names))
    options = s3_server.storage_options
    for src in (f"{s3_bucket}/idx/split_file_paths.txt", str(local)):
        table, _ = materialize(src, options, cache_dir=tmp_path / "ix")
        assert rows_of(table) == expected_rows(), src
        assert rows_of(read_index(src, options)) == expected_rows(), src
        reader = IndexReader(src, storage_options=options, index_cache_dir=str(tmp_path / "ix"))
        assert sorted((r["video"], r["shard"]) for r in Loader(reader)) == sorted(expected_rows())


# -- .pkl / .pkl.gz latents and text embeddings (allow_pickle) ---------------------------------


def sds_latent() -> dict:
    """A video latent as SDS pickled it: numpy mean/logvar [T, C, H, W] and non-tensor fields."""
    gen = np.random.default_rng(0)
    return {
        "mean": gen.standard_normal((3, 4, 2, 2)).astype(np.float32),
        "logvar": np.full((3, 4, 2, 2), -2.0, np.float32),
        "input_shape": (9, 3, 16, 16),
        "input_framerate": 24.0,
    }


def write_pickle(path, obj) -> str:
    data = pickle.dumps(obj)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return str(path)


@pytest.mark.parametrize("name", ["lat.pkl", "lat.pkl.gz"])
def test_pickled_latents_need_allow_pickle(tmp_path, name):
    path = write_pickle(tmp_path / name, sds_latent())
    with pytest.raises(DecodeError, match="allow_pickle=True.*") as caught:
        Latent()(path)
    assert "unsafe" in str(caught.value) and path in str(caught.value)
    mean = Latent(allow_pickle=True)(path)
    torch.testing.assert_close(mean, torch.from_numpy(sds_latent()["mean"]))
    drawn = Latent(allow_pickle=True, sample=True)(path, np.random.default_rng(1))
    assert drawn.shape == (3, 4, 2, 2) and drawn.dtype == torch.float32
    assert 0 < (drawn - mean).abs().max() < 3  # std exp(-1): drawn near the mean
    data = (tmp_path / name).read_bytes()  # downloaded bytes too
    torch.testing.assert_close(Latent(allow_pickle=True)(data), mean)
    with pytest.raises(DecodeError, match="allow_pickle=True"):
        Latent()(data)


def test_refused_pickles_are_never_run(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(
        media.Payload, "__setstate__", lambda s, state: ran.append(1), raising=False
    )
    for name in ("obj.pkl", "obj.pkl.gz"):
        with pytest.raises(DecodeError, match="allow_pickle"):
            Latent()(write_pickle(tmp_path / name, {"mean": media.Payload()}))
    assert ran == []


def test_pickled_text_embeddings_and_lists(tmp_path):
    """SDS's text embeddings: {"embeddings": [tokens, D], "eot_location": int}."""
    emb = np.arange(40, dtype=np.float32).reshape(5, 8)
    path = write_pickle(tmp_path / "emb.pkl.gz", {"embeddings": emb, "eot_location": 3})
    out = Latent(key="embeddings", allow_pickle=True)(path)
    torch.testing.assert_close(out, torch.from_numpy(emb))  # float32 [5, 8]
    with pytest.raises(DecodeError, match="pass key="):
        Latent(allow_pickle=True)(path)
    lists = write_pickle(tmp_path / "l.pkl", {"mean": [[1, 2], [3, 4]], "note": ["a", 1]})
    assert Latent(allow_pickle=True)(lists).tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_gzipped_npy_needs_no_pickle(tmp_path):
    buffer = io.BytesIO()
    np.save(buffer, np.ones((2, 3), np.float16))
    (tmp_path / "x.npy.gz").write_bytes(gzip.compress(buffer.getvalue()))
    out = Latent(dtype=None)(str(tmp_path / "x.npy.gz"))
    assert out.dtype == torch.float16 and out.shape == (2, 3)
    assert "allow_pickle=False" in repr(Latent())


def test_text_embedding_zeroes_after_eot_and_pads_like_sds(tmp_path):
    emb = np.arange(1, 41, dtype=np.float32).reshape(5, 8)  # 5 tokens, D = 8
    path = write_pickle(tmp_path / "emb.pkl.gz", {"embeddings": emb, "eot_location": 2})
    with pytest.raises(DecodeError, match="allow_pickle=True"):
        TextEmbedding(num_tokens=7)(path)
    out = TextEmbedding(num_tokens=7, allow_pickle=True)(path)
    assert out.shape == (7, 8) and out.dtype == torch.float32
    torch.testing.assert_close(out[:3], torch.from_numpy(emb[:3]))
    assert not out[3:].any()  # zeroed after the EOT token, then zero padding
    cut = TextEmbedding(num_tokens=2, allow_pickle=True)(path)
    torch.testing.assert_close(cut, torch.from_numpy(emb[:2]))
    np.save(tmp_path / "plain.npy", emb)  # a bare [tokens, D] array: no pickle, no EOT
    torch.testing.assert_close(TextEmbedding()(str(tmp_path / "plain.npy")), torch.from_numpy(emb))
    assert TextEmbedding(allow_missing=True)(None) is None
    with pytest.raises(DecodeError, match="tokens, D"):
        np.save(tmp_path / "three.npy", np.zeros((2, 3, 4), np.float32))
        TextEmbedding()(str(tmp_path / "three.npy"))
    with pytest.raises(ValueError, match="num_tokens=0"):
        TextEmbedding(num_tokens=0)
