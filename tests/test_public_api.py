"""The declared public surface: the package root exports exactly the documented names, and every module's
``__all__`` names what it defines."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

import credpath

SRC = Path(credpath.__file__).resolve().parent

# The package root's public names, as the README's "Python API" section lists them. Adding or removing one
# is an API change: update the README section and this list together.
DOCUMENTED = [
    # reads on the process-wide search path
    "get_connection",
    "get_variable",
    "get_config",
    "default_search_path",
    "set_default_search_path",
    # their async twins
    "aget_connection",
    "aget_variable",
    # building blocks
    "SearchPath",
    "Connection",
    "Variable",
    "mask_secret",
    # errors
    "CredpathError",
    "NotFound",
    "ConfigError",
    "MissingDependency",
    "MissingFile",
    "AccessDenied",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "CircuitOpen",
]


def test_the_package_root_exports_exactly_the_documented_names() -> None:
    assert sorted(credpath.__all__) == sorted(DOCUMENTED)
    assert len(set(credpath.__all__)) == len(credpath.__all__)


def test_every_documented_name_resolves_from_the_package_root() -> None:
    for name in DOCUMENTED:
        assert getattr(credpath, name) is not None, name
    assert sorted(credpath._EXPORTS) == sorted(DOCUMENTED)  # the lazy table serves exactly these


def test_star_import_gives_the_documented_names_and_nothing_private() -> None:
    namespace: dict[str, object] = {}
    exec("from credpath import *", namespace)  # the import users write
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(DOCUMENTED)


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "templates" not in p.parts)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            assert node.value is not None
            return [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
    return None


def _bound_names(tree: ast.Module) -> set[str]:
    """Names a module binds at top level (definitions, assignments, imports, a lazy ``__getattr__``'s table
    is not seen here: such names are checked at run time)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return names


#: Modules whose optional dependency may be missing here: checked statically only when it is.
OPTIONAL = {
    "credpath.airflow_plugin": "airflow",
    "credpath.web.app": "fastapi",
    "credpath.web.views": "fastapi",
}
#: Names a module builds on first access (its ``__getattr__``) from an optional dependency.
LAZY = {"credpath.airflow": {"CredpathBackend": "airflow"}}


@pytest.mark.parametrize("path", _modules(), ids=_module_name)
def test_each_module_all_names_exist(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    declared = _declared_all(tree)
    assert declared is not None, f"{_module_name(path)} declares no __all__"
    assert len(set(declared)) == len(declared), f"duplicates in {path.name}'s __all__"
    assert not [n for n in declared if n.startswith("_")], "__all__ names private names"
    name = _module_name(path)
    needs = OPTIONAL.get(name)
    if needs is not None and importlib.util.find_spec(needs) is None:
        unbound = sorted(set(declared) - _bound_names(tree))
        assert not unbound, f"{name}.__all__ names what the module does not define: {unbound}"
        return
    module = importlib.import_module(name)
    lazy = {n for n, dep in LAZY.get(name, {}).items() if importlib.util.find_spec(dep) is None}
    if lazy:
        assert callable(getattr(module, "__getattr__", None)), f"{name} lost the lazy {sorted(lazy)}"
    missing = [n for n in declared if n not in lazy and not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module does not have: {missing}"


def test_cross_module_helpers_have_one_home() -> None:
    from credpath import _settings as config
    from credpath import errors
    from credpath.backends import metastore

    assert metastore.credpath_home is config.credpath_home
    assert errors.safe_reason(errors.ConfigError("setting 'x' is wrong")) == "setting 'x' is wrong"
    foreign = errors.safe_reason(ValueError("password=s3cr3t"))
    assert foreign == "ValueError (message withheld: it may contain a secret)"


#: The public modules: the ones the README documents. Every other module of the package is private
#: (``_``-prefixed), so it can be reshaped without breaking anyone. Packages: ``cli`` and ``web`` are used as
#: commands and an app factory; ``backends`` holds one module per store, named by class path in configs;
#: ``airflow_plugin`` is the module Airflow's plugin entry point names.
PUBLIC_MODULES = {
    "api",
    "errors",
    "model",
    "protocol",
    "testing",
    "registry",
    "metrics",
    "airflow",
    "airflow_plugin",
    "cli",
    "web",
    "backends",
}


def test_only_the_documented_modules_are_public() -> None:
    top = {
        p.stem if p.is_file() else p.name
        for p in SRC.iterdir()
        if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    public = {name for name in top if not name.startswith("_")}
    assert public == PUBLIC_MODULES
