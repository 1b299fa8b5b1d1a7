"""The report layer every experiment writes through: Markdown tables and the ``mean ±
spread`` of their cells, figures saved atomically, the memory meter of training steps, and
the record of a run: the command line that reproduces it, built from its config dataclass
(the inverse of :func:`cnflow.cli.options.config_options`, so a report's "regenerate" line
and the command's options cannot drift apart), and ``config.json`` in the report's folder.

Example:
    >>> print(markdown_table(["model", "NLL"], [["CNF", "1.03"], ["planar", "1.20"]]))
    | model | NLL |
    |---|---|
    | CNF | 1.03 |
    | planar | 1.20 |
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Settings:
    ...     widths: tuple[int, ...] = (2, 8)
    ...     lr: float = 0.003
    ...     sweep: bool = True
    >>> command_line(("cnflow", "demo"), Settings(), out="my results", overwrite=True)
    "cnflow demo --widths 2,8 --lr 0.003 --sweep --out 'my results' --overwrite"
    >>> command_line(("cnflow", "demo"), Settings(lr=0.01), changed_only=True, n=[1, 2])
    'cnflow demo --lr 0.01 --n 1 --n 2'
    >>> plus_minus(1.23456, 0.0123), plus_minus(1.5, float("nan"), digits=2)
    ('1.235 ± 0.012', '1.50')
"""

from __future__ import annotations

import dataclasses
import io
import math
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cnflow.runs import write_bytes, write_json

if TYPE_CHECKING:  # typing.Self needs Python 3.11; only type checkers read this
    from matplotlib.figure import Figure
    from typing_extensions import Self

__all__ = ["SavedTensorMemory", "command_line", "markdown_table", "mean_and_stderr",
           "plus_minus", "pyplot", "record_folder", "record_link", "report_beside",
           "save_figure", "state_bytes", "write_record"]


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (GitHub style) of ``header`` and ``rows``; cells go through
    ``str``, so format numbers before. Every row must have as many cells as the header."""
    header = [str(h) for h in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        cells = [str(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(f"row {i} has {len(cells)} cells for {len(header)} columns: "
                             f"{cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (figures are files; never open a
    window), with seaborn's paper theme; imported on first use, so the rest of this module
    stays light."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error (``scipy.stats.sem``; NaN for fewer than two values)."""
    from scipy.stats import sem

    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(sem(values)) if len(values) > 1 else math.nan


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> None:
    """Save ``fig`` as PNG atomically (a temporary file made safely, then renamed); close it."""
    plt = pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    write_bytes(buffer.getvalue(), path)


class _Saved:
    """A tensor saved for backward; tells the meter when autograd lets go of it."""

    __slots__ = ("key", "meter", "tensor")

    def __init__(self, meter: SavedTensorMemory, key: int, tensor: torch.Tensor) -> None:
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMemory:
    """Context manager measuring the bytes autograd keeps alive for the backward pass.

    Inside the context, every tensor that autograd saves for backward (in the forward pass,
    and in graphs built during the backward pass, as the adjoint's vector-Jacobian products
    do) goes through ``torch.autograd.graph.saved_tensors_hooks``. The meter counts each
    underlying storage once, however many saved tensors view it, from the moment it is first
    saved until autograd frees the last reference to it (when the graph is released after
    ``backward``). ``peak_bytes`` is the largest total reached. Storages of parameters (and
    of tensors passed as ``exclude``) are left out, since they are counted separately as
    model state.

    This is the memory that grows with depth: the activations kept for backpropagation. It
    does not count temporaries that are freed right away, or tensors that are alive but not
    saved for backward (such as the current batch); those do not grow with the number of
    solver steps or layers.

    Saved tensors come back detached from their graph, which is all a first-order backward
    pass needs; do not use the meter around code that differentiates through a backward pass
    (``create_graph=True``).

    Args:
        exclude: Tensors whose storages are not counted (typically ``model.parameters()``).
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._refs: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self.current_bytes = 0
        self.peak_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> Any:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._excluded or key == 0:
            return tensor
        if key in self._refs:
            self._refs[key] += 1
        else:
            self._refs[key] = 1
            self._sizes[key] = storage.nbytes()
            self.current_bytes += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        # Keep a detached view (same storage, no grad_fn): holding the tensor itself would
        # make a reference cycle node -> _Saved -> output tensor -> node for ops that save
        # their own output, and branches that backward never visits (e.g. the FSAL stage
        # after the last step) would then leak.
        return _Saved(self, key, tensor.detach())

    @staticmethod
    def _unpack(saved: Any) -> torch.Tensor:
        return saved.tensor if isinstance(saved, _Saved) else saved

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.current_bytes -= self._sizes.pop(key)

    def reset_peak(self) -> None:
        """Start a new peak from the bytes held now."""
        self.peak_bytes = self.current_bytes

    def __enter__(self) -> Self:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes of parameters, their gradients and the optimizer's state (e.g. Adam moments).

    Gradients are counted as one per trainable parameter, whether or not they exist yet.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    total = 2 * sum(p.numel() * p.element_size() for p in params)
    if optimizer is not None:
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
    return total


# --- the record of a run --------------------------------------------------------------

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _config_arguments(config: Any, changed_only: bool, skip: Sequence[str]) -> list[str]:
    """One option per field of the dataclass ``config``, spelt as ``config_options`` parses
    it: tuples comma-joined, booleans as ``--name`` / ``--no-name``, None left out (it is the
    default of every optional field here, and the command line has no spelling for it)."""
    arguments: list[str] = []
    for field in dataclasses.fields(config):
        if not field.init or field.name in skip:
            continue
        value = getattr(config, field.name)
        default = (field.default if field.default is not dataclasses.MISSING
                   else field.default_factory())  # type: ignore[misc]
        if value is None or (changed_only and value == default):
            continue
        if isinstance(value, bool):
            arguments.append(_flag(field.name if value else "no_" + field.name))
        elif isinstance(value, (tuple, list)):
            arguments += [_flag(field.name), ",".join(map(str, value))]
        else:
            # str() of a float is its shortest exact repr: the command reproduces the value.
            arguments += [_flag(field.name), str(value)]
    return arguments


def command_line(command: Sequence[str], config: Any | None, *, changed_only: bool = False,
                 skip: Sequence[str] = (), **options: Any) -> str:
    """The shell command ``command`` with the settings of ``config`` (a dataclass whose
    fields are the command's options; None for a command without one) and then ``options``.

    Every field is written (the line keeps its meaning when a default changes), or with
    ``changed_only`` those that differ from their defaults (the line stays as short as a
    user's); ``skip`` leaves fields out that the command spells another way. Of
    ``options``, ``True`` is a plain flag (``overwrite=True`` gives ``--overwrite``),
    ``False`` or None leaves the option out, a list repeats the option once per item, and
    anything else is ``--name value``."""
    arguments = [*command]
    if config is not None:
        arguments += _config_arguments(config, changed_only, skip)
    for name, value in options.items():
        if value is True:
            arguments.append(_flag(name))
        elif isinstance(value, list):
            for item in value:
                arguments += [_flag(name), str(item)]
        elif value is not None and value is not False:
            arguments += [_flag(name), str(value)]
    return shlex.join(arguments)


def plus_minus(mean: float, spread: float | None, digits: int = 3) -> str:
    """``mean ± spread`` at ``digits`` decimals; the mean alone where the spread is missing
    or not finite (one seed, a diverged fit)."""
    if spread is None or not math.isfinite(spread):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def record_folder(report: str | Path) -> Path:
    """The folder of a report's other files: ``results/NAME`` for ``results/NAME.md``."""
    return Path(report).with_suffix("")


def report_beside(folder: str | Path) -> Path:
    """The report of a folder of results: ``results/NAME.md`` for ``results/NAME``."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}.md"


def record_link(report: str | Path) -> str:
    """The link from ``report`` to its ``config.json``: ``NAME/config.json``."""
    return f"{record_folder(report).name}/config.json"


def write_record(config: Any, report: str | Path) -> Path:
    """Write every field of the dataclass ``config`` to ``config.json`` in the folder of
    ``report`` (:func:`record_folder`), atomically; return the file's path."""
    path = record_folder(report) / "config.json"
    write_json(dataclasses.asdict(config), path)
    return path
