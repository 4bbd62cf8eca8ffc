"""build_audio_graph and build_text_to_video_graph on real files (local and over the HTTP
server), and smoke runs of their examples and benchmarks."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from torchdata.nodes import Loader

from sdsnodes import (
    CacheOptions,
    build_audio_graph,
    build_text_to_video_graph,
    error_stats,
    shutdown,
)
from sdsnodes._synthetic import audio_signal, audio_step, write_audio, write_video
from sdsnodes.cache import Cache

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000  # Hz of the test audio
SECONDS = 3.0  # of each test video
FPS = 24  # of each test video


@pytest.fixture(scope="module")
def t2v_files(tmp_path_factory):
    """5 rows: a 3-s video with an AAC track, a WAV of the same sound, two caption columns (the
    second empty in row 0), a latent .npy [4, 72, 2, 2] whose frame j holds j, an embedding."""
    root = tmp_path_factory.mktemp("t2v")
    rows = {"video": [], "caption": [], "alt": [], "wav": [], "latent": [], "emb": []}
    for i in range(5):
        write_video(root / f"v{i}.mp4", num_frames=int(SECONDS * FPS), fps=FPS, width=64,
                    height=48, seed=i, audio_rate=RATE)  # fmt: skip
        write_audio(root / f"a{i}.wav", seconds=SECONDS, sample_rate=RATE)
        frames = np.arange(SECONDS * FPS, dtype=np.float32)  # [T]
        np.save(root / f"l{i}.npy", np.broadcast_to(frames[None, :, None, None], (4, 72, 2, 2)))
        np.save(root / f"e{i}.npy", np.full(8, i, np.float32))
        rows["caption"].append(f"caption {i}")
        rows["alt"].append("" if i == 0 else f"alt {i}")
        for column, name in [("video", "v{}.mp4"), ("wav", "a{}.wav"), ("latent", "l{}.npy"),
                             ("emb", "e{}.npy")]:  # fmt: skip
            rows[column].append(name.format(i))
    return root, rows


def table(root, rows, prefix=None):
    """The rows with file names turned into paths under ``root`` (or URLs under ``prefix``)."""
    base = prefix or str(root)
    files = {"video", "wav", "latent", "emb"}
    return pa.table({k: [f"{base}/{v}" if k in files else v for v in vs] for k, vs in rows.items()})


T2V = dict(num_frames=16, fps=8, size=32, batch_size=5, shuffle=False, num_threads=2)


def epoch(graph, epochs=1):
    """The batches of ``epochs`` epochs and the skip counts; then the graph's threads stop (a
    daemon thread freeing tensors at interpreter exit would abort the test process)."""
    loader = Loader(graph)
    try:
        batches = [batch for _ in range(epochs) for batch in loader]
        return batches, error_stats(loader.state_dict())
    finally:
        shutdown(graph)


def one_batch(graph):
    (batch,), _ = epoch(graph)
    return batch


def test_text_to_video_shapes_alignment_and_latents(t2v_files):
    root, rows = t2v_files
    batch = one_batch(build_text_to_video_graph(
        table(root, rows), audio=True, caption_column=["caption", "alt"], latent_columns=["latent"],
        latent_stride=1, embedding_columns=["emb"], **T2V,
    ))  # fmt: skip
    assert batch["video"].shape == (5, 16, 3, 32, 32)
    starts, ends = batch["video.clip_start"], batch["video.clip_end"]
    assert starts.dtype.is_floating_point and ends.sub(starts).allclose(starts.new_tensor(2.0))
    assert batch["video.source_fps"].tolist() == [FPS] * 5
    assert batch["audio"].shape == (5, 1, 2 * RATE)  # the clip's 2 s at 16 kHz
    assert batch["audio.sample_rate"].tolist() == [RATE] * 5
    signal = audio_signal(SECONDS, RATE)[0]
    for i, start in enumerate(starts.tolist()):
        first = round(start * RATE)
        expected = signal[first : first + 2 * RATE]  # the sound of the clip's 2 s
        assert np.corrcoef(expected, batch["audio"][i, 0].numpy())[0, 1] > 0.99  # AAC: lossy
        f0 = round(start * FPS)  # latent frame j == source frame j: the clip's 48 frames
        assert batch["latent"][i, 0, :, 0, 0].tolist() == list(range(f0, f0 + 48))
    assert batch["latent"].shape == (5, 4, 48, 2, 2)
    assert batch["emb"].shape == (5, 8) and batch["emb"][:, 0].tolist() == [0, 1, 2, 3, 4]
    assert batch["caption.caption_column"][0] == "caption"  # row 0 has no alt caption
    for caption, column in zip(batch["caption"], batch["caption.caption_column"]):
        assert caption == f"{'caption' if column == 'caption' else 'alt'} {caption.split()[-1]}"


def test_caption_choice_is_random_among_columns_and_seeded(t2v_files):
    root, rows = t2v_files

    def columns(seed):
        graph = build_text_to_video_graph(
            table(root, rows), caption_column=["caption", "alt"], seed=seed, **T2V
        )
        return [c for b in epoch(graph, epochs=4)[0] for c in b["caption.caption_column"]]

    chosen = columns(0)
    assert chosen == columns(0)  # deterministic in the seed
    assert set(chosen[1:5] + chosen[6:10]) == {"caption", "alt"}  # both columns drawn
    assert chosen[::5] == ["caption"] * 4  # row 0: the only non-empty caption


def test_audio_from_a_separate_wav_is_the_clip_exactly(t2v_files):
    root, rows = t2v_files
    batch = one_batch(build_text_to_video_graph(table(root, rows), audio="wav", **T2V))
    signal = audio_signal(SECONDS, RATE)[0]  # 16-bit exact in WAV, no resampling: equal
    for i, start in enumerate(batch["video.clip_start"].tolist()):
        first = round(start * RATE)
        assert np.array_equal(batch["wav"][i, 0].numpy(), signal[first : first + 2 * RATE])
    assert "audio" not in batch


def test_remote_urls_download_every_column_and_equal_local(http_server, http_dir, t2v_files,
                                                           tmp_path):  # fmt: skip
    root, rows = t2v_files
    for name in os.listdir(root):
        shutil.copy(root / name, http_dir.path / name)
    options = dict(audio=True, latent_columns=["latent"], latent_stride=1,
                   embedding_columns=["emb"], caption_column=["caption", "alt"], **T2V)  # fmt: skip
    local = one_batch(build_text_to_video_graph(table(root, rows), **options))
    for partial in (False, True):
        cache_dir = str(tmp_path / f"cache-{partial}")
        remote = one_batch(build_text_to_video_graph(
            table(root, rows, prefix=http_dir.url), cache=CacheOptions(cache_dir),
            partial_reads=partial,
            block_size=4096, **options,
        ))  # fmt: skip
        for key in ("video", "audio", "latent", "emb", "video.clip_start"):
            assert remote[key].equal(local[key]), key
        assert remote["caption"] == local["caption"]
        assert all(u.startswith("http://") for u in remote["__url__.latent"])
        video_key = "__range_url__.video" if partial else "__url__.video"
        assert all(u.startswith("http://") for u in remote[video_key])
        assert Cache(cache_dir).stats()["files"] >= 15  # video (or blocks), latent, emb, x5


def test_bad_rows_are_skipped_and_counted(t2v_files, tmp_path):
    root, rows = t2v_files
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    bad = table(root, rows).to_pydict()
    bad["video"][1] = str(tmp_path / "garbage.mp4")
    bad["latent"][3] = str(tmp_path / "missing.npy")
    (batch,), stats = epoch(build_text_to_video_graph(pa.table(bad), latent_columns=["latent"],
                                                      **T2V))  # fmt: skip
    assert batch["__key__"] == ["0", "2", "4"]
    assert stats["decode"] == 1 and stats["missing"] == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(latent_columns=["nope"]), "latent_columns"),
        (dict(audio="nope"), "no column 'nope'"),
        (dict(audio=3), "audio=3"),
        (dict(caption_column=["caption", "nope"]), "caption_column=None"),
        (dict(latent_columns="latent"), "list of column names"),
        (dict(latent_columns=["latent"], latent_fps=2.0, latent_stride=2), "exactly one"),
    ],
)
def test_text_to_video_user_mistakes_fail_at_construction(t2v_files, kwargs, match):
    root, rows = t2v_files
    with pytest.raises(ValueError, match=match):
        build_text_to_video_graph(table(root, rows), **kwargs)


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    """2-s audio files: WAV at 16 kHz mono, FLAC at 44.1 kHz stereo, a garbage file, AAC (m4a)
    at 22.05 kHz, a video with an AAC track at 44.1 kHz."""
    root = tmp_path_factory.mktemp("audio")
    write_audio(root / "a.wav", seconds=2.0, sample_rate=RATE)
    write_audio(root / "b.flac", seconds=2.0, sample_rate=44100, channels=2)
    write_audio(root / "c.m4a", seconds=2.0, sample_rate=22050)
    write_video(root / "d.mp4", num_frames=48, fps=24, width=64, height=48, audio_rate=44100)
    (root / "e.wav").write_bytes(b"RIFF" + np.random.default_rng(1).bytes(3000))
    names = ["a.wav", "b.flac", "e.wav", "c.m4a", "d.mp4"]
    return root, names


def audio_table(root, names, prefix=None):
    base = prefix or str(root)
    return pa.table({"audio": [f"{base}/{n}" for n in names], "caption": names})


def test_audio_graph_shapes_rates_and_bad_file(audio_files):
    root, names = audio_files
    for channels in (1, 2):
        (batch,), stats = epoch(build_audio_graph(
            audio_table(root, names), sample_rate=8000, channels=channels, duration=1.0,
            batch_size=4, shuffle=False, num_threads=2,
        ))  # fmt: skip
        assert batch["audio"].shape == (4, channels, 8000)
        assert batch["audio.sample_rate"].tolist() == [8000] * 4
        assert batch["caption"] == names[:2] + names[3:]
        assert stats["decode"] == 1  # the garbage file
    starts = batch["audio.audio_start"]
    assert ((starts >= 0) & (starts <= 1.0 + 1e-3)).all()  # 1-s crops of 2-s files


def test_audio_graph_uniform_crop_is_the_middle(audio_files):
    root, names = audio_files
    batch = one_batch(build_audio_graph(
        audio_table(root, names[:1]), sample_rate=RATE, duration=1.0, start="uniform",
        shuffle=False,
    ))  # fmt: skip
    assert batch["audio.audio_start"].item() == pytest.approx(0.5, abs=1e-3)
    wave = batch["audio"][0, 0].numpy()  # [0.5 s, 1.5 s): amplitude 0.1, then 0.2 from 1 s
    assert np.abs(wave[: RATE // 2 - 100]).max() == pytest.approx(audio_step(0.5), abs=0.01)
    assert np.abs(wave[RATE // 2 + 100 :]).max() == pytest.approx(audio_step(1.0), abs=0.01)


def test_audio_graph_over_http_equals_local(http_dir, audio_files, tmp_path):
    root, names = audio_files
    good = names[:2] + names[3:]
    for name in good:
        shutil.copy(root / name, http_dir.path / name)
    options = dict(sample_rate=8000, duration=1.0, batch_size=4, shuffle=False)
    local = one_batch(build_audio_graph(audio_table(root, good), **options))
    remote = one_batch(build_audio_graph(
        audio_table(root, good, prefix=http_dir.url), cache=CacheOptions(str(tmp_path / "c")),
        **options
    ))  # fmt: skip
    assert remote["audio"].equal(local["audio"])
    assert all(u.startswith("http://") for u in remote["__url__.audio"])


def test_image_tensor_draft_can_be_turned_off(tmp_path, monkeypatch):
    """bench_image compares ImageTensor with and without JPEG draft mode."""
    from PIL import JpegImagePlugin

    from sdsnodes import ImageTensor
    from sdsnodes._synthetic import write_image

    path = tmp_path / "big.jpg"
    write_image(path, width=1024, height=768)
    calls = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, *a: calls.append(a) or draft(self, *a))  # fmt: skip
    on = ImageTensor(size=(64, 64), decoder="pillow")(path)
    assert len(calls) == 1  # 1024x768 -> 64: decoded at 1/8 scale
    off = ImageTensor(size=(64, 64), draft=False, decoder="pillow")
    assert off(path).shape == on.shape == (3, 64, 64) and len(calls) == 1
    assert (off(path).float() - on.float()).abs().mean() < 8  # the same picture
    assert "draft=False" in repr(off)


# -- smoke runs: the examples and the benchmarks exit 0 (timings are never asserted) ------------


def run(*args, tmp_path):
    env = dict(os.environ, SDS_BENCH_DIR=str(tmp_path / "bench"))
    done = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_examples_run(tmp_path):
    out = run("examples/audio.py", "--dir", tmp_path / "a", "--num-files", 4, tmp_path=tmp_path)
    assert "audio            torch.float32  [4, 1, 160000]" in out
    out = run("examples/text_to_video.py", "--dir", tmp_path / "v", "--num-videos", 4,
              tmp_path=tmp_path)  # fmt: skip
    assert "video            torch.uint8    [4, 16, 3, 64, 64]" in out
    assert "audio            torch.float32  [4, 1, 32000]" in out


def test_benchmarks_quick_run(tmp_path):
    out = run("-m", "benchmarks.run", "partial", "image", "audio", "--quick", tmp_path=tmp_path)
    for name in ("partial", "image", "audio"):
        assert f"== {name}: exit 0" in out
    assert out.count("ratio") >= 3


def test_building_a_graph_does_not_import_pandas(image_index, tmp_path):
    """pyarrow imports pandas (0.4-0.5 s, tens of MB) on some paths, e.g. ``pc.index`` with a
    Python value: building a preset and reading a batch stays off them."""
    code = (
        "import sys\n"
        "from torchdata.nodes import Loader\n"
        "from sdsnodes import CacheOptions, build_image_graph\n"
        f"graph = build_image_graph({image_index!r}, size=32, batch_size=4, "
        f"cache=CacheOptions({str(tmp_path / 'cache')!r}))\n"
        "next(iter(Loader(graph)))\n"
        "print('pandas' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "False"
