#!/usr/bin/env python3
"""Build the Blender extension: ``python build.py`` writes ``dist/metricgold-VERSION.zip``.

The zip is what Blender 4.2+ installs (Preferences > Get Extensions > Install from Disk, or
``blender --command extension install-file -r user_default dist/metricgold-VERSION.zip``)::

    blender_manifest.toml
    __init__.py, operators.py, ...            the add-on (metricgold_blender/*.py)
    _vendor/metricgold_engine/__init__.py     the engine's version
    _vendor/metricgold_engine/core/           the engine's torch-free ground floor, whole (client, protocol,
                                              geometry, depth files, errors, ...), imported relatively
    engine_wheel/metricgold-VERSION-py3-none-any.whl
                                              the whole engine as a wheel (with the demo model), which the add-on's
                                              *Set up worker* installs into the worker's environment; Blender never
                                              imports it (it is not in the manifest's ``wheels``)

Nothing else goes in: no tests, no caches. Entries are sorted and time-stamped from the
manifest's version only, so the same sources give the same bytes. The zip is checked with ``blender --command extension
validate`` (a ``blender`` on PATH or ``--blender``; else the same command through ``bpy``, Blender as a module).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON_DIR = ROOT / "metricgold_blender"
ENGINE_DIR = ROOT / "metricgold_engine"
MANIFEST = ROOT / "blender_manifest.toml"

#: The engine's ground floor (torch-free, Pillow-free), vendored whole into the extension.
CORE_DIR = ENGINE_DIR / "core"
VENDOR_PREFIX = "_vendor/metricgold_engine/"
#: The engine's wheel inside the zip (see metricgold_blender/engine.py, which looks for it there).
WHEEL_DIR = "engine_wheel/"
#: What the wheel is built from (copied to a temporary folder first: an in-tree build would leave build/ and
#: *.egg-info behind, and a stale build/ could put deleted modules into the wheel).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "metricgold_engine", "trainer", "metricgold_blender")
#: Modules that must never be imported at module level by anything in the zip (Blender's Python lacks them).
FORBIDDEN_TOP_LEVEL = {"torch", "diffusers", "transformers", "accelerate", "safetensors", "PIL", "OpenEXR", "tqdm"}
REQUIRED_MANIFEST_KEYS = ("schema_version", "id", "version", "name", "tagline", "maintainer", "type",
                          "blender_version_min", "license")
#: A fixed time stamp (1980-01-01, the zip format's epoch) for reproducible archives.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class BuildError(RuntimeError):
    pass


def read_manifest(path: Path = MANIFEST) -> dict:
    try:
        manifest = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise BuildError(f"{path}: cannot read the manifest ({e})") from e
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise BuildError(f"{path}: missing {', '.join(missing)}")
    if manifest["type"] != "add-on":
        raise BuildError(f"{path}: type must be \"add-on\", got {manifest['type']!r}")
    return manifest


def engine_version() -> str:
    text = (ENGINE_DIR / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
    if not match:
        raise BuildError(f"{ENGINE_DIR / '__init__.py'}: no __version__")
    return match.group(1)


def check_imports(name: str, source: str) -> None:
    """Refuse module-level imports Blender's Python cannot satisfy (function-level, lazy imports are fine)."""
    tree = ast.parse(source, filename=name)
    for node in tree.body:
        nodes: list[ast.AST] = [node]
        if isinstance(node, ast.If | ast.Try):  # module-level `if`/`try` blocks run at import, too
            nodes = list(ast.walk(node))
        for n in nodes:
            if isinstance(n, ast.Import):
                mods = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                mods = [n.module]
            else:
                continue
            bad = [m for m in mods if m.split(".")[0] in FORBIDDEN_TOP_LEVEL]
            if bad:
                raise BuildError(f"{name}: imports {bad[0]} at module level; Blender's Python does not have it")


def check_vendored_imports(name: str, source: str, available: set[str]) -> None:
    """A vendored core module may import (relatively, within core) only other core modules: nothing else of the
    engine is in the zip, and an absolute ``metricgold_engine`` import would not find the vendored copy."""
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, ast.ImportFrom) and node.level > 1:
            raise BuildError(f"{name}: imports from outside metricgold_engine.core ({'.' * node.level}"
                             f"{node.module or ''}); the ground floor must stand on its own")
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            wanted = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            missing = [w for w in wanted if w not in available]
            if missing:
                raise BuildError(f"{name} imports .{missing[0]}, which is not a module of metricgold_engine.core")
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                   else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
        if any(m.split(".")[0] == "metricgold_engine" for m in modules):
            raise BuildError(f"{name}: 'metricgold_engine' imported by absolute name cannot be vendored; use a "
                             "relative import")


def build_engine_wheel(out_dir: Path) -> Path:
    """``pip wheel --no-deps`` of a clean copy of the sources: ``out_dir/metricgold-VERSION-py3-none-any.whl``.

    SOURCE_DATE_EPOCH fixes the wheel's time stamps, so the same sources give the same bytes.
    """
    import importlib.util

    version = engine_version()
    with tempfile.TemporaryDirectory(prefix="metricgold-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".mypy_cache")
        for name in WHEEL_SOURCES:
            path = ROOT / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=ignore)
            else:
                shutil.copy2(path, src / name)
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(Path(tmp) / "out"), str(src)]
        if importlib.util.find_spec("setuptools") is not None:
            argv.insert(4, "--no-build-isolation")  # offline and quicker; else pip fetches setuptools for it
        env = dict(os.environ, SOURCE_DATE_EPOCH="315532800", PIP_DISABLE_PIP_VERSION_CHECK="1")
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        wheels = sorted((Path(tmp) / "out").glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise BuildError(f"building the engine wheel failed ({' '.join(argv)}):\n{proc.stdout}{proc.stderr}")
        expected = f"metricgold-{version}-py3-none-any.whl"
        if wheels[0].name != expected:
            raise BuildError(f"the engine wheel is {wheels[0].name}, expected {expected}")
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / expected
        shutil.move(str(wheels[0]), target)
    return target


def zip_entries() -> list[tuple[str, bytes]]:
    """(archive name, bytes) of everything the extension holds, sorted."""
    manifest = read_manifest()
    version = engine_version()
    if manifest["version"] != version:
        raise BuildError(
            f"{MANIFEST}: version {manifest['version']} differs from metricgold_engine.__version__ {version}; "
            "the add-on's client and the worker must come from the same release")
    entries: dict[str, bytes] = {"blender_manifest.toml": MANIFEST.read_bytes()}
    for path in sorted(ADDON_DIR.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        check_imports(path.name, source)
        entries[path.name] = source.encode("utf-8")
    if "__init__.py" not in entries:
        raise BuildError(f"{ADDON_DIR}: no __init__.py")
    entries["_vendor/__init__.py"] = b'"""Third-party and engine modules bundled with the extension."""\n'
    entries[VENDOR_PREFIX + "__init__.py"] = (
        '"""The torch-free ground floor of MetricGold\'s engine, vendored into the Blender extension by build.py."""\n'
        f'\n__version__ = "{version}"\n'
    ).encode("utf-8")
    core_modules = sorted(CORE_DIR.glob("*.py"))
    available = {path.stem for path in core_modules}
    for path in core_modules:
        source = path.read_text(encoding="utf-8")
        check_imports(f"core/{path.name}", source)
        check_vendored_imports(f"core/{path.name}", source, available)
        entries[VENDOR_PREFIX + "core/" + path.name] = source.encode("utf-8")
    with tempfile.TemporaryDirectory(prefix="metricgold-wheel-out-") as tmp:
        wheel = build_engine_wheel(Path(tmp))
        entries[WHEEL_DIR + wheel.name] = wheel.read_bytes()
    return sorted(entries.items())


def build(out_dir: Path = ROOT / "dist") -> Path:
    manifest = read_manifest()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    entries = zip_entries()
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=f".{target.stem}.", suffix=".tmp.zip")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
                # a wheel is a zip already: stored as it is
                info.compress_type = zipfile.ZIP_STORED if name.endswith(".whl") else zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
        os.replace(tmp_name, target)  # never a half-written zip at the target path
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


_VALIDATE_WITH_BPY = (
    "import sys, bpy\n"
    "from bl_pkg import bl_extension_cli\n"  # what `blender --command extension ...` runs
    "sys.exit(bl_extension_cli.cli_extension_handler(['validate', sys.argv[1]]))\n"
)


def validate_with_blender(zip_path: Path, blender: str | None = None) -> bool | None:
    """``blender --command extension validate`` on the zip; None when neither a blender binary nor bpy exists.

    Without a binary, the same command runs through ``bpy`` (Blender as a Python module) in a child process.
    """
    blender = blender or shutil.which("blender")
    if blender:
        argv = [blender, "--factory-startup", "--command", "extension", "validate", str(zip_path)]
    else:
        import importlib.util

        if importlib.util.find_spec("bpy") is None:
            return None
        argv = [sys.executable, "-c", _VALIDATE_WITH_BPY, str(zip_path)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--blender", help="blender binary for `extension validate` (default: blender on PATH)")
    args = parser.parse_args(argv)
    try:
        path = build(args.out)
    except BuildError as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, with the engine wheel for the worker's set-up)")
    valid = validate_with_blender(path, args.blender)
    if valid is None:
        print("neither a blender binary nor bpy: skipped `blender --command extension validate`")
    elif not valid:
        print("build.py: error: blender --command extension validate failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
