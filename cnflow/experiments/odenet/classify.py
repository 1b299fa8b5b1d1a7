"""The settings of one ``cnflow classify`` run: which classifier, on which data, trained how.

:class:`ClassifyConfig` is the one source of the command's defaults and checks (its options
are generated from it); :meth:`ClassifyConfig.model_kwargs` gives
:func:`~cnflow.experiments.odenet.baselines.build_classifier` its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnflow.data.mnist import ClassificationData, check_data_name
from cnflow.experiments.odenet.baselines import MODEL_NAMES
from cnflow.experiments.odenet.train import classifier_training
from cnflow.runs import resolve_device
from cnflow.solvers import ADAPTIVE_METHODS, FIXED_STEP_METHODS, GRADIENT_MODES
from cnflow.training import TrainConfig
from cnflow.validation import check_choice, check_float, check_int

__all__ = ["SOLVER_MODELS", "ClassifyConfig"]

#: The classifiers that integrate an ODE (the solver settings apply to them only).
SOLVER_MODELS = ("rknet", "odenet")


@dataclass
class ClassifyConfig:
    """Train and evaluate one Section 3 classifier.

    Attributes:
        model: classifier: mlp, resnet, rknet or odenet.
        data: offline: the packaged MNIST test set split 8000/2000, stratified (not full
            MNIST); digits: sklearn's 8x8 digits; idx: full MNIST from data_dir.
        data_dir: folder with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
            t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] (data idx only).
        epochs: passes over the training images.
        batch_size: training images per step.
        lr: Adam's learning rate, decayed by a cosine to 0 over the run.
        method: ODE solver of odenet and rknet.
        rtol: relative tolerance of adaptive methods.
        atol: absolute tolerance of adaptive methods.
        step_size: step of fixed-step methods (required for them, refused otherwise).
        gradient: gradient mode of odenet (rknet is always direct).
        seminorm: use the seminorm in odenet's adjoint step-size control.
        seed: initialisation and batch order.
        device: auto, cpu, cuda or cuda:N.
        threads: torch.set_num_threads for the run (None: torch's choice).
    """

    model: str = "odenet"
    data: str = "offline"
    data_dir: str | None = None
    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3
    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    step_size: float | None = None
    gradient: str = "adjoint"
    seminorm: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        check_choice("model", self.model, MODEL_NAMES)
        check_data_name(self.data, self.data_dir)
        check_choice("method", self.method, ADAPTIVE_METHODS + FIXED_STEP_METHODS)
        check_choice("gradient", self.gradient, GRADIENT_MODES)
        check_float("rtol", self.rtol)
        check_float("atol", self.atol)
        check_float("step_size", self.step_size, maximum=1, optional=True)
        fixed_step = self.model in SOLVER_MODELS and self.method in FIXED_STEP_METHODS
        if fixed_step and self.step_size is None:
            raise ValueError(f"method={self.method!r} is a fixed-step method: give step_size")
        if self.step_size is not None and not fixed_step:
            raise ValueError(f"step_size={self.step_size!r} is only used by "
                             f"{' and '.join(SOLVER_MODELS)} with a fixed-step method "
                             f"({', '.join(FIXED_STEP_METHODS)})")
        check_int("threads", self.threads, optional=True)
        resolve_device(self.device)  # an unknown or unavailable device, named
        self.train_config()  # epochs, batch_size, lr and seed

    def train_config(self) -> TrainConfig:
        """The loop settings: the experiment's protocol with these epochs, batch, lr, seed."""
        return classifier_training(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                   seed=self.seed)

    def model_kwargs(self, data: ClassificationData) -> dict[str, Any]:
        """Keyword arguments of ``build_classifier(self.model, ...)`` for images of ``data``;
        the solver's settings only for the models that use them."""
        kwargs: dict[str, Any] = {"in_channels": data.in_channels,
                                  "image_size": data.image_size,
                                  "num_classes": data.num_classes}
        if self.model in SOLVER_MODELS:
            kwargs.update(method=self.method, rtol=self.rtol, atol=self.atol,
                          step_size=self.step_size)
        if self.model == "odenet":
            kwargs.update(gradient=self.gradient,
                          adjoint_options={"norm": "seminorm"} if self.seminorm else None)
        return kwargs
