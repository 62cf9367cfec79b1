"""bench/tabular.py runs at a tiny size (so it cannot rot) and reports against the roof."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tabular_bench_runs_tiny_and_reports_the_read_roof():
    out = subprocess.run([sys.executable, "bench/tabular.py", "--contexts", "4", "--actions", "32", "--steps", "5"],
                         cwd=REPO, capture_output=True, text=True, timeout=300, check=True).stdout
    assert re.search(r"roof: jitted read of P [\d.]+ GiB/s", out), out
    assert re.search(r"JAX loop at \d+% of the read roof", out) and "NumPy loop at" in out, out
    err = float(re.search(r"max abs error ([\d.e+-]+)", out).group(1))
    assert err < 1e-2, out  # bfloat16 P: about 3 significant digits
    assert float(re.search(r"\|\|_1 = ([\d.e+-]+)", out).group(1)) < 1e-4, out
