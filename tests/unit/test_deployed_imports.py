"""What the functions deploy: nothing reachable from functions/main.py imports genjobs.ops."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ROOT / "functions"
# Imported only by operator tools: a deployed function must never need them.
OPS_ONLY = ("genjobs.ops", "tqdm")


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    for candidate in (
        FUNCTIONS.joinpath(*parts, "__init__.py"),
        FUNCTIONS.joinpath(*parts[:-1], parts[-1] + ".py"),
    ):
        if candidate.exists():
            return candidate
    return None


def _imports(path: Path, package: str) -> set[str]:
    """Every module `path` imports anywhere (lazy imports inside functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def reachable_from_main() -> set[str]:
    """Every module name imported, transitively, by main.py and the genjobs modules it reaches."""
    seen: set[str] = set()
    pending = [("main", FUNCTIONS / "main.py")]
    while pending:
        name, path = pending.pop()
        is_package = path.name == "__init__.py"
        for imported in _imports(path, name if is_package else name.rpartition(".")[0]):
            if imported in seen:
                continue
            seen.add(imported)
            module = _module_file(imported) if imported.startswith("genjobs") else None
            if module is not None:
                pending.append((imported, module))
    return seen


def test_no_module_reachable_from_main_imports_operator_tools() -> None:
    reached = reachable_from_main()
    assert {
        "genjobs.worker",
        "genjobs.sweeper",
        "genjobs.dead_letter",
        "genjobs.api.app",
    } <= reached
    leaks = sorted(m for m in reached if m.startswith(OPS_ONLY))
    assert not leaks, f"deployed code imports operator-only modules: {leaks}"


def test_importing_every_deployed_module_loads_no_operator_tool() -> None:
    """The same at run time: import main and every genjobs module it reaches, then look."""
    deployed = sorted(m for m in reachable_from_main() if _module_file(m) is not None)
    script = (
        "import importlib, json, sys\n"
        f"for name in ['main', *{deployed!r}]: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=FUNCTIONS,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(FUNCTIONS)},
    )
    loaded = json.loads(result.stdout)
    assert "genjobs.worker" in loaded and "genjobs.sweeper" in loaded
    assert not [m for m in loaded if m.startswith(OPS_ONLY)]


def test_terraform_leaves_operator_tools_out_of_the_source_archive() -> None:
    locals_tf = (ROOT / "infra" / "locals.tf").read_text()
    (line,) = [line for line in locals_tf.splitlines() if line.strip().startswith("source_files")]
    assert "setsubtract(" in line and 'fileset(local.functions_dir, "genjobs/ops/**")' in line
    assert "genjobs/sql/*.sql" in locals_tf


def _deployed_distributions() -> set[str]:
    """requirements.txt's distributions and everything they depend on (extras left out)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = (ROOT / "requirements.txt").read_text().splitlines()
    pending = [Requirement(line.split("#")[0]).name for line in lines if line.split("#")[0].strip()]
    closure: set[str] = set()
    while pending:
        name = canonicalize_name(pending.pop())
        if name in closure:
            continue
        closure.add(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return closure


def test_every_library_the_deployed_code_imports_is_installed_by_requirements_txt() -> None:
    """A dev-only package (installed here by requirements-dev.txt) is missing in the cloud."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    deployed = _deployed_distributions()
    providers = metadata.packages_distributions()
    # pgserver: the embedded Postgres of local runs without DATABASE_URL (a clear error if absent).
    ours = {"main", "genjobs", "__future__", "pgserver"}
    libraries = {
        name.split(".")[0] for name in reachable_from_main() if name.split(".")[0] not in ours
    } - set(sys.stdlib_module_names)
    missing = sorted(
        library
        for library in libraries
        if not any(canonicalize_name(d) in deployed for d in providers.get(library, []))
    )
    assert not missing, f"deployed code imports what requirements.txt does not install: {missing}"
