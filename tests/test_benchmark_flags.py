"""The benchmark and example scripts check their flags before they measure anything: one argparse line naming the
flag, never a traceback after minutes of training, a run counted twice or earlier runs read back as new ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *flags: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / script), *flags], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


@pytest.mark.parametrize("script, flags, message", [
    ("benchmarks/train_throughput.py", ["--out", "."], "argument --out: . is a folder; name a file"),
    ("benchmarks/sweep_default.py", ["--seeds", "1", "1"], "argument --seeds: 1 is given twice"),
    ("benchmarks/sweep_default.py", ["--dataset", "bogus", "--csv", "s.csv"], "unknown dataset 'bogus'"),
    ("benchmarks/rules_forgetting.py", ["--switch", "abc"], "argument --switch: must be a number >= 0 or one per"),
    ("benchmarks/long_stream.py", ["--no-steps", "--out", "earlier"], "argument --out: earlier holds 1 run(s) of an "
                                                                      "earlier benchmark; give another folder, or "
                                                                      "--resume"),
    ("benchmarks/neuron_tradeoff.py", ["--seeds", "x", "--out", "nt"], "argument --seeds: must be an integer in 0.."),
    ("examples/snntorch_tutorial_metaplastic.py", ["--meta", "-1"], "argument --meta: must be a finite number >= 0"),
])
def test_a_bad_flag_is_one_line_before_anything_runs(tmp_path, script, flags, message):
    (tmp_path / "afile").write_text("")
    (tmp_path / "earlier" / "runs" / "SGD" / "seed1").mkdir(parents=True)
    done = _run(script, *flags, cwd=tmp_path)
    assert done.returncode == 2 and f"error: {message}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "earlier"]  # (nothing written or made)
