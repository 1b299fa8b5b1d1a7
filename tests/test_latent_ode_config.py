"""LatentConfig's checks (one message naming the setting and its value) and the command line
that reproduces a config."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict

import pytest

from cnflow.experiments.latent_ode import MAX_SEED, MODELS, LatentConfig, command_line, models_of


@pytest.mark.parametrize("changes, message", [
    ({"n_obs": (0,)}, "n_obs entries must be an integer in [1, 100], got 0"),
    ({"n_obs": (101,)}, "n_obs entries must be an integer in [1, 100], got 101"),
    ({"n_obs": ()}, "n_obs must not be empty"),
    ({"n_obs": (30, 30)}, "n_obs has repeated entries"),
    ({"models": ("gru",)}, "models has unknown entries ['gru']"),
    ({"models": ()}, "models must not be empty"),
    ({"n_spirals": 3}, "n_spirals must be an integer >= 4, got 3"),
    ({"n_spirals": 10, "n_train": 9}, "n_train must be an integer in [2, 8], got 9"),
    ({"n_train": 1}, "n_train must be an integer in [2, 998], got 1"),
    ({"noise_std": 0.0}, "noise_std must be a finite number > 0, got 0.0"),
    ({"seeds": (0, -1)}, "seeds entries must be an integer in [0, 4294967295], got -1"),
    ({"seeds": (MAX_SEED + 1,)}, f"got {MAX_SEED + 1}"),
    ({"seeds": ()}, "seeds must not be empty"),
    ({"seeds": (2, 2)}, "seeds has repeated entries"),
    ({"iterations": 0}, "iterations must be an integer >= 1, got 0"),
    ({"rnn_iterations": 0}, "rnn_iterations must be an integer >= 1, got 0"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
    ({"final_lr_factor": 1.5}, "final_lr_factor must be a finite number > 0 and <= 1, got 1.5"),
    ({"time_subsample": 150}, "time_subsample must be an integer in [0, 98], got 150"),
    ({"train_future": True, "time_subsample": 199},
     "time_subsample must be an integer in [0, 198], got 199"),
    ({"rtol": 0.0}, "rtol must be a finite number > 0, got 0.0"),
    ({"atol": -1.0}, "atol must be a finite number > 0, got -1.0"),
    ({"gradient": "backprop"}, "gradient='backprop' is not one of"),
    ({"eval_every": -1}, "eval_every must be an integer >= 0, got -1"),
    ({"device": "tpu"}, "device='tpu' is not one of"),
])
def test_bad_settings_name_the_field_and_value(changes, message):
    with pytest.raises(ValueError) as error:
        LatentConfig(**changes)
    assert message in str(error.value)


def test_a_flag_must_be_a_bool():
    with pytest.raises(TypeError, match="poisson must be True or False, got 1"):
        LatentConfig(poisson=1)


def test_lists_are_normalised():
    config = LatentConfig(models=["rnn", "latent-ode"], n_obs=[50, 30])
    assert config.models == MODELS  # MODELS's order, whatever the order asked
    assert config.n_obs == (50, 30)  # run in the order asked
    assert models_of("both") == MODELS and models_of("rnn") == ("rnn",)
    with pytest.raises(ValueError, match="model='gru'"):
        models_of("gru")


def test_iterations_of_each_model():
    config = LatentConfig(iterations=7, rnn_iterations=3)
    assert config.iterations_of("latent-ode") == 7 and config.iterations_of("rnn") == 3
    with pytest.raises(ValueError, match="model='gru'"):
        config.iterations_of("gru")


def test_config_json_rebuilds_the_config():
    config = LatentConfig(models=("rnn",), n_obs=(10, 20), seeds=(3, 1), poisson=True)
    assert LatentConfig(**json.loads(json.dumps(asdict(config)))) == config


def test_command_line_spells_out_every_setting():
    config = LatentConfig(models=("latent-ode",), n_obs=(30, 50), train_future=False,
                          time_subsample=10, gradient="adjoint")
    args = shlex.split(command_line(config, "results/x", md_path="results/x.md",
                                    figures=False, threads=2))
    assert args[:8] == ["cnflow", "latent", "--model", "latent-ode", "--n-obs", "30",
                        "--n-obs", "50"]
    assert "--no-train-future" in args and "--no-poisson" in args and "--no-figures" in args
    assert args[args.index("--gradient") + 1] == "adjoint"
    assert args[args.index("--threads") + 1] == "2"
    # Rerunning it replaces the run it reproduces, which the run folder refuses without this.
    assert args[-6:] == ["--out", "results/x", "--md", "results/x.md", "--no-figures",
                         "--overwrite"]
