"""The README's first-screen example runs as written and prints what its comments say."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.integration
def test_the_readme_example_runs(home):
    (code,) = re.findall(r"```python\n(import faithful\n.*?)```", README.read_text(), re.S)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    kl, sfr, ffr, ce = (float(x) for x in out.stdout.split()[-4:])  # TransformerLens prints first
    assert kl >= 0 and 0 <= sfr <= 1 and 0 <= ffr <= 1 and ce > 0
