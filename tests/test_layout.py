"""The package's shape: no import circles (function-level imports count), no module over 500
lines, every configurable name backed by its registry, stages behind one registry."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "chain_of_diffusion"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module of the package that ``module`` imports anywhere (not under TYPE_CHECKING)."""
    found: set[str] = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")
                    anchor = anchor[: len(anchor) - child.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in child.names)
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        edges = set()
        for target in _imports(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            parts = target.split(".")
            # importing a.b.c runs a, a.b and a.b.c; packages that contain ``name`` are already running
            for k in range(1, len(parts) + 1):
                prefix = ".".join(parts[:k])
                if prefix in files and prefix != name and not name.startswith(prefix + "."):
                    edges.add(prefix)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles_in_the_package():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_config_imports_nothing_heavier_than_the_errors():
    light = {"chain_of_diffusion", "chain_of_diffusion.errors", "chain_of_diffusion.schema", "chain_of_diffusion.data",
             "chain_of_diffusion.data.sources"}
    assert _graph()["chain_of_diffusion.config"] <= light | {"chain_of_diffusion.validation"}
    assert _graph()["chain_of_diffusion.validation"] <= light
    assert _graph()["chain_of_diffusion.schema"] <= {"chain_of_diffusion"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_500_lines(path):
    assert len(path.read_text().splitlines()) <= 500


def test_every_configurable_name_has_an_implementation():
    from chain_of_diffusion import config
    from chain_of_diffusion.processes import PROCESSES
    from chain_of_diffusion.processes.ddpm import SCHEDULERS

    assert set(config.OBJECTIVES) == set(PROCESSES)
    assert set(config.SCHEDULERS) == set(SCHEDULERS)


def test_stages_are_one_registry_in_run_order():
    from chain_of_diffusion.stages import REGISTRY

    names = [s.name for s in REGISTRY]
    assert names == ["real", "reference", "mix", "train", "generate", "select", "few_steps", "evaluate", "push"]
    assert [s.folder for s in REGISTRY if s.when == "per_generation"] == [
        "train_set", "model", "samples", "selected", "few_steps", "evaluation", "push"]  # the public run directory layout
    for stage in REGISTRY:
        assert stage.when in ("before", "per_generation", "after") and callable(stage.run)


class SampleCountStage:
    """The example of a new stage in docs/internals.md."""

    name, folder, when, every_process = "sample_count", "sample_count", "per_generation", False

    def run(self, ctx, generation, out):
        from chain_of_diffusion.data.imageset import read_metadata
        from chain_of_diffusion.runs import atomic_write_json

        count = len(read_metadata(ctx.run.stage_path(generation, "samples")))
        atomic_write_json(out / "count.json", {"count": count})
        return {"count": count}


def test_a_new_stage_is_one_class_and_one_registry_line(finished_run, tmp_path, monkeypatch):
    """A finished run gains the new stage on the next start; nothing else runs again."""
    import json
    import shutil

    from accelerate import Accelerator

    from chain_of_diffusion import stages
    from chain_of_diffusion.chain import planned_stages, run_chain
    from chain_of_diffusion.config import load_config

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    monkeypatch.setattr(stages, "REGISTRY", (*stages.REGISTRY, SampleCountStage()))
    cfg = load_config([str(run / "config.yaml")], [f"output_dir={run}"])
    assert [name for name, done in planned_stages(cfg, None)][-1] == "gen 1 sample_count"
    result = run_chain(cfg, Accelerator(cpu=True), echo=lambda *a, **k: None)
    assert result.ran_stages == ["gen 0 sample_count", "gen 1 sample_count"]
    for g in (0, 1):
        samples = len((run / f"gen_{g:02d}" / "samples" / "metadata.jsonl").read_text().splitlines())
        assert json.loads((run / f"gen_{g:02d}" / "sample_count" / "count.json").read_text()) == {"count": samples}
    assert "sample_count" in json.loads((run / "state.json").read_text())["done"]["1"]
