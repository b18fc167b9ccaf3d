import importlib


def test_imports_with_its_dependencies():
    mod = importlib.import_module("lensrim")
    assert mod.__version__ == "0.1.0"
    # its in-repo dependencies are installed with it
    assert importlib.import_module("lenssim").deflection_angles is not None
    assert importlib.import_module("lensprior").__version__
