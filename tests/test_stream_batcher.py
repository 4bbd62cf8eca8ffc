"""StreamBatcher, the chunkers and build_stream_graph on real H.264 videos, WAV and text files:
row continuity, every chunk once, pad/reread/drop, resume, DataLoader workers, ranks, bad files."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchdata.nodes import Loader
from utils import check_node_resume, json_roundtrip

from sdsnodes import ErrorOptions, StreamingDataset, error_stats
from sdsnodes._synthetic import frame_index, write_audio, write_video
from sdsnodes.nodes.graph import iter_states
from sdsnodes.nodes.stream_batcher import StreamBatcher
from sdsnodes.stream_loader import StreamLoader
from sdsnodes.stream_preset import build_stream_graph

T, FPS = 4, 8.0  # clips of 4 frames at the videos' own rate: chunk c holds frames 4c..4c+3
LENGTHS = [8, 20, 12, 16, 24, 9, 12, 8]  # frames: 2, 5, 3, 4, 6, 2, 3, 2 clips
CUT_CLIPS = 2  # the truncated video: 8 clips stated, 2 whole before it breaks off


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    """Eight good videos (8 frames/s, frame index in the pixels), one shorter than a clip and one
    cut mid-way; returns (index path, {key: clips})."""
    d = tmp_path_factory.mktemp("streams")
    paths, clips = [], {}
    for i, n in enumerate(LENGTHS):
        write_video(d / f"{i}.mp4", num_frames=n, fps=8, width=64, height=32, seed=i, gop=4)
        paths.append(str(d / f"{i}.mp4"))
        clips[str(i)] = n // T
    write_video(d / "short.mp4", num_frames=2, fps=8, width=64, height=32, gop=4)
    whole = d / "whole.mp4"
    write_video(whole, num_frames=32, fps=8, width=64, height=32, gop=4, faststart=True)
    data = whole.read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])
    paths += [str(d / "short.mp4"), str(d / "cut.mp4")]
    clips[str(len(LENGTHS) + 1)] = CUT_CLIPS
    index = d / "index.parquet"
    pq.write_table(
        pa.table({"video": paths, "caption": [f"c{i}" for i in range(len(paths))]}), index
    )
    return str(index), clips


def graph(index, batch_size=3, pad="pad", **kwargs):
    kwargs.setdefault("prefetch_factor", 0)
    return build_stream_graph(
        index, batch_size=batch_size, num_frames=T, fps=FPS, size=None, pad=pad, seed=1, **kwargs
    )


def rows_of(batches):
    """Per row (``__row__``): the list of (key, chunk, first frame, is_first, is_pad, reread)."""
    rows: dict[int, list] = {}
    for b in batches:
        for j, r in enumerate(b["__row__"].tolist()):
            frame = -1 if b["is_pad"][j] else frame_index(b["video"][j, 0])
            item = (b["__key__"][j], int(b["__chunk__"][j]), frame, bool(b["is_first"][j]))
            rows.setdefault(r, []).append((*item, bool(b["is_pad"][j]), bool(b["is_reread"][j])))
    return rows


def check_continuity(rows):
    """Each row's chunks follow one another in time within a stream, until is_first."""
    for items in rows.values():
        previous = None
        for key, chunk, frame, first, padded, _ in items:
            if padded:
                assert key is None and chunk == -1 and not first
            else:
                assert frame == T * chunk  # the clip starts at frame 4c of its video
                assert first == (chunk == 0)
                if not first:
                    assert previous is not None and previous[:2] == (key, chunk - 1)
            previous = None if padded else (key, chunk)


def delivered(batches):
    return sorted(
        (k, int(c))
        for b in batches
        for k, c, p, r in zip(b["__key__"], b["__chunk__"], b["is_pad"], b["is_reread"])
        if not p and not r
    )


def expected(clips):
    return sorted((k, c) for k, n in clips.items() for c in range(n))


def test_rows_continue_their_stream_and_every_chunk_comes_once(streams):
    index, clips = streams
    loader = Loader(graph(index))
    batches = list(loader)
    assert all(b["video"].shape == (3, T, 3, 32, 64) for b in batches)
    check_continuity(rows_of(batches))
    assert delivered(batches) == expected(clips)
    assert batches[0]["is_first"].all() and not batches[0]["is_pad"].any()
    assert batches[-1]["is_pad"].any()  # the last stream's row alone is left
    assert torch.equal(batches[1]["video.clip_start"] - batches[0]["video.clip_start"],
                       torch.full((3,), T / FPS, dtype=torch.float64))  # fmt: skip
    # the short video is skipped as empty, the cut one ends its row early
    assert error_stats(loader.state_dict()) == {"empty": 1, "stream_cut": 1}


def test_streams_are_shuffled_per_epoch_not_their_chunks(streams):
    index, clips = streams
    loader = Loader(graph(index))
    firsts = [[k for b in loader for k, f in zip(b["__key__"], b["is_first"]) if f] for _ in "ab"]
    assert firsts[0] != firsts[1] and sorted(firsts[0]) == sorted(firsts[1])
    check_continuity(rows_of(list(loader)))  # epoch 2: chunks still in order


def test_reread_reads_every_stream_and_fills_rows_with_earlier_ones(streams):
    index, clips = streams
    batches = list(Loader(graph(index, pad="reread")))
    rows = rows_of(batches)
    check_continuity(rows)
    assert delivered(batches) == expected(clips)
    assert not any(b["is_pad"].any() for b in batches)
    rereads = [item for items in rows.values() for item in items if item[5]]
    assert rereads and any(item[3] for item in rereads)  # a reread starts with is_first
    assert all(b["video"].shape[0] == 3 for b in batches)


def test_drop_shrinks_the_batch_and_names_its_rows(streams):
    index, clips = streams
    batches = list(Loader(graph(index, pad="drop")))
    check_continuity(rows_of(batches))
    assert delivered(batches) == expected(clips)
    assert not any(b["is_pad"].any() for b in batches)
    sizes = [b["video"].shape[0] for b in batches]
    assert sizes[0] == 3 and sizes[-1] < 3
    assert all(b["__row__"].tolist() == sorted(set(b["__row__"].tolist())) for b in batches)


def _keys(batch):
    return tuple(zip(batch["__key__"], batch["__chunk__"].tolist(), batch["is_pad"].tolist()))


def _full_batches(loader):
    return [(_keys(b), b["__row__"].tolist()) for b in loader]


def test_two_workers_give_full_coherent_batches_and_resume(streams):
    index, clips = streams
    make = lambda: StreamLoader(StreamingDataset(graph(index, batch_size=4)), num_workers=2)  # noqa: E731
    loader = make()
    batches = list(loader)
    assert all(b["__row__"].tolist() == [0, 1, 2, 3] for b in batches)
    assert all(b["__worker__"].tolist() == [0, 0, 1, 1] for b in batches)
    check_continuity(rows_of(batches))
    assert delivered(batches) == expected(clips)
    whole = [(_keys(b), b["__row__"].tolist()) for b in batches]
    assert all(pad for _, _, pad in whole[-1][0][2:])  # worker 1 done first: its rows pad
    epoch1 = _full_batches(loader)
    for k in (2, len(whole) - 1):  # both workers going; worker 1 done
        first = make()
        it = iter(first)
        assert [(_keys(b), b["__row__"].tolist()) for b in (next(it) for _ in range(k))] == whole[
            :k
        ]
        state = json_roundtrip(first.state_dict())
        del it, first
        fresh = make()
        fresh.load_state_dict(state)
        assert _full_batches(fresh) == whole[k:]
    assert _full_batches(fresh) == epoch1  # and the next epoch as uninterrupted


def test_plain_dataloader_workers_keep_their_own_rows(streams):
    from torchdata.stateful_dataloader import StatefulDataLoader

    index, _ = streams
    loader = StatefulDataLoader(StreamingDataset(graph(index, batch_size=4)), batch_size=None,
                                num_workers=2)  # fmt: skip
    batches = list(loader)
    for w in (0, 1):
        mine = [b for b in batches if int(b["__worker__"][0]) == w]
        assert all(b["__row__"].tolist() == [2 * w, 2 * w + 1] for b in mine)
        check_continuity(rows_of(mine))


@pytest.mark.parametrize("pad", ["pad", "reread"])
def test_resume_restores_every_row_at_its_chunk(streams, pad):
    index, _ = streams
    epoch0 = check_node_resume(lambda: graph(index, pad=pad, prefetch_factor=2), key_fn=_keys)
    assert len(epoch0) > 4


def test_state_holds_positions_not_tensors(streams):
    index, _ = streams
    loader = Loader(graph(index))
    it = iter(loader)
    batches = [next(it) for _ in range(4)]
    state = json_roundtrip(loader.state_dict())
    (mine,) = [s for s in iter_states(state) if StreamBatcher.ROWS_KEY in s]
    rows = mine[StreamBatcher.ROWS_KEY]
    assert [r["key"] for r in rows] == batches[-1]["__key__"]
    assert [r["chunk"] for r in rows] == (batches[-1]["__chunk__"] + 1).tolist()
    assert all(isinstance(r["source"], str) for r in rows)  # the source's state, as JSON
    assert len(json.dumps(state)) < 20_000


def test_ranks_stream_disjoint_streams(streams):
    index, clips = streams
    parts = [delivered(list(Loader(graph(index, rank=r, world_size=3)))) for r in range(3)]
    keys = [{k for k, _ in p} for p in parts]  # 10 streams over 3 ranks: none read twice
    assert all(keys) and not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert sorted(parts[0] + parts[1] + parts[2]) == expected(clips)


def test_audio_windows_follow_one_another(tmp_path):
    for i, seconds in enumerate([2.0, 1.5, 3.0]):
        write_audio(tmp_path / f"{i}.wav", seconds=seconds, sample_rate=8000)
    index = tmp_path / "index.parquet"
    pq.write_table(pa.table({"audio": [str(tmp_path / f"{i}.wav") for i in range(3)]}), index)
    g = build_stream_graph(index, modality="audio", batch_size=2, seconds=0.5, sample_rate=8000,
                           shuffle=False, prefetch_factor=0)  # fmt: skip
    batches = list(Loader(g))
    assert batches[0]["audio"].shape == (2, 1, 4000)
    starts = {}
    for b in batches:
        for k, s, p in zip(b["__key__"], b["audio.audio_start"].tolist(), b["is_pad"]):
            if not p:
                starts.setdefault(k, []).append(s)
    assert starts == {"0": [0, 0.5, 1, 1.5], "1": [0, 0.5, 1], "2": [0, 0.5, 1, 1.5, 2, 2.5]}


def test_text_windows_cover_the_file(tmp_path):
    texts = ["abcdefghij", "klmnop", ""]
    for i, text in enumerate(texts):
        (tmp_path / f"{i}.txt").write_text(text)
    index = tmp_path / "index.parquet"
    pq.write_table(pa.table({"text": [str(tmp_path / f"{i}.txt") for i in range(3)]}), index)
    g = build_stream_graph(index, modality="text", batch_size=2, chunk_size=4, shuffle=False,
                           prefetch_factor=0)  # fmt: skip
    loader = Loader(g)
    batches = list(loader)
    got = {}
    for b in batches:
        for k, t, p in zip(b["__key__"], b["text"], b["is_pad"]):
            if not p:
                got[k] = got.get(k, "") + t
    assert got == {"0": texts[0], "1": texts[1]}
    assert batches[0]["text"] == ["abcd", "klmn"] and batches[0]["is_first"].all()
    assert error_stats(loader.state_dict()) == {"empty": 1}


def test_bad_arguments_name_the_fix(streams):
    index, _ = streams
    with pytest.raises(ValueError, match="pad='zero' must be one of"):
        graph(index, pad="zero")
    with pytest.raises(ValueError, match="modality='image'"):
        build_stream_graph(index, modality="image")
    with pytest.raises(ValueError, match="no column 'audio'"):
        build_stream_graph(index, modality="audio")
    with pytest.raises(ValueError, match="batch_size=0"):
        StreamBatcher(graph(index), 0)
    with pytest.raises(ValueError, match="num_workers <= batch_size"):
        StreamLoader(StreamingDataset(graph(index, batch_size=1)), num_workers=2)


def test_on_error_raise_raises_the_cut(streams):
    index, _ = streams
    with pytest.raises(Exception, match="cut.mp4|shorter than one chunk"):
        list(Loader(graph(index, errors=ErrorOptions(on_error="raise"))))


@pytest.mark.slow
def test_bench_streams_quick_prints_its_table(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "streams", "--quick", "--dir", str(tmp_path)],
        cwd=root, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, SDS_BENCH_DIR=str(tmp_path)),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("Batcher *") == 2  # the baseline row of each table
    assert "ms per batch" in done.stdout and "of 72 chunks" in done.stdout


def test_remote_streams_download_through_the_cache_resume_and_unpin(streams, http_dir, tmp_path):
    from sdsnodes import CacheOptions
    from sdsnodes.nodes._cache_ref import open_cache

    index, clips = streams
    table = pq.read_table(index)
    urls = []
    for path in table.column("video").to_pylist():
        (http_dir.path / Path(path).name).write_bytes(Path(path).read_bytes())
        urls.append(http_dir.url_for(Path(path).name))
    remote = table.set_column(0, "video", pa.array(urls))
    cache = CacheOptions(str(tmp_path / "cache"))
    loader = Loader(graph(remote, cache=cache))
    batches = list(loader)
    check_continuity(rows_of(batches))
    assert delivered(batches) == expected(clips)
    assert batches[0]["__url__.video"][0].startswith("http://127.0.0.1")
    assert open_cache(cache.cache_dir).stats()["pinned_files"] == 0  # every stream unpinned
    check_node_resume(lambda: graph(remote, cache=cache), midpoints=[2, 5], key_fn=_keys)


def test_threads_read_the_rows_side_by_side_with_the_same_result(streams):
    index, _ = streams
    inline, threaded = ([_keys(b) for b in Loader(graph(index, num_threads=n))] for n in (0, 3))
    assert inline == threaded
    with pytest.raises(ValueError, match="num_threads=-1"):
        graph(index, num_threads=-1)


def test_latent_runs_follow_one_another(tmp_path):
    import numpy as np

    for i, frames in enumerate([6, 4, 3]):  # 3, 2 and 1 runs of 2 latent frames
        latent = np.broadcast_to(np.arange(frames, dtype=np.float32)[None, :, None, None] + 100 * i,
                                 (4, frames, 2, 2))  # fmt: skip
        np.save(tmp_path / f"{i}.npy", np.ascontiguousarray(latent))
    index = tmp_path / "index.parquet"
    pq.write_table(pa.table({"latent": [str(tmp_path / f"{i}.npy") for i in range(3)]}), index)
    g = build_stream_graph(index, modality="latent", batch_size=2, latent_frames=2, shuffle=False,
                           prefetch_factor=0)  # fmt: skip
    runs: dict[str, list] = {}
    for b in Loader(g):
        assert b["latent"].shape == (2, 4, 2, 2, 2)
        for k, x, p in zip(b["__key__"], b["latent"], b["is_pad"]):
            if not p:
                runs.setdefault(k, []).append(x[0, :, 0, 0].tolist())
    assert runs == {"0": [[0, 1], [2, 3], [4, 5]], "1": [[100, 101], [102, 103]], "2": [[200, 201]]}


def test_video_clips_are_videoclips_at_consecutive_starts_decoded_in_one_pass(tmp_path):
    from sdsnodes import VideoChunks, VideoClip

    path = tmp_path / "v.mp4"
    write_video(path, num_frames=40, fps=24, width=96, height=64, gop=24)  # 3-4 clips a GOP
    for stride, size in [(None, None), (3, (32, 40))]:  # consecutive; overlapping and resized
        chunker = VideoChunks(5, 10.0, size=size, stride=stride)
        clips = list(chunker.chunks(path))
        assert len(clips) == chunker.count(path) == (3 if stride is None else 4)
        codec = VideoClip(5, fps=10.0, size=size, start="given")
        for clip in clips:
            expected_clip = codec(path, None, {"clip_start": clip.info["clip_start"]})
            assert torch.equal(clip.value, expected_clip)
        resumed = list(chunker.chunks(path, 2))  # seeks, then one pass again
        assert all(torch.equal(a.value, b.value) for a, b in zip(resumed, clips[2:], strict=True))


def test_a_state_of_another_batch_size_is_refused_naming_the_fix(streams):
    index, _ = streams
    loader = Loader(graph(index, batch_size=3))
    next(iter(loader))
    state = json_roundtrip(loader.state_dict())
    other = Loader(graph(index, batch_size=2))
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="resume with the batch_size and num_workers"):
        next(iter(other))
