"""The exact NLL of rows under a flow, shared out over the processes under ``torchrun``."""

from __future__ import annotations

import numpy as np
import torch

from cnflow import distributed
from cnflow.flows.base import Flow
from cnflow.solvers import ODESolverError
from cnflow.training.config import Rows
from cnflow.training.data import flow_rows


@torch.no_grad()
def evaluate(flow: Flow, rows: Rows, batch: int = 10000) -> tuple[np.ndarray, int]:
    """Per-row NLL of ``rows`` (``x`` or ``(x, context)``) in eval mode (exact trace, eval
    tolerance) and the forward NFE spent.

    Under ``torchrun`` this is a collective: each rank evaluates its share of the rows and
    every rank gets all of them back (NFE summed over the ranks); a solver failure on any
    rank raises :class:`~cnflow.solvers.ODESolverError` on every rank.
    """
    x, context = flow_rows(flow, rows, "rows")
    part = distributed.shard(len(x))
    x = x[part]
    context = None if context is None else context[part]
    was_training = flow.training
    flow.eval()
    nll, nfe, failure = [], 0, None
    try:
        for start in range(0, len(x), batch):
            chunk = x[start: start + batch]
            if context is None:
                nll.append(-flow.log_prob(chunk))
            else:
                nll.append(-flow.log_prob(chunk, context[start: start + batch]))
            stats = getattr(flow, "last_stats", None)
            nfe += stats.forward.nfe if stats is not None else 0
    except ODESolverError as error:
        if distributed.world_size() == 1:
            raise
        failure = str(error)  # raised below on every rank, so none waits for this one
    finally:
        flow.train(was_training)
    values = torch.cat(nll).double().cpu().numpy() if nll else np.zeros(0)
    if distributed.world_size() > 1:
        gathered = distributed.all_gather((values, nfe, failure))
        failures = [f for _, _, f in gathered if f is not None]
        if failures:
            raise ODESolverError(failures[0])
        values = np.concatenate([v for v, _, _ in gathered])
        nfe = sum(n for _, n, _ in gathered)
    return values, nfe
