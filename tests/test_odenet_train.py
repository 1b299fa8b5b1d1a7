"""Training and evaluation of the classifiers through fit (cnflow.experiments.odenet.train)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cnflow.data.mnist import load_digits
from cnflow.experiments.odenet.baselines import build_classifier
from cnflow.experiments.odenet.train import (
    MAX_SEED,
    classifier_training,
    cross_entropy,
    evaluate,
    measure_training_step,
    train_classifier,
)
from cnflow.models.odenet import ODENet
from cnflow.training import TrainConfig, fit


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_the_protocol_is_cosine_to_zero_one_pass_per_epoch_no_early_stopping():
    config = classifier_training(epochs=3, batch_size=32, lr=1e-3, seed=4)
    assert (config.lr_schedule, config.lr_final, config.patience, config.min_epoch_steps) == \
        ("cosine", 0.0, None, 1)
    assert (config.epochs, config.batch_size, config.lr, config.seed) == (3, 32, 1e-3, 4)
    with pytest.raises(ValueError, match=f"seed must be an integer in \\[0, {MAX_SEED}\\]"):
        classifier_training(epochs=1, batch_size=1, lr=1e-3, seed=MAX_SEED + 1)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        classifier_training(epochs=0, batch_size=32, lr=1e-3)


def test_odenet_training_lowers_loss_on_digits(digits):
    torch.manual_seed(0)
    model = build_classifier("odenet", image_size=digits.image_size)
    x, y = digits.x_train[:960], digits.y_train[:960]
    with torch.no_grad():
        before = F.cross_entropy(model(x), y).item()
    config = TrainConfig(epochs=1, batch_size=32, lr=3e-3, lr_schedule="constant",
                         min_epoch_steps=1, patience=None, max_steps=30)
    fit(model, (x, y), None, config, objective=cross_entropy, progress=False)
    with torch.no_grad():
        after = F.cross_entropy(model(x), y).item()
    assert after < 0.8 * before


def test_train_classifier_records_history(digits, tmp_path):
    torch.manual_seed(0)
    model = build_classifier("odenet", image_size=8, method="rk4", step_size=0.5)
    calls = []
    config = classifier_training(epochs=2, batch_size=512, lr=1e-3)
    result = train_classifier(model, digits, config, progress=False,
                              checkpoint=tmp_path / "checkpoint.pt", extra_state={"tag": 1},
                              on_epoch=lambda record: calls.append(record))
    assert [c["epoch"] for c in calls] == [1, 2] and "test_error" in calls[0]
    first, last = result["epochs"]
    assert 0.0 <= last["test_error"] <= 1.0 and 0.0 <= last["train_error"] <= 1.0
    assert first["nfe_forward"] == 8 and first["nfe_backward"] >= 8
    assert first["nfe_forward_test"] == 8 and first["time_s"] > 0
    # One pass per epoch: 1438 images in full batches of 512 (the last, short one dropped).
    assert [s["step"] for s in result["steps"]] == [1, 2, 3, 4]
    assert [s["epoch"] for s in result["steps"]] == [1, 1, 2, 2]
    assert all(s["nfe_forward"] == 8 and 0 <= s["accuracy"] <= 1 for s in result["steps"])
    assert result["steps"][0]["lr"] == 1e-3 and last["lr"] == 0.0  # cosine to 0
    assert result["stop_reason"] == "epochs" and result["train"]["lr_final"] == 0.0
    # Parameters, gradients and Adam's two moments (and its step counters).
    params = sum(p.numel() * 4 for p in model.parameters())
    assert 4 * params <= result["state_bytes"] <= 4 * params + 4 * 1000
    assert result["peak_training_bytes"] == result["peak_saved_bytes"] + result["state_bytes"]
    assert result["peak_saved_bytes"] > 0
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["tag"] == 1 and saved["loop"]["epoch"] == 2


def test_evaluate_scores_and_restores_the_mode(digits):
    torch.manual_seed(0)
    model = build_classifier("mlp", image_size=8)
    model.train()
    scores = evaluate(model, digits.x_test, digits.y_test, batch_size=100)
    assert model.training
    assert scores["nfe_forward"] is None and 0 <= scores["error"] <= 1
    with torch.no_grad():
        expected = F.cross_entropy(model(digits.x_test), digits.y_test).item()
    assert math.isclose(scores["loss"], expected, rel_tol=1e-5)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        evaluate(model, digits.x_test, digits.y_test, batch_size=0)


def test_measure_training_step_is_one_step_of_fit():
    x = torch.rand(4, 1, 12, 12)
    y = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    model = ODENet(channels=8, method="rk4", step_size=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    record = measure_training_step(model, x, y)
    assert (record["nfe_forward"], record["nfe_backward"]) == (8, 8)
    assert record["time_s"] > 0 and record["peak_saved_bytes"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
