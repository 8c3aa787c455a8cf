"""The package's shape: imports go only downward, and the library's face is one import.

Every ``import`` in ``immichfs/`` is read from the source (module level, inside
functions, and under ``TYPE_CHECKING`` alike) and checked against the layer order
of docs/DEVELOPMENT.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import immichfs

PACKAGE = Path(immichfs.__file__).parent

#: rank of each part of the package; a module may import only equal or lower ranks
LAYERS: dict[str, int] = {
    "errors": 1,
    "model": 1,
    "logs": 1,
    "client": 2,
    "catalog": 3,
    "vfs": 4,
    "options": 5,
    "compose": 5,
    "fuse": 6,
    "gateway": 6,
    "fsspec": 6,
    "dask": 6,
    "cli": 7,
    "__main__": 7,
}
#: adapters share a rank but never import one another
ADAPTERS = {"fuse", "gateway", "fsspec", "dask"}
#: the one module that may import the fake server (``mount --demo``, ``fake-server``)
DEMO = "immichfs.cli.demo"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute, wherever the import statement is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # `from immichfs import options` imports the module immichfs.options
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def part(module: str) -> str | None:
    """The layer part of an immichfs module (``immichfs.vfs.tree`` -> ``vfs``)."""
    pieces = module.split(".")
    if pieces[0] != "immichfs" or len(pieces) < 2:
        return None
    return pieces[1] if pieces[1] in LAYERS else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def violations(module: str, targets: set[str]) -> list[str]:
    """The imports of ``module`` that go upward, or from one adapter to another."""
    own = part(module)
    wrong = []
    for target in targets:
        other = part(target)
        if own is None or other is None or other == own:
            continue
        if LAYERS[other] > LAYERS[own] or (own in ADAPTERS and other in ADAPTERS):
            wrong.append(target)
    return sorted(wrong)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_go_only_downward(path: Path) -> None:
    name = module_name(path)
    if part(name) is None:
        assert path.name == "__init__.py" and path.parent == PACKAGE, f"{path} is in no layer"
        return  # the package's face re-exports from below; checked by test_public_face
    wrong = violations(name, imports(path))
    assert not wrong, f"{name} imports upward or sideways: {wrong}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_only_the_fuse_adapter_imports_pyfuse3(path: Path) -> None:
    uses = any(t.split(".")[0] == "pyfuse3" for t in imports(path))
    assert not uses or part(module_name(path)) == "fuse", f"{module_name(path)} imports pyfuse3"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_only_the_demo_path_imports_the_fake(path: Path) -> None:
    uses = any(t.split(".")[0] == "immichfs_fake" for t in imports(path))
    assert not uses or module_name(path) == DEMO, f"{module_name(path)} imports immichfs_fake"


def test_the_rules_see_a_violation() -> None:
    # the checker itself can fail: upward and sideways imports are reported, the
    # relative-import resolution finds what a module really imports
    assert violations("immichfs.client.connector", {"immichfs.options"}) == ["immichfs.options"]
    assert violations("immichfs.vfs.tree", {"immichfs.fuse.kernel"}) == ["immichfs.fuse.kernel"]
    assert violations("immichfs.gateway.app", {"immichfs.fuse.mount"}) == ["immichfs.fuse.mount"]
    assert violations("immichfs.cli.mount", {"immichfs.fuse.mount", "immichfs.errors"}) == []
    assert "immichfs.options" in imports(PACKAGE / "cli" / "mount.py")
    assert "immichfs.client.http.normalise_url" in imports(PACKAGE / "client" / "config.py")


def test_public_face() -> None:
    from immichfs import ImmichConnector
    from immichfs.client.connector import ImmichConnector as Defined

    assert ImmichConnector is Defined
    assert immichfs.__all__ == sorted(immichfs.__all__)
    for name in immichfs.__all__:
        assert getattr(immichfs, name) is not None
    # every error class is exported
    errors = {
        name
        for name, value in vars(immichfs.errors).items()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and value.__module__ == "immichfs.errors"
    }
    assert errors <= set(immichfs.__all__), errors - set(immichfs.__all__)
    with pytest.raises(AttributeError):
        _ = immichfs.NoSuchThing


def test_a_command_imports_only_its_own_module() -> None:
    # `immichfs check` must work where FUSE or the gateway's server cannot be imported
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from immichfs.cli import main\n"
        "try:\n"
        "    main(['check', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(result.stderr.split())
    assert "immichfs.cli.check" in loaded
    unwanted = {
        "pyfuse3",
        "hypercorn",
        "immichfs_fake",
        "immichfs.cli.mount",
        "immichfs.fuse.mount",
    }
    assert not loaded & unwanted, loaded & unwanted
