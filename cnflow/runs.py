"""Run directories: atomic writes, device choice and the environment record of a run.

Every command that trains something writes a run directory through these functions, so a
crash never leaves a half-written checkpoint or metrics file behind.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from cnflow.distributed import world_size


def resolve_device(name: str) -> torch.device:
    """Turn ``"auto"``, ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``) into a device.

    Raises:
        ValueError: ``name`` is unknown, or CUDA is asked for but not available.
    """
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name in ("auto", "cuda") or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} was asked for, but CUDA is not available here; "
                             "use device='cpu' or 'auto'")
        if name.startswith("cuda:"):
            return torch.device(name)
        # Under torchrun each rank has its own GPU, chosen by cnflow.distributed.setup.
        return torch.device("cuda", torch.cuda.current_device()) if world_size() > 1 \
            else torch.device("cuda")
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


def _strict(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented, strict JSON (non-finite numbers as null), atomically."""
    text = json.dumps(_strict(obj), indent=2, sort_keys=True, default=str,
                      allow_nan=False) + "\n"
    _atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write a binary file, atomically."""
    _atomic_write(Path(path), lambda handle: handle.write(data))


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write a text file (a report, a CSV), atomically."""
    write_bytes(text.encode(), path)


# What a training run writes into its folder: a folder holding any of these holds a run.
RUN_FILES = ("config.json", "checkpoint.pt", "metrics.json")


class RunDirectoryError(ValueError):
    """A run folder holds another run, or another process is writing into it."""


@contextmanager
def run_directory(path: str | os.PathLike, *, resuming: bool = False,
                  overwrite: bool = False, files: Sequence[str] = RUN_FILES,
                  clear: Sequence[str] = ("*.png",), resumable: bool = True,
                  keep_lock: bool = True) -> Iterator[Path]:
    """Claim a run folder for one run: create it, refuse it if it holds another run, and hold
    an exclusive lock on it while the run writes.

    Args:
        path: the run folder.
        resuming: the run continues the one in this folder (its files are kept).
        overwrite: clear another run's files (``files`` and ``clear``) first.
        files: the names whose presence marks a run in the folder.
        clear: glob patterns (relative to the folder) of the other files of a run, which
            ``overwrite`` removes as well; the default is the figures.
        resumable: the command can continue a run, so a refusal suggests ``--resume``.
        keep_lock: leave the (unlocked) lock file ``.lock`` in the folder afterwards; with
            False it is removed, so the folder holds only the run's own files.

    Raises:
        RunDirectoryError: the folder holds another run (and neither ``resuming`` nor
            ``overwrite``), or another process holds its lock.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise RunDirectoryError(f"run folder {str(folder)!r} is a file")

    def refuse_another_run() -> None:
        if resuming or overwrite or not folder.is_dir():
            return
        held = [name for name in files if (folder / name).exists()]
        if held:
            advice = ("--out, continue it with --resume, or replace it with --overwrite"
                      if resumable else "--out or replace it with --overwrite")
            raise RunDirectoryError(
                f"{str(folder)!r} already holds a run ({', '.join(held)}); choose another "
                + advice)

    refuse_another_run()  # before anything is created
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / ".lock", remove=not keep_lock):
        # Again under the lock: a run that started at the same moment may have finished
        # into this folder while this one waited to create it.
        refuse_another_run()
        if not resuming and overwrite:
            for file in [*(folder / name for name in files),
                         *(file for pattern in clear for file in folder.glob(pattern))]:
                file.unlink(missing_ok=True)
        try:
            yield folder
        except BaseException:
            # A run that failed before writing anything leaves no empty folder behind (one
            # that wrote a checkpoint keeps it: it can be resumed). Still under the lock.
            if created and {p.name for p in folder.iterdir()} <= {".lock"}:
                (folder / ".lock").unlink(missing_ok=True)
                with suppress(OSError):
                    folder.rmdir()
            raise


@contextmanager
def _locked(path: Path, remove: bool) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created) for the block; ``remove``
    deletes the file at the end, while still locked."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the other checks still hold
        fcntl = None
    while True:
        with open(path, "w") as lock:
            if fcntl is not None:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RunDirectoryError(f"another process is writing a run into "
                                            f"{str(path.parent)!r}; wait for it or choose "
                                            "another --out") from None
                try:
                    current = os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino
                except FileNotFoundError:
                    current = False
                if not current:  # its run removed the file before letting go: lock anew
                    continue
            try:
                yield
            finally:
                if remove:
                    with suppress(OSError):
                        path.unlink()
            return


def relative_path(path: str | os.PathLike, start: str | os.PathLike) -> str:
    """``path`` relative to the folder ``start`` (a report's links to its figures)."""
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def failure_message(error: BaseException) -> str:
    """One line for the user about a run that failed: which file an OSError is about."""
    if isinstance(error, OSError) and error.filename is not None:
        reason = error.strerror or str(error)
        if isinstance(error, FileExistsError) and not os.path.isdir(error.filename):
            reason = "it is a file, not a folder"  # a folder for the output was to go there
        return f"cannot write {str(error.filename)!r}: {reason}"
    return str(error)


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
