"""attach: a package's names load when first asked for, from the submodule that holds them."""

import subprocess
import sys
import textwrap


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
