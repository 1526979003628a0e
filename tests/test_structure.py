"""Structure rules checked over the package's source (ASTs; no torch, fast).

(a) No module imports a private name (leading underscore, dunders aside) of *another* module of
    the package: ``from .x import _y``, ``from ._x import y``, ``import onnx_xai._x``, or ``x._y``
    on a name bound to a package module. What two modules share is public in one of them.
(b) No function has more than ``MAX_PARAMS`` named parameters (``self`` / ``cls`` excluded,
    ``*args`` / ``**kwargs`` not counted) outside the public API: the functions, classes (their
    constructors and methods, inherited ones included) and modules' functions exported by
    ``onnx_xai.__all__``, and the public functions of ``onnx_xai.matlab``, ``onnx_xai.visualize``,
    ``onnx_xai.autodiff`` (gradient models, documented for users) and the ``onnx_xai.adapters`` modules (MATLAB / MONAI / Captum / pytorch-grad-cam signatures
    carry many options). Inside, a long parameter list is a sign of a missing object.

Each allow-list entry is a violation known when the rule came; it says why, and it must go once
fixed (a stale entry fails the test too).
"""
from __future__ import annotations

import ast
import importlib
import inspect
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "onnx_xai"
MAX_PARAMS = 7

# "file: what" → why it is still there. Shrink, never grow.
PRIVATE_IMPORTS_ALLOWED: dict[str, str] = {
}
LONG_SIGNATURES_ALLOWED: dict[str, str] = {
    "onnx_xai/engines/surrogate.py: run_items":
        "LIME / KernelSHAP engine (being written): group the sampling settings in an object",
}


# ---------------------------------------------------------------------- reading the package
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
MODULES = {_module_name(p): p for p in FILES}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _absolute(module: str | None, level: int, current: str, is_package: bool) -> str:
    """The absolute dotted name an import statement in ``current`` refers to."""
    if not level:
        return module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def private_imports(path: Path) -> list[str]:
    """``"file:line: what"`` for every private name of another package module ``path`` uses."""
    current = _module_name(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    bound: dict[str, str] = {}  # local name → package module it is bound to
    found = []

    def foreign(module: str) -> bool:
        return module != current and (module == "onnx_xai" or module.startswith("onnx_xai."))

    def hit(node: ast.AST, what: str) -> None:
        found.append(f"{_relative(path)}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = _absolute(node.module, node.level, current, is_package)
            if not foreign(base):
                continue
            if any(_private(part) for part in base.split(".")):
                hit(node, f"from {base} import ...")
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if _private(alias.name):
                    hit(node, f"from {base} import {alias.name}")
                if full in MODULES:
                    bound[alias.asname or alias.name] = full
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not foreign(alias.name):
                    continue
                if any(_private(part) for part in alias.name.split(".")):
                    hit(node, f"import {alias.name}")
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    bound[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def module_of(expr: ast.AST) -> str | None:
        if isinstance(expr, ast.Name):
            return bound.get(expr.id)
        if isinstance(expr, ast.Attribute):
            outer = module_of(expr.value)
            if outer is not None and f"{outer}.{expr.attr}" in MODULES:
                return f"{outer}.{expr.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            module = module_of(node.value)
            if module is not None and foreign(module):
                hit(node, f"{module}.{node.attr}")
    return found


def _functions(path: Path):
    """(qualified name, node) of every function and method defined in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))

    def walk(node: ast.AST, prefix: str, in_class: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                yield name, child, in_class
                yield from walk(child, f"{name}.<locals>.", False)
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.", True)
            else:
                yield from walk(child, prefix, in_class)

    yield from walk(tree, "", False)


def named_parameters(node: ast.FunctionDef, method: bool) -> int:
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
    if method and not static and names and names[0] in ("self", "cls", "mcs"):
        names = names[1:]
    return len(names)


def _where(obj) -> tuple[str, str] | None:
    """(file relative to the root, qualified name) of a package function, or None."""
    obj = inspect.unwrap(obj)
    try:
        source = inspect.getsourcefile(obj)
    except TypeError:
        return None
    if source is None or PACKAGE not in Path(source).resolve().parents:
        return None
    return _relative(Path(source).resolve()), obj.__qualname__


def public_api() -> set[tuple[str, str]]:
    """(file, qualified name) of every function of the public API (see the module docstring)."""
    import onnx_xai

    objects = [getattr(onnx_xai, name) for name in onnx_xai.__all__ if not name.startswith("__")]
    adapters = sorted(f"onnx_xai.adapters.{p.stem}" for p in (PACKAGE / "adapters").glob("[!_]*.py"))
    for module in ["onnx_xai.matlab", "onnx_xai.visualize", "onnx_xai.autodiff"] + adapters:
        mod = importlib.import_module(module)
        names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
        objects += [getattr(mod, n) for n in names]
    public = set()
    for obj in objects:
        if inspect.ismodule(obj):
            objects += [v for k, v in vars(obj).items() if not k.startswith("_")
                        and (inspect.isfunction(v) or inspect.isclass(v))
                        and getattr(v, "__module__", None) == obj.__name__]
        elif inspect.isclass(obj):
            for cls in obj.__mro__:
                for name, member in vars(cls).items():
                    if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                        continue
                    member = getattr(member, "__func__", member)  # classmethod / staticmethod
                    if isinstance(member, property):
                        member = member.fget
                    if inspect.isfunction(member):
                        place = _where(member)
                        if place is not None:
                            public.add(place)
        elif inspect.isfunction(obj):
            place = _where(obj)
            if place is not None and not obj.__name__.startswith("_"):
                public.add(place)
    return public


def long_signatures() -> list[str]:
    """``"file:qualname (n)"`` of every non-public function with more than MAX_PARAMS parameters."""
    public = public_api()
    found = []
    for path in FILES:
        rel = _relative(path)
        for qualname, node, method in _functions(path):
            n = named_parameters(node, method)
            if n > MAX_PARAMS and (rel, qualname) not in public:
                found.append(f"{rel}:{qualname} ({n})")
    return found


# ---------------------------------------------------------------------- the rules
def _check(found: list[str], allowed: dict[str, str], rule: str) -> None:
    def key(entry: str) -> str:  # line numbers move; the allow-list names file and what
        file, _, rest = entry.partition(":")
        what = rest.split(": ", 1)[1] if ": " in rest else rest.split(" (")[0]
        return f"{file}: {what}"

    keys = {key(f) for f in found}
    new = [f for f in found if key(f) not in allowed]
    stale = sorted(set(allowed) - keys)
    message = []
    if new:
        message.append(f"{rule}:\n  " + "\n  ".join(new))
    if stale:
        message.append("fixed, so remove from the allow-list:\n  " + "\n  ".join(stale))
    assert not message, "\n".join(message)


def test_no_private_names_of_other_modules():
    found = [hit for path in FILES for hit in private_imports(path)]
    _check(found, PRIVATE_IMPORTS_ALLOWED, "imports of another module's private names "
           "(make the name public where it lives, or move it)")


def test_no_long_parameter_lists_outside_the_public_api():
    _check(long_signatures(), LONG_SIGNATURES_ALLOWED,
           f"functions with more than {MAX_PARAMS} parameters outside the public API "
           "(group them in an object)")


# ---------------------------------------------------------------------- the checker itself
def test_checker_sees_each_kind_of_private_use(tmp_path, monkeypatch):
    pkg = tmp_path / "onnx_xai"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "_hidden.py").write_text("x = 1\n")
    (pkg / "a.py").write_text("_own = 1\n__all__ = []\n")
    source = pkg / "sub" / "b.py"
    source.write_text("from __future__ import annotations\n"
                      "from ..a import _own, __all__\n"
                      "from .. import a as alias\n"
                      "from . import _hidden\n"
                      "from ._hidden import x\n"
                      "import onnx_xai.a\n"
                      "_mine = 2\n"
                      "y = alias._own + onnx_xai.a._own + alias.__all__ + _mine\n")
    me = sys.modules[__name__]
    monkeypatch.setattr(me, "ROOT", tmp_path)
    monkeypatch.setattr(me, "MODULES",
                        {_module_name(p): p for p in pkg.rglob("*.py")})
    hits = [h.split(": ", 1)[1] for h in private_imports(source)]
    assert hits == ["from onnx_xai.a import _own", "from onnx_xai.sub import _hidden",
                    "from onnx_xai.sub._hidden import ...", "onnx_xai.a._own", "onnx_xai.a._own"]


@pytest.mark.parametrize("source, method, expected", [
    ("def f(a, b, /, c, *args, d, e=1, **kw): pass", False, 5),
    ("def f(self, a): pass", True, 1),
    ("def f(cls, a): pass", True, 1),
    ("def f(self, a): pass", False, 2),
])
def test_parameter_count(source, method, expected):
    assert named_parameters(ast.parse(source).body[0], method) == expected
