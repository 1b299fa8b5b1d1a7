"""Section 5 of Chen et al. 2018: latent ODE versus RNN on irregularly sampled spirals.

Both models condition on the same ``n`` irregular observations from the first 100 points of a
spiral and are trained on the same information: by default the observed points of the
training spirals alone, the paper's protocol; ``train_future=True`` adds the 100 following
points of the training spirals (noisy), an easier task. The latent ODE maximises the ELBO;
the RNN minimises the squared error of its one-step predictions of the observed points (and,
with ``train_future``, of its free-running predictions of the 100 targets).
Both train through :func:`cnflow.training.fit`; the predictive RMSE on the 100 points after
the window is the analog of the paper's Table 2.

Modules: :mod:`.config` (the settings and the command that reruns them), :mod:`.data` (the
split and the observations), :mod:`.baselines` (the RNN), :mod:`.train` (the objectives and
the training), :mod:`.evaluate` (the RMSE), :mod:`.figures`, :mod:`.report` (the Markdown)
and :mod:`.experiment` (the entry point, :func:`run`, that ``cnflow latent`` calls).
"""

from cnflow.experiments.latent_ode.baselines import RNNBaseline, RNNObjective, rnn_loss
from cnflow.experiments.latent_ode.config import (
    MAX_SEED,
    MODEL_CHOICES,
    MODELS,
    PAPER_RMSE,
    WINDOW,
    LatentConfig,
    command_line,
    models_of,
)
from cnflow.experiments.latent_ode.data import Split, make_splits
from cnflow.experiments.latent_ode.evaluate import evaluate, predict, rmse
from cnflow.experiments.latent_ode.experiment import run
from cnflow.experiments.latent_ode.report import markdown_report, write_markdown
from cnflow.experiments.latent_ode.train import (
    ElboObjective,
    TrainResult,
    latent_batch,
    new_model,
    train_config,
    train_model,
)

__all__ = [
    "MAX_SEED", "MODELS", "MODEL_CHOICES", "PAPER_RMSE", "WINDOW", "ElboObjective",
    "LatentConfig", "RNNBaseline", "RNNObjective", "Split", "TrainResult", "command_line",
    "evaluate", "latent_batch", "make_splits", "markdown_report", "models_of", "new_model",
    "predict", "rmse", "rnn_loss", "run", "train_config", "train_model", "write_markdown",
]
