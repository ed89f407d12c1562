"""The house map (docs/architecture.md) as tests: layers import only downwards, no two modules import each other
(not even lazily), and the engine reaches backends only through the kernel protocol."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Each room's layer, from the bottom: a module imports only modules of its own layer or lower ones.
LAYERS = {
    "kernels": 0,
    "errors": 1,
    "formatting": 1,
    "packing": 1,
    "model": 1,
    "provenance": 1,
    "outputs": 1,
    "polygons": 1,
    "compiled_polygons": 1,
    "compiled_decimals": 1,
    "compiled": 1,
    "compiled_dvh": 1,
    "geometry": 1,
    "phantoms": 1,
    "dicom": 1,
    "images": 1,
    "labels": 1,
    "dispatch": 2,
    "voxelize": 3,
    "sampling": 3,
    "deformation": 3,
    "dvh": 4,
    "uncertainty": 4,
    "mapped": 4,
    "recurrence": 4,
    "reirradiation": 4,
    "validation": 4,
    "audit": 4,
    "cohort": 5,
    "cli": 6,
    "__main__": 6,
}


def _module_files() -> dict[str, Path]:
    """``isodose.*`` module names and their files, as pyproject maps the folders."""
    modules = {}
    for folder, package in ((ROOT / "engine", "isodose"), (ROOT / "kernels", "isodose.kernels")):
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _module_files()


def _imports(name: str, path: Path) -> set[str]:
    """The isodose modules ``name`` imports anywhere in its file (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES]
            # ``from . import module`` imports the modules; ``from .x import name`` imports the module x.
            candidates = submodules if submodules and len(submodules) == len(node.names) else [target, *submodules]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            if candidate in MODULES and candidate != name:
                found.add(candidate)
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_every_room_has_a_layer():
    assert {_room(m) for m in MODULES} - {""} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _room(m)))
def test_a_module_imports_only_its_layer_and_those_below(module):
    layer = LAYERS[_room(module)]
    upward = [target for target in GRAPH[module] if _room(target) and LAYERS[_room(target)] > layer]
    assert not upward, f"{module} (layer {layer}) imports {upward} from above it"


def test_kernels_know_nothing_of_the_engine():
    for module, targets in GRAPH.items():
        if _room(module) == "kernels":
            assert all(_room(t) == "kernels" for t in targets), (module, targets)


def test_no_import_circle():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if target == "isodose" or module == "isodose":
                continue  # the package's lazy exports import its modules; they never import it back for code
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_engine_never_probes_a_backend():
    """Capabilities are part of the protocol: no ``hasattr``/``getattr`` on kernels outside ``kernels/``, whether
    on ``backend.kernels`` itself or on a name bound to it."""
    for module, path in MODULES.items():
        if _room(module) == "kernels":
            continue
        tree = ast.parse(path.read_text())
        bound = {
            target.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute) and node.value.attr == "kernels"
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("hasattr", "getattr")
            ):
                subject = ast.unparse(node.args[0]) if node.args else ""
                probed = "kernels" in subject or subject in bound
                assert not probed, f"{path.relative_to(ROOT)}:{node.lineno} probes {subject}"


def test_only_dispatch_names_the_backend_modules():
    for module, targets in GRAPH.items():
        if _room(module) in ("kernels", "dispatch"):
            continue
        # The protocol is the engine's view of every backend; numba_target sets Numba up for the engine's compiled
        # host code as for the numba backend, and only that code may name it.
        shared = {"isodose.kernels.protocol"}
        if module in ("isodose.compiled_polygons", "isodose.compiled_decimals", "isodose.compiled_dvh"):
            shared.add("isodose.kernels.numba_target")
        named = {t for t in targets if t.startswith("isodose.kernels.") and t not in shared}
        assert not named, f"{module} imports {named}"


def test_the_public_api_lists_what_it_exports():
    import isodose

    assert isodose.__all__ == sorted(isodose._EXPORTS) + ["__version__"]
    for name in isodose.__all__:
        assert getattr(isodose, name) is not None, name


def test_the_command_line_offers_the_backends_dispatch_knows():
    from isodose.cli.options import BACKEND_CHOICES
    from isodose.dispatch import CHOICES

    assert sorted(BACKEND_CHOICES) == sorted(CHOICES)


def test_only_the_dicom_package_touches_pydicom():
    for module, path in MODULES.items():
        if _room(module) == "dicom":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "pydicom" for n in names), f"{path.relative_to(ROOT)}:{node.lineno}"


def test_the_architecture_page_names_every_module():
    """The page is the map: every module file of the package and the kernels is named in it (the packages'
    ``__init__.py`` files that only hold a docstring and re-exports excepted)."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    quiet_packages = {"engine/cli/__init__.py", "engine/cohort/__init__.py", "engine/dicom/__init__.py"}
    unnamed = []
    for path in sorted([*(ROOT / "engine").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]):
        relative = path.relative_to(ROOT).as_posix()
        if relative in quiet_packages or "__pycache__" in relative:
            continue
        name = relative.removeprefix("engine/")
        if f"`{name}`" not in page:
            unnamed.append(name)
    assert not unnamed, f"docs/architecture.md does not name {unnamed}"


def test_commands_write_json_through_json_document():
    """Every command's JSON is strict (null where a number is missing): written by formatting.json_document."""
    offenders = [
        path.name for path in sorted((ROOT / "engine" / "cli").glob("*.py")) if "json.dumps(" in path.read_text()
    ]
    assert not offenders
