"""The core never imports Ray or DeepSpeed: only lmcot/stages/ may (ARCHITECTURE.md)."""

import importlib
import pkgutil
import subprocess
import sys

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
    assert "lmcot.method" in CORE and "lmcot.config" in CORE


def test_jobs_do_nothing_at_import(tmp_path):
    """Ray imports entry-point modules on workers: importing them must not run a stage."""
    import pathlib

    root = pathlib.Path(lmcot.__file__).resolve().parents[1]
    for job in sorted((root / "jobs").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"job_{job.stem}", job)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # would raise SystemExit if it ran main()
