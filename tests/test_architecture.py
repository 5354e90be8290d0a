"""The shape of the house: no import cycle in src_core, the engine never imports the
command line or the plugin, command modules never import the command line's main."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "src_core"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ENGINE.rglob("*.py")}


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the src_core modules it imports, at module level or inside functions."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                # "from . import checkpoints" names a module; "from .x import f" the module x
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:  # "src_core.a.b.c" of a module a.b
                    target = target.rpartition(".")[0]
                if target.startswith("src_core") and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_engine():
    found = cycles(import_graph())
    assert not found, "import cycles in src_core:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_layers_import_downwards_only():
    graph = import_graph()
    for module, targets in graph.items():
        assert not any(t.split(".")[:1] == ["napari_sam"] for t in targets), module
        if not module.startswith("src_core.cli"):
            assert not any(t.startswith("src_core.cli") for t in targets), f"{module} imports the command line"
        elif module != "src_core.cli" and module != "src_core.cli.main":
            assert "src_core.cli.main" not in targets, f"{module} imports the command line's main"
    text = "\n".join(p.read_text(encoding="utf-8") for p in ENGINE.rglob("*.py"))
    for gui in ("import napari", "from napari", "import qtpy", "from qtpy", "magicgui"):
        assert gui not in text, f"the engine mentions {gui!r}"


def test_predictors_and_stand_ins_share_one_protocol(vit_tiny_random_checkpoint):
    from standin_predictor import StandInPredictor

    from src_core.model.build import build_sam
    from src_core.predictor import SamPredictor
    from src_core.propagate.standin import StandInSegmenter
    from src_core.protocols import Predictor

    sam = build_sam("vit_tiny", checkpoint=vit_tiny_random_checkpoint, device="cpu")
    for predictor in (SamPredictor(sam), StandInSegmenter(lambda image: image), StandInPredictor()):
        assert isinstance(predictor, Predictor), type(predictor).__name__
    assert not isinstance(object(), Predictor)


PANELS = ("_everything_panel.py", "_text_panel.py", "_track_panel.py", "_finetune_panel.py", "_job.py")


def test_panels_use_only_the_sessions_public_api():
    """Issue 28: the panels work through the session (napari_sam._session.Session), never
    the dock widget or anyone's private attributes; and the session has no Qt widgets."""
    plugin = ROOT / "napari_sam"
    for name in PANELS:
        tree = ast.parse((plugin / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("_widget", "napari_sam._widget"), f"{name} imports the widget"
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                # their own private state is theirs; the session's is not
                assert not (isinstance(owner, ast.Attribute) and owner.attr == "session"), (
                    f"{name}:{node.lineno} reads session.{node.attr}"
                )
                assert not (isinstance(owner, ast.Name) and owner.id == "session"), (
                    f"{name}:{node.lineno} reads session.{node.attr}"
                )
    session = (plugin / "_session.py").read_text()
    assert "QtWidgets" not in session
