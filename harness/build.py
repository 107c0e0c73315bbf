"""Building the guest kernel, once per machine even under pytest-xdist (a file lock serialises make)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from harness.errors import BuildError

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO_ROOT / "driver_src"
BUILD_DIR = REPO_ROOT / "vm_images" / "build"
KERNEL = BUILD_DIR / "mmhil-kernel.elf"
BUILD_ID = BUILD_DIR / "mmhil-kernel.build-id"


@dataclass(frozen=True)
class KernelImage:
    path: Path
    build_id: str


def build_kernel(timeout: float = 600.0) -> KernelImage:
    """Run `make -C driver_src` (a no-op when the image is current) and return the image."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(BUILD_DIR / ".build.lock"), timeout=timeout):
            result = subprocess.run(
                ["make", "-C", str(SOURCE_DIR), "-j2", "--no-print-directory"],
                capture_output=True, text=True, timeout=timeout,
            )
    except Timeout as exc:
        raise BuildError(f"waited {timeout:g} s for another build of the guest kernel to finish") from exc
    except FileNotFoundError as exc:
        raise BuildError("make is not installed: run the README's set-up command") from exc
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"building the guest kernel took longer than {timeout:g} s") from exc
    if result.returncode != 0:
        raise BuildError(f"guest kernel build failed (make exit {result.returncode}):\n"
                         f"{result.stdout[-4000:]}{result.stderr[-4000:]}")
    return current_kernel()


def current_kernel() -> KernelImage:
    if not KERNEL.is_file() or not BUILD_ID.is_file():
        raise BuildError(f"no guest kernel at {KERNEL}: run `mmhil build`")
    return KernelImage(KERNEL, BUILD_ID.read_text(encoding="ascii").strip())
