"""attach: a package's names load when first asked for, from the submodule that holds them."""

import subprocess
import sys
import textwrap

import pytest


def test_names_load_on_first_use_and_unknown_names_fail(tmp_path):
    pkg = tmp_path / "toypkg"
    (pkg / "inner").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            from lenscore.lazy import attach
            __getattr__, __dir__, _WHERE = attach(
                __name__, {"heavy": ("VALUE",), "inner.deep": ("DEEP",)}, {"heavy": "heavy", "alias": "inner.deep"}
            )
            """
        )
    )
    (pkg / "heavy.py").write_text("import sys\nsys.modules['toypkg'].loaded = True\nVALUE = 42\n")
    (pkg / "inner" / "__init__.py").write_text("")
    (pkg / "inner" / "deep.py").write_text("DEEP = 'deep'\n")
    code = textwrap.dedent(
        """
        import sys, toypkg
        assert 'toypkg.heavy' not in sys.modules and not hasattr(toypkg.__dict__, 'loaded')
        assert 'VALUE' in dir(toypkg) and 'alias' in dir(toypkg)
        assert toypkg.VALUE == 42 and 'toypkg.heavy' in sys.modules and toypkg.__dict__['VALUE'] == 42
        assert toypkg.DEEP == 'deep' and toypkg.alias is sys.modules['toypkg.inner.deep']
        from toypkg import VALUE
        try:
            toypkg.missing
        except AttributeError as e:
            assert "'toypkg' has no attribute 'missing'" in str(e)
        else:
            raise SystemExit('no AttributeError')
        print('ok')
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_stub_is_the_one_list_of_a_packages_names(tmp_path, monkeypatch):
    import sys

    from lenscore.lazy import stub_exports

    pkg = tmp_path / "stubbed"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from lenscore.lazy import attach_stub\n__version__ = '1'\n"
        "__getattr__, __dir__, __all__, _WHERE = attach_stub(__name__, __file__, ('inner',))\n"
    )
    (pkg / "__init__.pyi").write_text(
        "from typing import Any as Any\nfrom stubbed.inner import A as A, b as b\nfrom .other import C as C\n"
    )
    (pkg / "inner.py").write_text("A = 1\ndef b():\n    return 2\n")
    (pkg / "other.py").write_text("C = 'c'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert stub_exports("stubbed", str(pkg / "__init__.py")) == {"inner": ("A", "b"), "other": ("C",)}
    import stubbed

    assert stubbed.__all__ == ["A", "b", "C", "__version__"]
    assert (stubbed.A, stubbed.b(), stubbed.C) == (1, 2, "c")
    assert "Any" not in dir(stubbed)  # the stub's own imports are not exports
    sys.modules.pop("stubbed", None)
    (pkg / "__init__.pyi").write_text("from stubbed.inner import A as B\n")
    with pytest.raises(ValueError, match="re-export A"):
        stub_exports("stubbed", str(pkg / "__init__.py"))


def test_a_stub_takes_a_subpackages_names_and_a_modules_all_with_a_star(tmp_path, monkeypatch):
    import sys

    pkg = tmp_path / "starred"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from lenscore.lazy import attach_stub\n"
        "__getattr__, __dir__, __all__, _WHERE = attach_stub(__name__, __file__, ('sub', 'mod'))\n"
    )
    (pkg / "__init__.pyi").write_text("from starred.sub import *\nfrom starred.mod import *\n")
    (pkg / "sub" / "__init__.py").write_text(
        "from lenscore.lazy import attach_stub\n"
        "__getattr__, __dir__, __all__, _WHERE = attach_stub(__name__, __file__, ('inner',))\n"
    )
    (pkg / "sub" / "__init__.pyi").write_text("from starred.sub.inner import X as X\n")
    (pkg / "sub" / "inner.py").write_text("X = 'x'\n")
    (pkg / "mod.py").write_text("__all__ = ['Y']\nY = 'y'\nZ = 'not exported'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import starred

    try:
        assert starred.__all__ == ["X", "Y"]  # no __version__: this package sets none
        assert (starred.X, starred.Y) == ("x", "y") and starred._WHERE == {"X": "sub.inner", "Y": "mod"}
        with pytest.raises(AttributeError):
            starred.Z  # noqa: B018
    finally:
        for name in [m for m in sys.modules if m.startswith("starred")]:
            sys.modules.pop(name)
