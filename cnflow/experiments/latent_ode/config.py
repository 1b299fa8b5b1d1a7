"""The settings of the latent-ODE experiment, their checks, and the command that reruns them.

Every setting of a run is a field of :class:`LatentConfig`: the ``cnflow latent`` options are
generated from it, ``config.json`` records it, and :func:`command_line` spells it back as the
command that regenerates the run.

Example:
    >>> LatentConfig(n_obs=(30,), iterations=10).n_obs
    (30,)
    >>> LatentConfig(n_obs=(101,))
    Traceback (most recent call last):
    ...
    ValueError: n_obs entries must be an integer in [1, 100], got 101
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cnflow import report as reporting
from cnflow.data.spirals import NOISE_STD
from cnflow.models.latent_ode import DEFAULT_GRADIENT, GRADIENTS
from cnflow.runs import resolve_device
from cnflow.validation import check_choice, check_choices, check_float, check_int, check_ints

MODELS = ("latent-ode", "rnn")
#: The command line's ``--model`` takes one model or both.
BOTH = "both"
MODEL_CHOICES = (*MODELS, BOTH)
#: Points in the observation window (and targets after it), as in the paper.
WINDOW = 100
#: Largest seed. A seed also seeds derived generators: the test spirals' (the seed plus 2**32),
#: the observation subsets (a multiple of the seed plus n_obs) and the training loop's
#: shuffling (``cnflow.training.fit`` multiplies the seed by about 10**6 and adds the epoch);
#: below 2**32 all of them stay far from the 2**64 limit whatever the number of steps.
MAX_SEED = 2**32 - 1
#: Predictive RMSE of the paper's Table 2, by model and number of observations.
PAPER_RMSE = {
    "rnn": {30: 0.3937, 50: 0.3202, 100: 0.1813},
    "latent-ode": {30: 0.1642, 50: 0.1502, 100: 0.1346},
}
# Fields that the command line spells as repeated options instead of generated ones.
LIST_FIELDS = ("models", "n_obs")


@dataclass(frozen=True)
class LatentConfig:
    """Settings of one latent-ODE / RNN experiment (bad values raise ValueError naming them).

    Attributes:
        models: the models to train, a subset of ``MODELS`` (kept in that order).
        n_obs: observation counts per spiral, each in [1, 100]; one pair of runs per count.
        n_spirals: spirals generated (train and test together).
        n_train: how many of them are used for training; the rest are the test set.
        noise_std: observation noise of the generator (also the likelihood's std).
        seeds: one run of every model and count per seed; a seed sets the data, the
            observation subsets, the initialisation and the training loop's draws.
        iterations: Adam steps of the latent ODE.
        rnn_iterations: Adam steps of the RNN.
        batch_size: spirals per step.
        lr: initial learning rate (decays geometrically to lr * final_lr_factor).
        final_lr_factor: learning rate at the end of the run relative to the first, in (0, 1].
        time_subsample: random grid times (besides the window's first and last) at which the
            latent ODE's ELBO is estimated each step; 0 uses the whole grid; at most 98, or 198
            with --train-future.
        rtol: relative tolerance of the latent ODE solves.
        atol: absolute tolerance of the latent ODE solves.
        gradient: how the latent ODE is differentiated: adjoint, direct or checkpoint.
        poisson: add the Poisson-process likelihood of the observation times.
        train_future: train on the training spirals' 100 points after the window as well, an
            easier task than the paper's; off (the default), the paper's protocol: train on the
            window only, extrapolate times no spiral's own training saw.
        eval_every: record the test extrapolation RMSE every this many steps (and after the
            last), for the learning curves; 0 records nothing along the way.
        device: auto, cpu, cuda or cuda:N.
    """

    models: tuple[str, ...] = MODELS
    n_obs: tuple[int, ...] = (30, 50, 100)
    n_spirals: int = 1000
    n_train: int = 800
    noise_std: float = NOISE_STD
    seeds: tuple[int, ...] = (0,)
    iterations: int = 2500
    rnn_iterations: int = 2500
    batch_size: int = 200
    lr: float = 1e-2
    final_lr_factor: float = 0.1
    # The whole grid: on the window alone, 30 random times leave about 30 % of a spiral's
    # observations in each step's ELBO, and that noise costs more than the cheaper solves save
    # (n = 100, seed 0, window only: extrapolation RMSE 0.149 with 30 times, 0.036 with all).
    time_subsample: int = 0
    rtol: float = 1e-3
    atol: float = 1e-4
    gradient: str = DEFAULT_GRADIENT
    poisson: bool = False
    train_future: bool = False
    eval_every: int = 100
    device: str = "cpu"

    def __post_init__(self) -> None:
        chosen = check_choices("models", self.models, MODELS)
        # Frozen: the normalised lists are set through object.__setattr__. The models keep
        # MODELS's order, so every report and figure lists them alike.
        object.__setattr__(self, "models", tuple(m for m in MODELS if m in chosen))
        # Drawn without replacement from the window.
        object.__setattr__(self, "n_obs", check_ints("n_obs", self.n_obs, maximum=WINDOW))
        # Both sets hold both directions, so each has at least two spirals.
        check_int("n_spirals", self.n_spirals, minimum=4)
        check_int("n_train", self.n_train, minimum=2, maximum=self.n_spirals - 2)
        check_float("noise_std", self.noise_std)
        object.__setattr__(self, "seeds", check_ints("seeds", self.seeds, minimum=0,
                                                     maximum=MAX_SEED))
        for name in ("iterations", "rnn_iterations", "batch_size"):
            check_int(name, getattr(self, name))
        check_float("lr", self.lr)
        check_float("final_lr_factor", self.final_lr_factor, maximum=1)
        # The ELBO's grid is the window (and the points after it with train_future), less the
        # window's first and last time, which are always included.
        most = (2 * WINDOW if self.train_future else WINDOW) - 2
        check_int("time_subsample", self.time_subsample, minimum=0, maximum=most)
        check_float("rtol", self.rtol)
        check_float("atol", self.atol)
        check_choice("gradient", self.gradient, GRADIENTS)
        for name in ("poisson", "train_future"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_int("eval_every", self.eval_every, minimum=0)
        resolve_device(self.device)  # its ValueError names the device

    def iterations_of(self, model: str) -> int:
        """The number of training steps of ``model`` (one of :data:`MODELS`)."""
        return self.iterations if check_choice("model", model, MODELS) == "latent-ode" \
            else self.rnn_iterations


def models_of(choice: str) -> tuple[str, ...]:
    """The models of a ``--model`` choice (one of :data:`MODEL_CHOICES`)."""
    return MODELS if check_choice("model", choice, MODEL_CHOICES) == BOTH else (choice,)


def model_choice(models: tuple[str, ...]) -> str:
    """The ``--model`` choice of the (normalised) models of a config."""
    return BOTH if tuple(models) == MODELS else models[0]


def command_line(config: LatentConfig, out_dir: str | Path, *,
                 md_path: str | Path | None = None, figures: bool = True,
                 threads: int = 1) -> str:
    """The full, explicit ``cnflow latent`` command that reproduces a run: every field of
    ``config`` spelled out as the option generated from it (``--field-name value``,
    ``--flag``/``--no-flag``), so later changes of a default do not change its meaning.

    Example:
        >>> command_line(LatentConfig(models=("rnn",), n_obs=(30,)), "out").split()[:6]
        ['cnflow', 'latent', '--model', 'rnn', '--n-obs', '30']
    """
    command = ["cnflow", "latent", "--model", model_choice(config.models)]
    for n in config.n_obs:
        command += ["--n-obs", str(n)]
    # Rerunning it replaces these very results, which a run folder refuses without
    # --overwrite.
    return reporting.command_line(
        command, config, skip=LIST_FIELDS, threads=threads, out=Path(out_dir).as_posix(),
        md=Path(md_path).as_posix() if md_path is not None else None,
        no_figures=not figures, overwrite=True)
