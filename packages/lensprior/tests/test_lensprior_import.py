import subprocess
import sys


def test_imports_without_lensing_code():
    # in a fresh interpreter: other tests of a shared session may have imported lenssim
    code = "import sys, lensprior; print(lensprior.__version__, 'lenssim' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0.1.0", "False"]  # the priors need no lensing code
