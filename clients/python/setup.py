"""Build hook: generates the pas.v1 gRPC stubs from the repository's proto/ at wheel build time.

Nothing generated is committed. `build_py` runs grpc_tools.protoc (a build requirement, see
pyproject.toml) on every proto/pas/v1/*.proto and writes the modules, with .pyi type stubs, into
the build tree as the top-level package `pas.v1` (the protobuf package name, which the generated
imports use). `sdist` copies the .proto files into the source distribution so it builds alone.

Where the .proto files are looked for, first match wins:
  $PAS_PROTO_DIR, <this dir>/proto (an sdist), <this dir>/../../proto (the repository).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent


def proto_root() -> Path:
    """The directory holding pas/v1/*.proto; a clear error when there is none."""
    candidates = [HERE / "proto", HERE.parent.parent / "proto"]
    if os.environ.get("PAS_PROTO_DIR"):
        candidates.insert(0, Path(os.environ["PAS_PROTO_DIR"]))
    for root in candidates:
        if sorted((root / "pas" / "v1").glob("*.proto")):
            return root
    raise SystemExit(
        "pas-client: no pas/v1/*.proto found in " + ", ".join(str(c) for c in candidates)
    )


def generate(out: Path) -> list[Path]:
    """Runs protoc on every pas/v1/*.proto into `out`; returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    root = proto_root()
    protos = sorted(str(p.relative_to(root)) for p in (root / "pas" / "v1").glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"pas-client: protoc failed with exit code {code}: {' '.join(args)}")
    package = out / "pas" / "v1"
    # `pas` stays a namespace package; `pas.v1` is a regular one, typed.
    (package / "__init__.py").write_text(
        '"""pas.v1 messages and stubs, generated from proto/."""\n'
    )
    (package / "py.typed").write_text("")
    return sorted(package.iterdir())


class BuildWithStubs(build_py):
    """build_py that also generates pas.v1 into the build directory."""

    def run(self) -> None:
        super().run()
        written = generate(Path(self.build_lib))
        self.announce(f"pas-client: generated {len(written)} files into pas/v1", level=2)


class SdistWithProtos(sdist):
    """sdist that carries the .proto files, so the source distribution builds on its own."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        root = proto_root()
        target = Path(base_dir) / "proto" / "pas" / "v1"
        target.mkdir(parents=True, exist_ok=True)
        for proto in (root / "pas" / "v1").glob("*.proto"):
            shutil.copy2(proto, target / proto.name)


setup(cmdclass={"build_py": BuildWithStubs, "sdist": SdistWithProtos})
