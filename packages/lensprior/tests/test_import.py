import importlib


def test_imports_without_lensing_code():
    import sys

    mod = importlib.import_module("lensprior")
    assert mod.__version__ == "0.1.0"
    assert "lenssim" not in sys.modules  # the priors need no lensing code
