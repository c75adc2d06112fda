"""The core never imports Ray or DeepSpeed: only lmcot/stages/ may (docs/architecture.md, the layers)."""

import importlib
import pkgutil
import runpy
import subprocess
import sys

import pytest

import lmcot

CORE = sorted(
    m.name for m in pkgutil.walk_packages(lmcot.__path__, "lmcot.") if not m.name.startswith("lmcot.stages")
)


def test_core_modules_import_with_ray_and_deepspeed_blocked():
    code = (
        "import sys\n"
        "for name in ('ray', 'deepspeed'):\n"
        "    sys.modules[name] = None\n"
        "import importlib\n"
        f"for mod in {CORE!r}:\n"
        "    importlib.import_module(mod)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "lmcot.inference.method" in CORE and "lmcot.config" in CORE and "lmcot.planning.resources" in CORE


def ray_imports(source: str) -> list[str]:
    """Every import of ray or deepspeed in ``source``, at module level or inside a function.

    >>> ray_imports("def f():\\n    import ray.train\\n    from deepspeed import x\\nimport rayon")
    ['ray.train', 'deepspeed']
    """
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found += [n for n in names if n.split(".")[0] in ("ray", "deepspeed")]
    return found


def test_core_modules_never_import_ray_even_lazily():
    """Importing with Ray blocked misses an import inside a function: read the source too."""
    import importlib.util

    offenders = {m: ray_imports(open(importlib.util.find_spec(m).origin).read()) for m in CORE}
    assert {m: found for m, found in offenders.items() if found} == {}
    assert ray_imports("def f():\n    import ray\n") == ["ray"], "the scan sees a lazy import"


def test_a_core_module_that_imports_ray_fails_the_check(tmp_path):
    """The check above can fail: the same blocking makes an import of ray raise."""
    code = "import sys\nsys.modules['ray'] = None\nimport ray\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr


def test_jobs_do_nothing_at_import(tmp_path):
    """Ray imports entry-point modules on workers: importing them must not run a stage."""
    import pathlib

    import lmcot.cli

    calls = []
    real_main = lmcot.cli.main
    lmcot.cli.main = lambda *args, **kwargs: calls.append(args)  # a job calling main at import is recorded
    try:
        root = pathlib.Path(lmcot.__file__).resolve().parents[1]
        jobs = sorted((root / "jobs").glob("*.py"))
        for job in jobs:
            spec = importlib.util.spec_from_file_location(f"job_{job.stem}", job)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        assert len(jobs) >= 6 and calls == [], "a job ran a stage at import"
        for job in jobs:  # run as a script, each one calls the command line once
            with pytest.raises(SystemExit):
                runpy.run_path(str(job), run_name="__main__")
        assert len(calls) == len(jobs) and all(isinstance(args[0], list) for args in calls)
    finally:
        lmcot.cli.main = real_main
