"""Trainer plugins: the logistic-regression example's data and updates, and finding trainers by
entry point."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fogcoord.trainers import GROUP, TrainResult, UnknownTrainer, load_trainer
from fogcoord.trainers.logreg import (
    DEFAULTS,
    LogisticRegressionTrainer,
    accuracy,
    held_out_set,
    initial_model,
)

Arrays = dict[str, np.ndarray[Any, Any]]
CLASSES = int(DEFAULTS["classes"])


def loss(model: Arrays, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    logits = (x @ model["weights"] + model["bias"]).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(y.size), y]))


def label_mix(trainer: LogisticRegressionTrainer) -> np.ndarray[Any, Any]:
    labels = np.concatenate([trainer.y, trainer.y_val])
    return np.bincount(labels, minlength=CLASSES) / labels.size


def test_a_devices_data_is_a_function_of_its_id() -> None:
    a = LogisticRegressionTrainer("dev-a", {})
    again = LogisticRegressionTrainer("dev-a", {})
    other = LogisticRegressionTrainer("dev-b", {})
    np.testing.assert_array_equal(a.x, again.x)
    np.testing.assert_array_equal(a.y, again.y)
    np.testing.assert_array_equal(a.x_val, again.x_val)
    assert not np.array_equal(a.x, other.x)
    # the study's seed is part of it: another study gives the same device other data
    assert not np.array_equal(a.x, LogisticRegressionTrainer("dev-a", {"seed": 8}).x)
    # 80 % to train on, 20 % held out on the device
    assert a.y.size == 160
    assert a.y_val.size == 40


def test_the_same_training_gives_the_same_update() -> None:
    model = initial_model({})
    first = LogisticRegressionTrainer("dev-a", {}).train(model)
    second = LogisticRegressionTrainer("dev-a", {}).train(model)
    for name in ("weights", "bias"):
        np.testing.assert_array_equal(first.update[name], second.update[name])
    assert first.metrics == second.metrics


def test_devices_hold_skewed_label_mixes() -> None:
    mixes = np.stack([label_mix(LogisticRegressionTrainer(f"dev-{i}", {})) for i in range(20)])
    # a small Dirichlet alpha (0.3): each device is dominated by a few classes ...
    assert np.median(mixes.max(axis=1)) > 0.3
    assert np.median((mixes > 0).sum(axis=1)) < CLASSES
    # ... and devices differ from each other far more than i.i.d. samples of 200 would
    spread = np.abs(mixes - mixes.mean(axis=0)).sum(axis=1)
    assert spread.mean() > 0.5
    # a large alpha gives nearly balanced, alike devices
    flat = np.stack(
        [label_mix(LogisticRegressionTrainer(f"dev-{i}", {"alpha": 1000.0})) for i in range(20)]
    )
    assert np.abs(flat - flat.mean(axis=0)).sum(axis=1).mean() < spread.mean() / 2


def test_an_update_lowers_the_loss() -> None:
    model = initial_model({})
    trainer = LogisticRegressionTrainer("dev-a", {})
    result = trainer.train(model)
    assert isinstance(result, TrainResult)
    assert set(result.update) == {"weights", "bias"}
    for name, value in result.update.items():
        assert value.shape == model[name].shape
        assert value.dtype == np.float32
    assert result.examples == 160
    assert set(result.metrics) == {"accuracy", "loss"}
    new = {k: model[k] + result.update[k] for k in model}
    # on the device's own data, and on the task's balanced held-out set
    assert loss(new, trainer.x, trainer.y) < loss(model, trainer.x, trainer.y)
    assert result.metrics["loss"] < np.log(CLASSES)
    x, y = held_out_set({})
    assert loss(new, x, y) < loss(model, x, y)
    assert accuracy(new, x, y) > accuracy(model, x, y)


def test_averaged_updates_learn_the_task() -> None:
    """Plain federated averaging over non-IID devices: the model learns the common task."""
    model = initial_model({})
    x, y = held_out_set({})
    trainers = [LogisticRegressionTrainer(f"dev-{i}", {}) for i in range(10)]
    for _ in range(5):
        updates = [t.train(model).update for t in trainers]
        model = {k: model[k] + np.mean([u[k] for u in updates], axis=0) for k in model}
    assert accuracy(model, x, y) > 0.7


def test_held_out_set_is_balanced_and_fixed() -> None:
    x, y = held_out_set({}, 5_000)
    again_x, again_y = held_out_set({}, 5_000)
    np.testing.assert_array_equal(x, again_x)
    np.testing.assert_array_equal(y, again_y)
    assert x.shape == (5_000, int(DEFAULTS["features"]))
    counts = np.bincount(y, minlength=CLASSES)
    assert counts.min() > 0.8 * 5_000 / CLASSES
    model = initial_model({"features": 5, "classes": 3})
    assert model["weights"].shape == (5, 3)
    assert model["bias"].shape == (3,)


def test_load_trainer_finds_logreg_by_entry_point() -> None:
    factory = load_trainer("logreg")
    assert factory is LogisticRegressionTrainer
    trainer = factory("dev-a", {"examples": 50})
    assert isinstance(trainer, LogisticRegressionTrainer)
    assert GROUP == "fogcoord.trainers"


def test_an_unknown_trainer_is_refused_naming_the_installed_ones() -> None:
    with pytest.raises(UnknownTrainer, match=r"no trainer 'nope' is installed.*logreg"):
        load_trainer("nope")
    assert issubclass(UnknownTrainer, LookupError)
