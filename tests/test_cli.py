"""The `sds` command: every subcommand, its output and its exit codes."""

import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from sdsnodes.cli import main


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "sdsnodes.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_help_for_every_command(capsys):
    assert run("--help").returncode == 0  # the real entry point starts
    for args in (
        ["demo"],
        ["index", "build"],
        ["index", "inspect"],
        ["cache", "stats"],
        ["cache", "clean"],
        ["bench"],
    ):
        with pytest.raises(SystemExit) as raised:
            main([*args, "--help"])
        assert raised.value.code == 0 and "usage: sds" in capsys.readouterr().out, args


def test_demo_with_own_index(video_index, tmp_path):
    proc = run(
        "demo", "--src", video_index, "--num-workers", "2", "--num-frames", "4", "--size", "32"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "clips/s" in proc.stdout
        and "video [4, 4, 3, 32, 32]" in proc.stdout
        and "a caption:" in proc.stdout
    )
    assert "skipped samples: none" in proc.stdout


def test_demo_makes_its_dataset(tmp_path):
    proc = run(
        "demo",
        "--dir",
        str(tmp_path / "demo"),
        "--num-videos",
        "8",
        "--num-frames",
        "4",
        "--size",
        "32",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "demo" / "index.parquet").exists() and "streamed 8 clips" in proc.stdout


def test_index_build_and_inspect(tmp_path, capsys):
    media = tmp_path / "media" / "cats"
    media.mkdir(parents=True)
    for i in range(3):
        (media / f"{i}.jpg").write_bytes(b"x" * (10 + i))
    out = tmp_path / "index.parquet"
    assert (
        main(
            [
                "index",
                "build",
                str(tmp_path / "media"),
                "-o",
                str(out),
                "--parse",
                r"(?P<label>[^/]+)/[^/]+$",
            ]
        )
        == 0
    )
    table = pq.read_table(out)
    assert table.num_rows == 3 and table.column("label").to_pylist() == ["cats"] * 3
    assert main(["index", "inspect", str(out), "--rows", "1"]) == 0
    text = capsys.readouterr().out
    assert "3 rows" in text and "label" in text and "sizes: total" in text


def test_cache_stats_and_clean(tmp_path, capsys):
    from sdsnodes.cache import Cache

    cache = Cache(tmp_path / "c")
    cache.get("s3://b/k.bin", lambda p: p.write_bytes(b"12345"))
    cache.unpin("s3://b/k.bin")
    cache.close()
    assert main(["cache", "stats", str(tmp_path / "c")]) == 0
    assert "files               1" in capsys.readouterr().out
    assert main(["cache", "clean", str(tmp_path / "c")]) == 0
    assert "removed 5 B" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["cache", "stats", "/nonexistent/dir"], "not a cache directory"),
        (["index", "inspect", "/nonexistent/index.parquet"], "does not exist"),
        (["demo", "--src", "/nonexistent/index.parquet"], "does not exist"),
    ],
)
def test_failures_exit_1_with_a_message(args, message, capsys):
    assert main(args) == 1
    assert message in capsys.readouterr().err


def test_bad_arguments_exit_2():
    for args in (["index", "build"], ["nope"]):
        with pytest.raises(SystemExit) as raised:
            main(args)
        assert raised.value.code == 2


def test_index_build_parse_needs_named_groups(tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(b"x")
    assert (
        main(
            ["index", "build", str(tmp_path), "-o", str(tmp_path / "i.parquet"), "--parse", "(.*)"]
        )
        == 1
    )
    assert "named groups" in capsys.readouterr().err
