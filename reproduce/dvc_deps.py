"""Check ``dvc.yaml``'s hand-written deps against the code each stage really runs (issue 16).

For every stage: its entry points are read off the command (``python -m lib.X``, ``python
reproduce/X.py``, every ``notebooks/*.ipynb`` it names); their imports of ``lib`` are followed
transitively (every ``import`` statement in a file, function-local ones included, relative imports
resolved, package ``__init__`` files counted); a file of that closure is covered when a dep names it
or a folder above it. Stage deps with ``${...}`` placeholders never name code, so they are ignored.

    .venv/bin/python reproduce/dvc_deps.py          # list every stage's uncovered files; exit 1 if any
    .venv/bin/python reproduce/dvc_deps.py --module-level   # only imports that run at import time
    .venv/bin/python reproduce/dvc_deps.py --cycles         # the import cycles inside lib/
    .venv/bin/python reproduce/dvc_deps.py --write          # rewrite dvc.yaml's code deps from the closures

While ``lib/`` has import cycles held together by function-local imports (issue 16), the full
closure of almost every stage is all of ``lib/``; ``--module-level`` is the lower bound.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Iterable

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODULE_CMD = re.compile(r"python -m (lib(?:\.\w+)*)")
SCRIPT_CMD = re.compile(r"python (reproduce/[\w/]+\.py)")
NOTEBOOK = re.compile(r"(notebooks/[\w./-]+\.ipynb)")
STAGES_CMD = re.compile(r"python -m lib\.stages (\w+)")
#: a script that loads another one by path (``ROOT / "reproduce" / "x.py"`` with importlib) runs its code too
LOADED_SCRIPT = re.compile(r'"reproduce"\s*/\s*"(\w+\.py)"')


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """``lib.a.b`` -> ``lib/a/b.py`` or ``lib/a/b/__init__.py`` (relative to ``root``), or None."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path.relative_to(root)
    return None


def _package_inits(name: str, root: Path) -> list[Path]:
    """Importing ``lib.a.b`` runs ``lib/__init__.py`` and ``lib/a/__init__.py`` first."""
    parts = name.split(".")
    return [p for i in range(1, len(parts)) if (p := module_file(".".join(parts[:i]), root)) is not None]


def _source_of(path: Path, root: Path) -> str:
    full = root / path
    if path.suffix == ".ipynb":
        cells = json.loads(full.read_text())["cells"]
        code = ("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        # IPython magics and shell escapes are not Python
        return "\n".join("\n".join(l for l in c.splitlines() if not l.lstrip().startswith(("%", "!"))) for c in code)
    return full.read_text()


def _package_of(path: Path) -> str:
    """The dotted package a module file's relative imports resolve against."""
    parts = list(path.with_suffix("").parts)
    return ".".join(parts[:-1]) if path.suffix == ".py" else ""


def _module_level(tree: ast.AST):
    """The nodes that run when the module is imported (not inside a function body)."""
    todo = list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def imported_modules(path: Path, root: Path = ROOT, local: bool = True) -> set[str]:
    """Every ``lib`` module that ``path`` (a .py or .ipynb) may import: anywhere in the file, or
    with ``local=False`` only at module level (what importing it runs for sure)."""
    tree = ast.parse(_source_of(path, root), filename=str(path))
    package = _package_of(path) if path.parts[0] == "lib" else ""
    found: set[str] = set()
    for node in (ast.walk(tree) if local or path.suffix == ".ipynb" else _module_level(tree)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)] if package else []
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            # ``from lib.a import b`` imports the submodule lib.a.b when there is one
            found.update(f"{mod}.{a.name}" for a in node.names if module_file(f"{mod}.{a.name}", root))
    return {m for m in found if m == "lib" or m.startswith("lib.")}


def import_closure(entries: Iterable[Path], root: Path = ROOT, local: bool = True) -> set[Path]:
    """Files under ``lib/`` reached from ``entries`` (the entries themselves included); ``local``:
    follow function-local imports too (see :func:`imported_modules`)."""
    todo, seen = list(entries), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for mod in imported_modules(path, root, local):
            for f in [module_file(mod, root), *_package_inits(mod, root)]:
                if f is not None and f not in seen:
                    todo.append(f)
    return seen


def module_graph(root: Path = ROOT, local: bool = True) -> dict[str, set[str]]:
    """``lib`` file -> the ``lib`` files it imports (``local``: function-local imports included)."""
    graph = {}
    for path in sorted((root / "lib").rglob("*.py")):
        rel = path.relative_to(root)
        # a module's own enclosing packages are initialised before it runs: not an edge
        own_inits = {(p / "__init__.py") for p in rel.parents}
        targets = set()
        for mod in imported_modules(rel, root, local):
            f = module_file(mod, root)
            if f is not None and f != rel and f not in own_inits:
                targets.add(f.as_posix())
        graph[rel.as_posix()] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one file (Tarjan): each is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def stage_entries(cmd: str, root: Path = ROOT) -> list[Path]:
    out = []
    for m in MODULE_CMD.finditer(cmd):
        f = module_file(m.group(1), root)
        # ``python -m lib.x`` runs lib/x/__main__.py for a package
        main = root / m.group(1).replace(".", "/") / "__main__.py"
        out += [p for p in (f, main.relative_to(root) if main.is_file() else None) if p is not None]
        out += _package_inits(m.group(1), root)
    scripts = [Path(m.group(1)) for m in SCRIPT_CMD.finditer(cmd)]
    for script in scripts:  # grows while loaded scripts are found
        if (root / script).is_file():
            for m in LOADED_SCRIPT.finditer((root / script).read_text(encoding="utf-8")):
                if Path("reproduce", m.group(1)) not in scripts:
                    scripts.append(Path("reproduce", m.group(1)))
    out += scripts
    out += [Path(m.group(1)) for m in NOTEBOOK.finditer(cmd)]
    # ``python -m lib.stages <stage>`` imports only that stage's module (or runs its notebook): the
    # table in lib/stages/__init__.py says which, read without importing any stage module
    for m in STAGES_CMD.finditer(cmd):
        out += [Path(p) for p in _stage_table(root).stage_entries(m.group(1))]
    return out


def _stage_table(root: Path):
    spec = importlib.util.spec_from_file_location("_stage_table", root / "lib" / "stages" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def covered(path: Path, deps: Iterable[str]) -> bool:
    p = path.as_posix()
    return any(p == d or p.startswith(d.rstrip("/") + "/") for d in deps)


def stages(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, dict]:
    """name -> {cmd, deps} of every stage (a foreach stage once, by its template)."""
    doc = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = {}
    for name, st in doc.items():
        body = st.get("do", st)
        cmd = body["cmd"] if isinstance(body["cmd"], str) else " ".join(body["cmd"])
        out[name] = {"cmd": " ".join(cmd.split()), "deps": [d for d in body.get("deps", []) if "${" not in d]}
    return out


def uncovered(dvc_yaml: Path = ROOT / "dvc.yaml", root: Path = ROOT, local: bool = True) -> dict[str, list[str]]:
    """stage -> sorted code files of its import closure that its deps do not cover."""
    result = {}
    for name, st in stages(dvc_yaml).items():
        closure = import_closure(stage_entries(st["cmd"], root), root, local)
        missing = sorted(p.as_posix() for p in closure if not covered(p, st["deps"]))
        if missing:
            result[name] = missing
    return result


def collapse(files: Iterable[Path], root: Path = ROOT) -> list[str]:
    """``files`` (under lib/) as dvc.yaml deps: a folder stands for its files when the closure holds
    at least half of them (every one, for the stage-specific folders stages/, pipelines/,
    evaluation/), so a deps list stays short and still covers everything the stage runs."""
    chosen = {Path(f).as_posix() for f in files}
    below_of = {}
    for p in sorted((root / "lib").rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        for parent in Path(rel).parents:
            if parent.as_posix().startswith("lib/"):
                below_of.setdefault(parent.as_posix(), set()).add(rel)
    out = set(chosen)
    for folder in sorted(below_of, key=lambda d: -d.count("/")):
        below = below_of[folder]
        share = 1.0 if folder.startswith(("lib/stages", "lib/pipelines", "lib/evaluation")) else 0.5
        if len(below & chosen) >= share * len(below) and below & chosen:
            out = {f for f in out if not f.startswith(folder + "/")} | {folder}
            chosen |= below
    return sorted(out)


def is_code(dep: str) -> bool:
    return dep == "lib" or dep.startswith(("lib/", "notebooks/")) or (dep.startswith("reproduce/") and dep.endswith(".py"))


def derived_deps(stage: dict, root: Path = ROOT) -> list[str]:
    """A stage's deps with its code part derived: the notebooks and scripts it runs, its import
    closure inside lib/ (:func:`collapse`), then its data deps as written."""
    entries = stage_entries(stage["cmd"], root)
    closure = import_closure(entries, root)
    code = collapse([p for p in closure if p.as_posix().startswith("lib/")], root)
    named = sorted({p.as_posix() for p in entries if not p.as_posix().startswith("lib/")}
                   | {d for d in stage["deps"] if is_code(d) and not d.startswith("lib")})
    return named + code + [d for d in stage["deps"] if not is_code(d)]


def _flow(key: str, items: list[str], indent: int, width: int = 112) -> list[str]:
    """``key: [a, b, ...]`` wrapped at ``width``, items quoted where YAML's flow style needs it."""
    pre = " " * indent + f"{key}: ["
    lines, cur = [], pre
    for i, item in enumerate(items):
        item = f'"{item}"' if any(ch in item for ch in "{}[],:") else item
        tok = item + (", " if i < len(items) - 1 else "]")
        if len(cur) + len(tok.rstrip()) > width and cur != pre:
            lines.append(cur.rstrip())
            cur = " " * len(pre) + tok
        else:
            cur += tok
    lines.append(cur.rstrip())
    return [line + "\n" for line in lines]


def write_deps(dvc_yaml: Path = ROOT / "dvc.yaml", root: Path = ROOT) -> list[str]:
    """Rewrite every stage's ``deps:`` (a flow list) with :func:`derived_deps`; the rest of the file,
    comments included, stays as it is. Returns the stages whose deps changed."""
    parsed = stages(dvc_yaml)
    raw = yaml.safe_load(dvc_yaml.read_text())["stages"]
    full = {name: st.get("do", st).get("deps", []) for name, st in raw.items()}  # ${...} data deps included
    lines = dvc_yaml.read_text().splitlines(keepends=True)
    out, changed, stage, i = [], [], None, 0
    while i < len(lines):
        line = lines[i]
        head = re.match(r"^  ([\w-]+):\s*$", line)
        if head:
            stage = head.group(1)
        m = re.match(r"^(\s+)deps:", line)
        if m and stage in parsed:
            indent = len(m.group(1))
            j = i + 1
            while j < len(lines) and lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) > indent:
                j += 1
            new = _flow("deps", derived_deps({**parsed[stage], "deps": full[stage]}, root), indent)
            if new != lines[i:j]:
                changed.append(stage)
            out += new
            i = j
            continue
        out.append(line)
        i += 1
    dvc_yaml.write_text("".join(out))
    return changed


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module-level", action="store_true",
                    help="follow only module-level imports (a lower bound while function-local imports remain)")
    ap.add_argument("--cycles", action="store_true", help="list the import cycles inside lib/ instead")
    ap.add_argument("--write", action="store_true",
                    help="rewrite dvc.yaml's deps: each stage's code deps derived from its import closure")
    args = ap.parse_args(argv)
    if args.write:
        changed = write_deps()
        print(f"dvc.yaml: deps of {len(changed)} stage(s) rewritten" + (f": {', '.join(changed)}" if changed else ""))
        return 0
    if args.cycles:
        cycles = import_cycles(module_graph(local=not args.module_level))
        for comp in cycles:
            print(f"cycle of {len(comp)} files: " + ", ".join(comp))
        print(f"{len(cycles)} import cycle(s) in lib/")
        return 1 if cycles else 0
    gaps = uncovered(local=not args.module_level)
    for name, files in gaps.items():
        print(f"{name}: {len(files)} file(s) of its code not in its deps")
        for f in files:
            print(f"  - {f}")
    if not gaps:
        print("every stage's deps cover the code it imports")
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main())
