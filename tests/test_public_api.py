"""The documented names of ``advisor`` are the documented objects, however they are reached."""

import importlib
import pkgutil
import subprocess
import sys

import advisor


def test_every_export_is_the_documented_object_after_importing_every_submodule():
    for module in pkgutil.iter_modules(advisor.__path__):
        importlib.import_module(f"advisor.{module.name}")
    for name in advisor.__all__:
        value = getattr(advisor, name)
        assert not isinstance(value, type(advisor)), f"advisor.{name} is a module, not the documented object"
        assert getattr(value, "__name__", None) == name
    assert callable(advisor.probe) and callable(advisor.audit) and callable(advisor.advise)
    assert set(advisor.__all__) <= set(dir(advisor))  # tab completion shows them


def test_an_export_reached_first_does_not_hide_another(tmp_path):
    # the order of the README: touch advise, then call probe (a fresh interpreter, nothing imported yet)
    code = ("import advisor; advisor.advise; import advisor.recommend; "
            "assert callable(advisor.probe) and callable(advisor.audit), (advisor.probe, advisor.audit)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_submodule_shares_an_exported_name():
    submodules = {module.name for module in pkgutil.iter_modules(advisor.__path__)}
    assert not submodules & set(advisor.__all__)
