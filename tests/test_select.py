"""Selector: one candidate per sample chosen before the downloads (the caption with its own
embedding), deterministic in (seed, epoch, row), and only the chosen file downloaded."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pytest
from torchdata.nodes import Loader
from utils import check_node_resume

from sdsnodes import (
    CacheOptions,
    ErrorOptions,
    IndexReader,
    Shuffler,
    build_text_to_video_graph,
    error_stats,
    shutdown,
)
from sdsnodes._synthetic import write_video
from sdsnodes.cache import Cache
from sdsnodes.nodes.random_access import get_sample
from sdsnodes.nodes.select import NoCandidate, Selector

K = 4  # caption columns, each with its own embedding column
CAPTIONS = [f"cap{j}" for j in range(K)]
EMBEDDINGS = [f"emb{j}" for j in range(K)]
PAIRS = {"caption": CAPTIONS, "caption_embedding": EMBEDDINGS}


def rows_table(n: int = 12) -> pa.Table:
    """Captions ``"i j"`` and embedding names ``"e<i>_<j>"``; row 1 has no cap1, row 2 no emb2."""
    data = {c: [f"{i} {j}" for i in range(n)] for j, c in enumerate(CAPTIONS)}
    data.update({e: [f"e{i}_{j}" for i in range(n)] for j, e in enumerate(EMBEDDINGS)})
    data["cap1"][1] = "  "
    data["emb2"][2] = None
    return pa.table(data)


def selector(n: int = 12, **kwargs) -> Selector:
    source = Shuffler(IndexReader(rows_table(n)), seed=1)
    return Selector(
        source, PAIRS, files=["caption_embedding"], seed=kwargs.pop("seed", 5), **kwargs
    )


def test_the_caption_comes_with_its_own_embedding_and_only_that_file_stays():
    samples = list(Loader(selector()))
    assert len(samples) == 12
    for s in samples:
        i, j = (int(x) for x in s["caption"].split())
        assert s["caption_embedding"] == f"e{i}_{j}"  # the same candidate
        assert s["caption.caption_column"] == f"cap{j}"
        assert [s[e] for e in EMBEDDINGS] == [f"e{i}_{j}" if k == j else None for k in range(K)]
        assert s["cap0"] == f"{s['__index__']} 0"  # the caption texts are kept
    by_row = {s["__index__"]: s["caption.caption_column"] for s in samples}
    assert by_row[1] != "cap1" and by_row[2] != "cap2"  # a blank caption, a missing embedding
    assert len(set(by_row.values())) > 1  # random, not always the first


def test_the_choice_is_a_function_of_seed_epoch_and_row():
    def choices(node, epochs=2):
        loader = Loader(node)
        return [
            {s["__index__"]: s["caption.caption_column"] for s in loader} for _ in range(epochs)
        ]

    first = choices(selector(24))
    assert first == choices(selector(24))  # every run
    assert first[0] != first[1]  # a new draw each epoch
    assert first[0] != choices(selector(24, seed=6))[0]
    assert all(c == "cap0" for c in choices(selector(24, choice="first"), 1)[0].values())
    keys = check_node_resume(lambda: selector(24), key_fn=lambda s: (s["__key__"], s["caption"]))
    assert len(keys) == 24


def test_random_access_draws_what_epoch_0_streams():
    streamed = {s["__index__"]: s["caption"] for s in Loader(selector())}
    node = selector()
    assert all(get_sample(node, row)["caption"] == streamed[row] for row in range(12))


def test_a_sample_without_a_whole_candidate_is_skipped_as_missing_or_raised():
    table = rows_table(4).to_pydict()
    for c in CAPTIONS:
        table[c][3] = None
    loader = Loader(Selector(IndexReader(pa.table(table)), PAIRS))
    assert [s["__index__"] for s in loader] == [0, 1, 2]
    assert error_stats(loader.state_dict())["missing"] == 1
    raising = Selector(IndexReader(pa.table(table)), PAIRS, errors=ErrorOptions("raise"))
    with pytest.raises(NoCandidate, match="no candidate"):
        list(Loader(raising))


@pytest.mark.parametrize(
    "candidates, kwargs, match",
    [
        ({}, {}, "non-empty list"),
        ({"caption": "cap0"}, {}, "non-empty list"),
        ({"caption": CAPTIONS, "caption_embedding": EMBEDDINGS[:2]}, {}, "differ in length"),
        (PAIRS, {"files": ["nope"]}, "files="),
        (PAIRS, {"choice": "longest"}, "choice='longest' must be one of"),
    ],
)
def test_bad_arguments_fail_at_construction(candidates, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Selector(IndexReader(rows_table(3)), candidates, **kwargs)


# -- the text-to-video preset over HTTP: only the chosen embedding is downloaded ----------------

T2V = dict(num_frames=4, fps=8, size=32, batch_size=3, num_threads=1, prefetch_factor=0)


@pytest.fixture(scope="module")
def t2v_remote(tmp_path_factory):
    """3 rows of a short video and 4 (caption, embedding) pairs; embedding j of row i holds
    10 i + j."""
    root = tmp_path_factory.mktemp("select")
    rows: dict[str, list] = {"video": [], **{c: [] for c in CAPTIONS + EMBEDDINGS}}
    for i in range(3):
        write_video(root / f"v{i}.mp4", num_frames=12, fps=24, width=64, height=48, seed=i)
        rows["video"].append(f"v{i}.mp4")
        for j in range(K):
            np.save(root / f"e{i}_{j}.npy", np.full(16, 10 * i + j, np.float32))
            rows[CAPTIONS[j]].append(f"caption {i} {j}")
            rows[EMBEDDINGS[j]].append(f"e{i}_{j}.npy")
    return root, rows


def remote_graph(t2v_remote, http_dir, cache_dir, **kwargs):
    root, rows = t2v_remote
    for path in root.iterdir():
        shutil.copy(path, http_dir.path / path.name)
    files = {"video", *EMBEDDINGS}
    table = pa.table({k: [f"{http_dir.url}/{v}" if k in files else v for v in vs]
                      for k, vs in rows.items()})  # fmt: skip
    return build_text_to_video_graph(
        table, caption_column=CAPTIONS, embedding_columns=EMBEDDINGS,
        cache=CacheOptions(str(cache_dir)), **T2V, **kwargs,
    )  # fmt: skip


def test_the_preset_downloads_only_the_chosen_embedding(t2v_remote, http_dir, tmp_path):
    graph = remote_graph(t2v_remote, http_dir, tmp_path / "paired")
    try:
        (batch,) = list(Loader(graph))
    finally:
        shutdown(graph)
    for n, caption in enumerate(batch["caption"]):
        i, j = (int(x) for x in caption.split()[1:])
        assert batch["caption.caption_column"][n] == CAPTIONS[j]
        assert batch["caption_embedding"][n].tolist() == [10.0 * i + j] * 16
    assert batch["caption_embedding"].shape == (3, 16)
    assert Cache(str(tmp_path / "paired")).stats()["files"] == 3 + 3  # videos + one each

    graph = remote_graph(t2v_remote, http_dir, tmp_path / "all", pair_embeddings=False)
    try:
        (batch,) = list(Loader(graph))
    finally:
        shutdown(graph)
    assert batch["emb3"].shape == (3, 16) and "caption_embedding" not in batch
    assert Cache(str(tmp_path / "all")).stats()["files"] == 3 + 3 * K


def test_pairing_needs_one_embedding_per_caption_column(t2v_remote):
    root, rows = t2v_remote
    table = pa.table(
        {k: [str(root / v) if k != "cap0" else v for v in vs] for k, vs in rows.items()}
    )
    with pytest.raises(ValueError, match=r"pair_embeddings=True pairs caption_column\[i\]"):
        build_text_to_video_graph(
            table, caption_column=CAPTIONS[:2], embedding_columns=EMBEDDINGS,
            pair_embeddings=True, **T2V,
        )  # fmt: skip


def test_the_paired_preset_resumes_exactly(t2v_remote):
    root, rows = t2v_remote
    files = {"video", *EMBEDDINGS}
    table = pa.table(
        {k: [str(root / v) if k in files else v for v in vs] for k, vs in rows.items()}
    )

    made = []

    def make():
        made.append(build_text_to_video_graph(
            table, caption_column=CAPTIONS, embedding_columns=EMBEDDINGS,
            **{**T2V, "batch_size": 1, "prefetch_factor": 1},
        ))  # fmt: skip
        return made[-1]

    def key_fn(batch):
        return batch["__key__"][0], batch["caption"][0], batch["caption_embedding"][0, 0].item()

    try:
        epoch0 = check_node_resume(make, midpoints=[1, 2], key_fn=key_fn)
    finally:
        for graph in made:  # the Decoder's and Prefetcher's threads
            shutdown(graph)
    assert all(emb == 10 * int(key) + int(cap.split()[-1]) for key, cap, emb in epoch0)
