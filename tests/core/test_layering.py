"""The layers of docs/architecture.md, read from the code.

The core never imports Ray or DeepSpeed: only lmcot/stages/ may. Inside lmcot/ the packages keep
the order of :data:`LAYERS`: none imports a package above it, and no two import each other, by any
path. Imports are read with ``ast`` from every file, at the top or inside a function (a lazy import
hides a cycle; it does not remove it), relative imports resolved, and ``importlib.import_module``
with a literal name counted too.
"""

import ast
import importlib
import pathlib
import pkgutil
import runpy
import subprocess
import sys

import pytest

import lmcot

CORE = sorted(
    m.name for m in pkgutil.walk_packages(lmcot.__path__, "lmcot.") if not m.name.startswith("lmcot.stages")
)
ROOT = pathlib.Path(lmcot.__file__).resolve().parent

LAYERS = (
    ("config", "runs", "datasets", "scoring"),  # the ground: settings, run files, official data, answer scoring
    ("prompting",),  # prompts, the role table, the per-model fitter
    ("models", "serving"),  # generation backends; the Ray-free serving rules
    ("inference", "planning"),  # the method and its vote; memory and resource arithmetic
    ("evaluation", "training", "tinyworld"),  # running and scoring the method; learning it
    ("commands", "cli", "stages"),  # what the command line runs; Ray
)
"""Each package (or top-level module) of lmcot/ by layer, from the ground up. A package may import its
own layer and those below; imports inside one layer must not form a cycle."""
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}


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


def imported_modules(source: str, module: str = "", is_package: bool = False) -> list[tuple[str, int]]:
    """Every module ``source`` imports, as an absolute name with its line, wherever the import sits.

    ``module`` is the importing module's name (relative imports are resolved against it);
    ``from P import a`` gives ``P.a`` (``a`` may be a submodule of ``P``); a call of
    ``import_module`` with a literal (or an f-string's literal start) counts as an import.

    >>> imported_modules("def f():\\n    import ray.train\\n    from deepspeed import x\\nimport rayon")
    [('ray.train', 2), ('deepspeed.x', 3), ('rayon', 4)]
    >>> imported_modules("from ..runs import rundir\\nfrom . import y", "lmcot.stages.search")
    [('lmcot.runs.rundir', 1), ('lmcot.stages.y', 2)]
    >>> imported_modules("import_module(f'lmcot.stages.{name}')")
    [('lmcot.stages', 1)]
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            found += [(f"{stem}.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                arg = ast.Constant(arg.values[0].value.rstrip("."))
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((arg.value, node.lineno))
    return sorted(found, key=lambda item: item[1])


def ray_imports(source: str) -> list[str]:
    """Every import of ray or deepspeed in ``source``, at module level or inside a function.

    >>> ray_imports("def f():\\n    import ray.train\\n    from deepspeed import x\\nimport rayon")
    ['ray.train', 'deepspeed.x']
    """
    return [name for name, _ in imported_modules(source) if name.split(".")[0] in ("ray", "deepspeed")]


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


# -- the order of the packages ----------------------------------------------------------------
def unit_of(module: str) -> str:
    """The package (or top-level module) of lmcot/ that ``module`` belongs to; "" for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def sources() -> dict[str, tuple[str, bool, str]]:
    """path -> (module name, is a package's __init__, source) of every Python file in lmcot/."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("lmcot",) + path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        out[str(path.relative_to(ROOT.parent))] = (".".join(parts[:-1] if is_package else parts), is_package,
                                                   path.read_text(encoding="utf-8"))
    return out


def package_edges(files: dict[str, tuple[str, bool, str]]) -> dict[tuple[str, str], list[str]]:
    """(importing unit, imported unit) -> where (``path:line``), for imports between units of lmcot/."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path, (module, is_package, source) in files.items():
        for name, line in imported_modules(source, module, is_package):
            target = unit_of(name)
            if name.split(".")[0] != "lmcot" or target in ("", unit_of(module)):
                continue
            where = edges.setdefault((unit_of(module), target), [])
            if f"{path}:{line}" not in where:
                where.append(f"{path}:{line}")
    return edges


def upward(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    """Every import of a package from a layer above the importer's, with where it is."""
    return [f"{a} (layer {LEVEL[a]}) imports {b} (layer {LEVEL[b]}) at {', '.join(where)}"
            for (a, b), where in sorted(edges.items()) if LEVEL.get(b, -1) > LEVEL.get(a, len(LAYERS))]


def cycles(edges) -> list[list[str]]:
    """The packages that import each other, by any path: strongly connected groups of two or more.

    >>> cycles({("a", "b"): [], ("b", "c"): [], ("c", "a"): [], ("c", "d"): []})
    [['a', 'b', 'c']]
    >>> cycles({("a", "b"): [], ("b", "c"): []})
    []
    """
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    reachable = {node: reach(node) for node in graph}
    groups = {frozenset({n} | {m for m in reachable[n] if n in reachable[m]}) for n in graph if n in reachable[n]}
    return sorted(sorted(g) for g in groups)


def test_every_package_has_a_layer():
    units = {unit_of(module) for module, _, _ in sources().values()} - {""}
    assert units == set(LEVEL), f"place these in LAYERS: {sorted(units - set(LEVEL))}; " \
                                f"gone from lmcot/: {sorted(set(LEVEL) - units)}"


def test_the_root_package_imports_nothing_of_lmcot():
    """Every ``import lmcot.x`` runs ``lmcot/__init__.py`` first: it must pull in no package."""
    source = (ROOT / "__init__.py").read_text(encoding="utf-8")
    assert [n for n, _ in imported_modules(source, "lmcot", True) if n.startswith("lmcot.")] == []


def test_no_package_imports_a_package_above_it():
    assert upward(package_edges(sources())) == []


def test_no_two_packages_import_each_other():
    assert cycles(package_edges(sources())) == []


@pytest.mark.parametrize("lazy_import, is_upward, group", [
    ("from lmcot.prompting.fitting import PromptFitter", True, ["datasets", "prompting"]),
    ("from ..scoring import metrics", False, ["datasets", "scoring"]),  # scoring reads datasets: a loop back
])
def test_a_lazy_import_added_to_a_ground_module_fails_the_checks(lazy_import, is_upward, group):
    files = sources()
    path = "lmcot/datasets/context.py"
    module, is_package, source = files[path]
    files[path] = (module, is_package, source + f"\n\ndef f():\n    {lazy_import}\n")
    edges = package_edges(files)
    assert edges[tuple(group)] == [f"{path}:{source.count(chr(10)) + 4}"]
    assert bool(upward(edges)) == is_upward
    assert cycles(edges) == [group]


def test_the_import_readers_do_what_their_examples_show():
    """The examples in this module's docstrings (relative imports, import_module, cycles) are checks too."""
    import doctest

    result = doctest.testmod(sys.modules[__name__])
    assert result.attempted >= 6 and result.failed == 0
