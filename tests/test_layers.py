"""The import layering of docs/design.md §3: the import-linter contract holds, and no import cycle exists."""

import os
import subprocess
import sys

import grimp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_layers_contract_is_kept():
    # The real `lint-imports` on the repository's .importlinter, as CI would run it.
    r = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout


def test_no_import_cycle():
    # Every import statement counts, function-level ones too (grimp reads them all).
    graph = grimp.build_graph("videomac", cache_dir=None)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycles.append(" -> ".join((importer, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_models_import_nothing_above_them():
    graph = grimp.build_graph("videomac", cache_dir=None)
    above = ("videomac.pretrain", "videomac.eval", "videomac.hub", "videomac.convert", "videomac.bench", "videomac.cli")
    for module in graph.find_children("videomac.models") | {"videomac.models"}:
        for imported in graph.find_modules_directly_imported_by(module):
            assert not any(imported == a or imported.startswith(a + ".") for a in above), f"{module} imports {imported}"
