"""The library's layers import only downward: ``utils.core`` <- ``models`` <- ``utils.data``
<- ``utils.explainers`` <- ``utils.evaluation`` <- ``utils.training`` <- the commands, and no
command imports another (read from the source, so a wrong arrow fails here)."""

from __future__ import annotations

import ast
import os

import pytest

from utils.core.cli import REPO_ROOT

LAYERS = ("utils.core", "models", "utils.data", "utils.explainers", "utils.evaluation", "utils.training")
# modules that only re-export a new home for earlier import paths: for users, not for the project
COMPATIBILITY_MODULES = ("utils.metrics", "utils.optim", "utils.checkpoint", "utils.files", "utils.baselines")
COMMAND_PACKAGES = ("scripts", "bench")
# the per-backbone evaluation commands are the shared evaluation command with other defaults
ALLOWED_COMMAND_IMPORTS = {
    ("Evaluation_L_CAM_VGG16", "scripts.evaluate"),
    ("Evaluation_L_CAM_ResNet50", "scripts.evaluate"),
}


def _module_name(path: str) -> str:
    relative = os.path.relpath(path, REPO_ROOT)[: -len(".py")].replace(os.sep, ".")
    return relative[: -len(".__init__")] if relative.endswith(".__init__") else relative


def _project_modules() -> dict[str, str]:
    """Module name -> file, for the library, the commands and the top-level scripts."""
    modules = {}
    for name in os.listdir(REPO_ROOT):
        if name.endswith(".py"):
            modules[name[:-3]] = os.path.join(REPO_ROOT, name)
    for package in ("utils", "models", *COMMAND_PACKAGES):
        for folder, _, files in os.walk(os.path.join(REPO_ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    modules[_module_name(path)] = path
    return modules


def _imports(path: str) -> set[str]:
    """Every module named by an import statement of the file, at any depth."""
    named = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), filename=path)):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            named.add(node.module)
            named.update(f"{node.module}.{alias.name}" for alias in node.names)
    return named


def layer_of(module: str) -> int | None:
    """The layer index of a library module, None for a command (or a module outside the project)."""
    for index, layer in reversed(list(enumerate(LAYERS))):
        if module == layer or module.startswith(layer + "."):
            return index
    return None


def _is_command(module: str, modules: dict[str, str]) -> bool:
    if layer_of(module) is not None or module.split(".")[0] in ("utils", "tests"):
        return False
    return module.split(".")[0] in COMMAND_PACKAGES or ("." not in module and module in modules)


def wrong_arrows(imports: dict[str, set[str]], modules: dict[str, str]) -> list[str]:
    """The imports that break the rule, as ``'importer -> imported (why)'``."""
    problems = []
    for importer, named in sorted(imports.items()):
        if importer in COMPATIBILITY_MODULES or importer == "utils":
            continue
        own_layer = layer_of(importer)
        for imported in sorted(named):
            if imported in COMPATIBILITY_MODULES:
                problems.append(f"{importer} -> {imported} (a compatibility alias; import its new home)")
            elif _is_command(imported, modules) and imported in modules:
                if own_layer is not None:
                    problems.append(f"{importer} -> {imported} (the library imports a command)")
                elif imported.split(".")[0] != importer.split(".")[0] or importer.split(".")[0] == "scripts":
                    if (importer, imported) not in ALLOWED_COMMAND_IMPORTS and imported != "bench":
                        problems.append(f"{importer} -> {imported} (a command imports another)")
            elif own_layer is not None and (imported_layer := layer_of(imported)) is not None:
                if imported_layer > own_layer:
                    problems.append(f"{importer} -> {imported} ({LAYERS[own_layer]} imports a higher layer)")
    return problems


def test_every_import_goes_down_the_layers():
    modules = _project_modules()
    assert {"utils.core.errors", "models.lcam", "utils.evaluation.protocol", "scripts.compare"} <= set(modules)
    imports = {name: _imports(path) for name, path in modules.items()}
    assert wrong_arrows(imports, modules) == []


def test_core_imports_nothing_of_the_project():
    modules = _project_modules()
    for name, path in modules.items():
        if name.startswith("utils.core"):
            outside = {module for module in _imports(path) if module.split(".")[0] in ("models", "utils", "scripts")}
            assert all(module.startswith("utils.core") for module in outside), (name, outside)


@pytest.mark.parametrize(
    ("importer", "imported", "why"),
    [
        ("models.lcam", "utils.evaluation.metrics", "imports a higher layer"),
        ("utils.core.files", "models", "imports a higher layer"),
        ("utils.explainers.baselines", "utils.training.loop", "imports a higher layer"),
        ("utils.evaluation.protocol", "scripts.evaluate", "the library imports a command"),
        ("scripts.compare", "scripts.explain", "a command imports another"),
        ("scripts.compare", "utils.metrics", "a compatibility alias"),
    ],
)
def test_a_wrong_arrow_is_caught(importer, imported, why):
    modules = _project_modules()
    problems = wrong_arrows({importer: {imported}}, modules)
    assert len(problems) == 1 and why in problems[0]


def test_the_documented_import_paths_still_work():
    from models import build_model  # noqa: F401
    from models.VGG16_L_CAM_Img import model  # noqa: F401
    from utils.baselines import BASELINES, NormalizedClassifier, build_explainer  # noqa: F401
    from utils.checkpoint import load_checkpoint  # noqa: F401
    from utils.data import ImageList, build_loader, read_datalist  # noqa: F401
    from utils.evaluation import build_eval_loader, evaluate, load_lcam_model  # noqa: F401
    from utils.files import atomic_open, write_json  # noqa: F401
    from utils.metrics import average_drop, increase_in_confidence, keep_top, minmax_normalize  # noqa: F401
    from utils.optim import adjust_lr, build_optimizer  # noqa: F401
