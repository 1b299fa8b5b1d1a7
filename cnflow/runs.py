"""Run directories: atomic writes, device choice and the environment record of a run.

Every command that trains something writes a run directory through these functions, so a
crash never leaves a half-written checkpoint or metrics file behind.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch


def resolve_device(name: str) -> torch.device:
    """Turn ``"auto"``, ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``) into a device.

    Raises:
        ValueError: ``name`` is unknown, or CUDA is asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} was asked for, but CUDA is not available here; "
                             "use device='cpu' or 'auto'")
        return torch.device(name)
    raise ValueError(f"device={name!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            # On disk before the rename, so a crash cannot leave an empty file at ``path``.
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); give it the usual permissions instead.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a partial file at ``path``."""
    _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    _atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write a binary file, atomically."""
    _atomic_write(Path(path), lambda handle: handle.write(data))


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file (a report, a CSV), atomically."""
    write_bytes(text.encode(), path)


def environment() -> dict[str, str]:
    """Versions and hardware that a metrics file should record."""
    import numpy

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu_threads": str(torch.get_num_threads()),
    }
    from importlib.metadata import PackageNotFoundError, version

    try:
        info["cnflow"] = version("cnflow")
    except PackageNotFoundError:  # running from a source tree
        info["cnflow"] = "source"
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info
