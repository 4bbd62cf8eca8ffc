"""examples/rnn_streams.py runs (in this process, to spare CI an interpreter start) and its
rows continue their videos."""

import ast
import re
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEP = re.compile(
    r"^step +(\d+) +epoch (\d+) +loss (\S+) +new streams (\d+) +keys (\[.*\]) +chunks (\[.*\])$",
    re.MULTILINE,
)


def test_rnn_streams_trains_on_coherent_rows_with_two_workers(tmp_path, monkeypatch, capsys):
    args = ["--dir", tmp_path, "--num-videos", 4, "--steps", 6, "--num-workers", 2]
    example = ROOT / "examples" / "rnn_streams.py"
    monkeypatch.setattr(sys, "argv", [str(example), *map(str, args)])
    runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    steps = STEP.findall(out)
    assert [int(s[0]) for s in steps] == [1, 2, 3, 4, 5, 6]
    assert "skipped streams: none" in out
    previous = None
    for _, epoch, loss, starts, keys, chunks in steps:
        keys, chunks = ast.literal_eval(keys), ast.literal_eval(chunks)
        assert len(keys) == 4 and float(loss) >= 0
        assert int(starts) == sum(c == 0 for c in chunks)
        if previous is not None and previous[0] == epoch:  # each row: its stream's next clip
            for key, chunk, (key0, chunk0) in zip(keys, chunks, zip(*previous[1:])):
                assert chunk == 0 or (key, chunk) == (key0, chunk0 + 1)
        previous = (epoch, keys, chunks)
