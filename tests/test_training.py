"""The one training loop (`cnflow.training.fit`): early stopping, best weights, resume,
seeding, time budget, and a D-dimensional CNF fitted to a known density."""

from __future__ import annotations

import copy
import math
import shutil

import numpy as np
import pytest
import torch

import toydata
from cnflow.flows.cnf import CNF, ConcatSquashMLP, GatedHyperDynamics
from cnflow.objectives import make_objective
from cnflow.training import EndlessSamples, History, TrainConfig, evaluate, fit


def _flow(dim: int = 3, seed: int = 0) -> CNF:
    torch.manual_seed(seed)
    return CNF(GatedHyperDynamics(dim=dim, width=8, hidden=8), dim=dim, rtol=1e-3, atol=1e-3,
               eval_rtol=1e-5, eval_atol=1e-5)


def _data(n: int = 256, dim: int = 3, seed: int = 0) -> torch.Tensor:
    """Two well-separated Gaussian clusters: the standardised identity flow is far off."""
    g = torch.Generator().manual_seed(seed)
    side = torch.randint(0, 2, (n, 1), generator=g) * 2.0 - 1.0
    return 0.3 * torch.randn(n, dim, generator=g) + side * torch.ones(dim)


def _weights(flow: CNF) -> list[torch.Tensor]:
    return [p.detach().clone() for p in flow.parameters()]


def test_config_rejects_bad_values():
    for kwargs, name in [({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"),
                         ({"batch_size": 2.5}, "batch_size"), ({"patience": 0}, "patience"),
                         ({"lr_schedule": "step"}, "lr_schedule"),
                         ({"max_time": float("nan")}, "max_time")]:
        with pytest.raises(ValueError, match=name):
            TrainConfig(**kwargs)
    with pytest.raises(ValueError, match="lr_final must be a finite number > 0"):
        TrainConfig(lr_schedule="exponential", lr_final=0.0)


def test_fit_lowers_the_validation_nll_and_records_each_epoch():
    data = _data(512)
    flow = _flow()
    flow.set_normalization(data[:400])
    before = evaluate(flow, data[400:])[0].mean()
    history = fit(flow, data[:400], data[400:], TrainConfig(epochs=3, batch_size=64, lr=2e-2, min_epoch_steps=1),
                  progress=False)
    assert history.epochs_run == 3 and history.steps == 3 * (400 // 64)
    assert history.stop_reason == "epochs"
    assert history.best_val_nll < before
    assert [r["epoch"] for r in history.records] == [1, 2, 3]
    assert all(r["nfe_forward"] > 0 and r["nfe_backward"] > 0 for r in history.records)


def test_early_stopping_restores_the_best_validation_weights(tmp_path):
    data = _data(256)
    flow = _flow()
    flow.set_normalization(data)
    # A learning rate this large makes the validation NLL wander; patience 1 stops at the
    # first epoch without a new best, and the restored weights are those of the best.
    snapshots = {0: copy.deepcopy(flow.state_dict())}
    history = fit(flow, data[:192], data[192:],
                  TrainConfig(epochs=30, batch_size=32, lr=0.3, patience=1, min_epoch_steps=1),
                  checkpoint=tmp_path / "ck.pt", progress=False,
                  on_epoch=lambda r: snapshots.update({r["epoch"]: copy.deepcopy(
                      flow.state_dict())}))
    assert history.stop_reason == "early stopping"
    assert history.best_epoch < history.epochs_run
    # The initial weights compete as "epoch 0".
    vals = [history.initial_val_nll] + [r["val_nll"] for r in history.records]
    assert history.best_val_nll == min(vals) == vals[history.best_epoch]
    best = snapshots[history.best_epoch]
    for name, value in flow.state_dict().items():
        torch.testing.assert_close(value, best[name], rtol=0, atol=0)
    assert evaluate(flow, data[192:])[0].mean() == pytest.approx(history.best_val_nll, abs=1e-6)


def test_a_seeded_run_repeats_exactly():
    data = _data(200)
    results = []
    for _ in range(2):
        flow = _flow(seed=3)
        flow.set_normalization(data)
        fit(flow, data[:160], data[160:], TrainConfig(epochs=2, batch_size=32, seed=5, min_epoch_steps=1),
            progress=False)
        results.append(_weights(flow))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_continues_bit_for_bit(tmp_path):
    data = _data(200)
    config = TrainConfig(epochs=4, batch_size=32, seed=1, patience=None, min_epoch_steps=3)
    # Hutchinson noise and shuffling both draw random numbers: both must be restored.
    def make():
        torch.manual_seed(0)
        flow = CNF(ConcatSquashMLP(3, hidden=(8,)), dim=3, rtol=1e-3, atol=1e-3,
                   trace="hutchinson", eval_rtol=1e-5, eval_atol=1e-5)
        flow.set_normalization(data)
        return flow

    flow = make()
    copy_after_2 = tmp_path / "after2.pt"

    def keep(record):
        if record["epoch"] == 2:
            shutil.copy(tmp_path / "full.pt", copy_after_2)

    full = fit(flow, data[:160], data[160:], config, checkpoint=tmp_path / "full.pt",
               on_epoch=keep, progress=False)
    expected = _weights(flow)

    resumed_flow = make()
    state = torch.load(copy_after_2, weights_only=True)
    resumed = fit(resumed_flow, data[:160], data[160:], config, resume=state,
                  checkpoint=tmp_path / "resumed.pt", progress=False)
    for a, b in zip(expected, _weights(resumed_flow)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [r["val_nll"] for r in resumed.records] == [r["val_nll"] for r in full.records]
    assert resumed.steps == full.steps


def test_time_budget_stops_cleanly_with_a_usable_checkpoint(tmp_path):
    data = _data(256)
    flow = _flow()
    flow.set_normalization(data)
    history = fit(flow, data[:200], data[200:],
                  TrainConfig(epochs=1000, batch_size=8, max_time=0.3),
                  checkpoint=tmp_path / "ck.pt", progress=False)
    assert history.stop_reason == "time budget"
    assert history.epochs_run < 1000 and history.steps >= 1
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert state["loop"]["stop_reason"] == "time budget"
    fresh = _flow()
    fresh.load_state_dict(state["model"])
    values = evaluate(fresh, data[200:])[0]
    assert np.isfinite(values).all()
    assert values.mean() == pytest.approx(history.best_val_nll, abs=1e-6)


def test_a_small_table_gets_several_passes_per_epoch():
    data = _data(50)
    flow = _flow()
    flow.set_normalization(data)
    history = fit(flow, data[:40], data[40:], TrainConfig(epochs=2, batch_size=16,
                                                          min_epoch_steps=5), progress=False)
    # 2 full batches per pass: 3 passes (120 rows) give 7 batches of 16 per epoch.
    assert [r["step"] for r in history.records] == [7, 14]
    history = fit(flow, data[:10], None, TrainConfig(epochs=1, batch_size=16,
                                                     min_epoch_steps=4), progress=False)
    assert history.steps == 4  # fewer rows than a batch: one batch of all rows per pass


def test_endless_samples_count_steps_exactly():
    draws = []

    def sample(n, seed):
        draws.append(seed)
        return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))

    flow = _flow(dim=2)
    history = fit(flow, EndlessSamples(sample, steps_per_epoch=3, seed=2, steps=7), None,
                  TrainConfig(batch_size=16), progress=False)
    assert history.steps == 7 and history.epochs_run == 3
    assert draws == [2 * 10**7 + i for i in range(7)]


def test_a_five_dimensional_cnf_learns_a_known_density():
    """mix4 plus one Gaussian column: D = 5 with an exact log-density."""
    base = toydata.get("mix4")
    rng = np.random.default_rng(0)

    def table(n, seed):
        x = base.sample(n, seed=seed)
        return np.column_stack([x, rng.normal(2.0, 0.5, size=n)])

    def true_log_prob(x):
        extra = -0.5 * ((x[:, 4] - 2.0) / 0.5) ** 2 - math.log(0.5 * math.sqrt(2 * math.pi))
        return base.log_prob(x[:, :4]) + extra

    train = torch.as_tensor(table(2000, 1), dtype=torch.float32)
    val = torch.as_tensor(table(500, 2), dtype=torch.float32)
    torch.manual_seed(0)
    flow = CNF(GatedHyperDynamics(dim=5, width=32, hidden=16), dim=5, rtol=1e-3, atol=1e-3,
               eval_rtol=1e-5, eval_atol=1e-5)
    flow.set_normalization(train)
    before = evaluate(flow, val)[0].mean()
    history = fit(flow, train, val, TrainConfig(epochs=4, batch_size=128, lr=1e-2),
                  progress=False)
    assert history.best_val_nll < before - 0.3
    floor = -true_log_prob(val.double().numpy()).mean()
    assert history.best_val_nll > floor - 0.2  # no model beats the truth by much on 500 rows


@pytest.mark.parametrize("objective", ["mle", "fm"])
def test_a_run_cut_inside_an_epoch_by_its_budget_resumes_at_the_next_batch(tmp_path, objective):
    """A budget that ends after the first step cuts the first epoch; resumed without one,
    the run trains the rest of that epoch and then the others, ending with the weights of
    an uninterrupted run, bit for bit (constant schedule: the budget does not steer it).
    Flow matching draws its noise and times from the global stream, which the resumed run
    must continue exactly where the cut one left it."""
    data = _data(256)
    settings = {"epochs": 2, "batch_size": 32, "lr": 1e-2, "lr_schedule": "constant",
                "patience": None, "min_epoch_steps": 1}

    def run(**extra) -> tuple[CNF, History]:
        flow = _flow()
        flow.set_normalization(data)
        history = fit(flow, data[:192], data[192:], TrainConfig(**settings, **extra),
                      checkpoint=tmp_path / "ck.pt", progress=False,
                      objective=make_objective(objective), **(
                          {"resume": torch.load(tmp_path / "ck.pt", weights_only=True)}
                          if "max_time" not in extra and (tmp_path / "ck.pt").exists() else {}))
        return flow, history

    _, cut = run(max_time=1e-9)
    assert cut.steps == 1 and cut.stop_reason == "time budget"
    state = torch.load(tmp_path / "ck.pt", weights_only=True)["loop"]
    assert state["epoch"] == 0 and state["epoch_step"] == 1
    resumed, history = run()
    assert history.steps == 2 * 6 and [r["epoch"] for r in history.records] == [1, 2]
    (tmp_path / "ck.pt").unlink()
    uninterrupted, reference = run()
    assert reference.steps == 12
    for a, b in zip(_weights(resumed), _weights(uninterrupted)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _two_gaussians(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    return torch.randn(n, 2, generator=g) + 2.0 * labels[:, None], labels


def test_fit_trains_any_module_with_its_objective_and_a_callable_score(tmp_path):
    """A classifier through the same loop: its labels stay integers, the score is the
    validation error rate, and the best-scoring weights come back."""
    x, y = _two_gaussians(400, 0)
    x_val, y_val = _two_gaussians(400, 1)
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)

    def cross_entropy(module, inputs, labels):
        assert labels.dtype == torch.int64  # not cast to the model's dtype
        loss = torch.nn.functional.cross_entropy(module(inputs), labels)
        return loss, loss.detach()

    def error(module) -> float:
        return float((module(x_val).argmax(1) != y_val).double().mean())

    start = error(model)
    history = fit(model, (x, y), error, TrainConfig(epochs=5, batch_size=50, lr=0.05),
                  objective=cross_entropy, checkpoint=tmp_path / "ckpt.pt", progress=False)
    assert history.initial_val_nll == pytest.approx(start)
    # Two unit Gaussians 2*sqrt(2) apart: the Bayes error is Phi(-sqrt(2)) = 0.079.
    assert history.best_val_nll < 0.12 < start
    assert error(model) == pytest.approx(history.best_val_nll)
    assert (tmp_path / "ckpt.pt").exists()


def test_fit_refuses_a_module_without_objective_or_with_rows_to_score():
    model = torch.nn.Linear(2, 2)
    x, y = _two_gaussians(10, 0)
    with pytest.raises(TypeError, match="give its objective"):
        fit(model, (x, y), None, TrainConfig(epochs=1), progress=False)
    with pytest.raises(TypeError, match="val must be a callable score"):
        fit(model, (x, y), (x, y), TrainConfig(epochs=1), objective=lambda m, a, b: None,
            progress=False)
    with pytest.raises(ValueError, match="different numbers of rows"):
        fit(model, (x, y[:5]), None, TrainConfig(epochs=1), objective=lambda m, a, b: None,
            progress=False)


def test_step_and_epoch_hooks_see_every_step_and_extend_the_records(tmp_path):
    """The hooks the experiments build on: per-step records carrying a dict report, a
    context around each step's forward and backward, and epoch extras in the checkpoint."""
    x, y = _two_gaussians(200, 0)
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)

    def cross_entropy(module, inputs, labels):
        logits = module(inputs)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).double().mean()
        return loss, {"loss": loss.detach(), "accuracy": accuracy}

    steps, entered = [], []

    class Context:
        def __enter__(self):
            entered.append(torch.is_grad_enabled())

        def __exit__(self, *exc):
            return None

    history = fit(model, (x, y), None, TrainConfig(epochs=2, batch_size=50, min_epoch_steps=1,
                                                   lr_schedule="constant", lr=0.05),
                  objective=cross_entropy, on_step=steps.append, step_context=Context,
                  on_epoch=lambda record: {"tag": 10 * record["epoch"]},
                  checkpoint=tmp_path / "ck.pt", progress=False)
    assert [s["step"] for s in steps] == list(range(1, 9)) == list(range(1, len(entered) + 1))
    assert [s["epoch"] for s in steps] == [1] * 4 + [2] * 4
    assert all(0 <= s["accuracy"] <= 1 and s["seconds"] > 0 and s["nfe_forward"] is None
               for s in steps)
    assert history.records[0]["train_loss"] == pytest.approx(
        np.mean([s["loss"] for s in steps[:4]]))
    assert [r["tag"] for r in history.records] == [10, 20]
    saved = torch.load(tmp_path / "ck.pt", weights_only=False)
    assert [r["tag"] for r in saved["loop"]["records"]] == [10, 20]


@pytest.mark.parametrize("schedule, final", [("cosine", 0.01), ("cosine", 0.0),
                                             ("exponential", 0.1)])
def test_the_schedules_decay_to_lr_final_through_lr_scheduler(schedule, final):
    x, y = _two_gaussians(100, 0)
    steps = []

    def objective(module, inputs, labels):
        loss = torch.nn.functional.cross_entropy(module(inputs), labels)
        return loss, loss.detach()

    fit(torch.nn.Linear(2, 2), (x, y), None,
        TrainConfig(epochs=1, batch_size=10, min_epoch_steps=11, lr=0.1, lr_schedule=schedule,
                    lr_final=final),
        objective=objective, on_step=steps.append, progress=False)
    rates = np.array([s["lr"] for s in steps])
    progress = np.arange(len(rates)) / len(rates)
    expected = 0.1 * (final ** progress if schedule == "exponential"
                      else final + (1 - final) * 0.5 * (1 + np.cos(np.pi * progress)))
    np.testing.assert_allclose(rates, expected, rtol=1e-12)
