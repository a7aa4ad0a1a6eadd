"""The package's structure, checked as the code stands: imports, who owns the run folder, what trainer holds."""

import ast
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fundax"

# The names of the run folder's layout (fundax.workdir's docstring); only fundax.workdir may build paths from them.
LAYOUT_NAMES = {"config.json", "config_changes.jsonl", "metrics.jsonl", "tensorboard", "checkpoints",
                "damaged_checkpoints", "eval", "profile", "jax_cache", ".fundax.lock", ".fundax.holder"}
LAYOUT_SUFFIXES = ("_metrics.json", "_examples.csv", "_outputs.npz", "_roc.png")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the fundax modules it imports anywhere in its body (inside functions too)."""
    def resolve(name: str) -> str | None:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {resolve(a.name) for a in node.names if a.name.startswith("fundax")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fundax"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in MODULES else resolve(node.module))
        graph[name] = deps - {None, name, "fundax"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_even_through_imports_inside_functions():
    graph = import_graph()
    assert "fundax.regions" in graph and graph["fundax.loop"] >= {"fundax.trainer", "fundax.workdir"}
    assert cycles(graph) == []


def test_every_module_imports_on_its_own():
    # The third-party libraries are imported once; then each fundax module is imported first
    # in a forked child, as in a fresh process: a cycle shows as a partly initialised module.
    names = [n for n in MODULES if not n.endswith("__main__")]
    script = (
        "import importlib, os, sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "import jax, flax.linen, optax, orbax.checkpoint, grain, tensorflow_datasets, absl.flags, matplotlib\n"
        f"for name in {names!r}:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        try:\n"
        "            importlib.import_module(name)\n"
        "        except BaseException as e:\n"
        "            print(f'{name}: {type(e).__name__}: {e}', flush=True)\n"
        "            os._exit(1)\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "", done.stdout


def _path_building_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants used to build a path: an operand of ``/``, an argument of os.path.join,
    pathlib.Path, joinpath or with_name, or a part of an f-string."""
    found = []

    def strings(node: ast.AST) -> list[ast.Constant]:
        return [n for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]

    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            found += strings(node.left) + strings(node.right)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("join", "Path", "joinpath", "with_name", "PurePath"):
                for arg in node.args:
                    found += strings(arg)
        elif isinstance(node, ast.JoinedStr):  # its literal parts, not the expressions it formats
            found += [v for v in node.values if isinstance(v, ast.Constant)]
    return [(n.lineno, n.value) for n in found]


def test_only_the_workdir_module_builds_paths_in_a_run_folder():
    offenders = []
    for name, path in MODULES.items():
        if name == "fundax.workdir":
            continue
        for line, value in _path_building_strings(ast.parse(path.read_text())):
            text = value.strip("/")
            if text in LAYOUT_NAMES or any(text.endswith(s) for s in LAYOUT_SUFFIXES) or \
                    any(f"/{n}" in value or f"{n}/" in value for n in LAYOUT_NAMES if "." in n or "_" in n):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {value!r}")
    assert offenders == []


def test_the_path_scan_sees_a_path_built_by_hand():
    tree = ast.parse('p = workdir / "eval" / f"{split}_metrics.json"\nq = os.path.join(w, "config.json")\n')
    assert {v for _, v in _path_building_strings(tree)} >= {"eval", "_metrics.json", "config.json"}


def test_trainer_holds_the_train_state_and_the_steps_only():
    tree = ast.parse((PACKAGE / "trainer.py").read_text())
    public = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")}
    assert public == {"TrainState", "create_train_state", "abstract_train_state", "make_train_step", "make_eval_step",
                      "training_loss", "augment_config", "guidance_weight_at", "initial_guidance_start",
                      "set_guidance_start"}
    assert not [n for n in tree.body if isinstance(n, ast.Assign)]  # no registries or constants of its own


def test_the_old_homes_of_moved_names_are_empty():
    from fundax import evaluation, loop, metrics, models, optimizer, parallel, trainer

    for name in ("make_mesh", "create_model", "make_optimizer", "LoopState", "gather_eval", "validation_metrics",
                 "activation_grid", "check_model"):
        assert not hasattr(trainer, name), name
    assert callable(parallel.make_mesh) and callable(models.create_model) and callable(optimizer.make_optimizer)
    assert callable(loop.LoopState) and callable(evaluation.gather_eval) and callable(metrics.validation_metrics)
    assert not hasattr(evaluation, "load_config") and not hasattr(evaluation, "restore_state")


def test_tensorboard_is_written_without_importing_pytorch_or_the_storage_client(tmp_path):
    # tensorboardX imports both when they are installed (seconds a process); the metric writer does not need them.
    code = (
        "import sys, importlib.util\n"
        "from fundax import loop\n"
        "before = {m for m in ('torch', 'google.cloud.storage') if m in sys.modules}\n"
        "writer = loop.summary_writer_class()(sys.argv[1])\n"
        "writer.add_scalar('loss', 0.5, 1)\n"
        "writer.close()\n"
        "after = {m for m in ('torch', 'google.cloud.storage') if m in sys.modules}\n"
        "assert after == before, (before, after)\n"
        "assert all(module is not None for module in sys.modules.values())  # nothing left blocked\n"
        "if importlib.util.find_spec('torch') is not None:\n"
        "    import torch  # still importable afterwards\n"
        "print(sorted(before))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"  # fundax.loop itself imports neither
    (events,) = tmp_path.glob("events.out.tfevents.*")
    assert b"loss" in events.read_bytes()


def test_the_compilation_cache_is_bounded_and_locked(tmp_path):
    # Unbounded, JAX writes cache entries in place without a lock: a second process could read one half written.
    code = (
        "import sys, jax, jax.numpy as jnp\n"
        "from fundax import parallel\n"
        "parallel.enable_compilation_cache(sys.argv[1])\n"
        "assert jax.config.jax_compilation_cache_max_size == parallel.COMPILATION_CACHE_MAX_BYTES > 0\n"
        "jax.jit(lambda x: x * 3 + 1)(jnp.arange(5.0)).block_until_ready()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    names = {p.name for p in tmp_path.iterdir()}
    assert ".lockfile" in names and any(name.endswith("-cache") for name in names), names
