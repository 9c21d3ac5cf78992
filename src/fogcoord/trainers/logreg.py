"""The example trainer: multinomial logistic regression on a non-IID synthetic data set.

The data set is generated, not downloaded: ``classes`` Gaussian clusters in ``features``
dimensions, their centres drawn from the study's public ``seed``. Each device draws its own
examples from the device id, with a label mix from a Dirichlet(``alpha``) distribution: a small
alpha gives each device a few dominant classes, the skew that makes federated learning hard and
that robust aggregation must not mistake for an attack. The requester evaluates on a test set
drawn from the same centres (:func:`held_out_set`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import numpy.typing as npt

from fogcoord.trainers import Arrays, TrainResult

DEFAULTS: dict[str, Any] = {
    "seed": 7,
    "features": 20,
    "classes": 10,
    "separation": 0.7,
    "examples": 200,
    "alpha": 0.3,
    "epochs": 2,
    "learning_rate": 0.3,
    "batch_size": 32,
}

F32 = npt.NDArray[np.float32]


def _config(config: dict[str, Any]) -> dict[str, Any]:
    return {**DEFAULTS, **config}


def _centres(cfg: dict[str, Any]) -> F32:
    rng = np.random.default_rng(int(cfg["seed"]))
    centres = rng.standard_normal((int(cfg["classes"]), int(cfg["features"])))
    return (centres * float(cfg["separation"])).astype(np.float32)


def _draw(
    rng: np.random.Generator, centres: F32, labels: npt.NDArray[np.int64]
) -> tuple[F32, npt.NDArray[np.int64]]:
    noise = rng.standard_normal((labels.size, centres.shape[1])).astype(np.float32)
    return centres[labels] + noise, labels


def held_out_set(config: dict[str, Any], n: int = 2_000) -> tuple[F32, npt.NDArray[np.int64]]:
    """Balanced held-out examples of the study's task (what the requester evaluates on)."""
    cfg = _config(config)
    centres = _centres(cfg)
    rng = np.random.default_rng(int(cfg["seed"]) + 1)
    labels = rng.integers(0, centres.shape[0], n)
    return _draw(rng, centres, labels)


def initial_model(config: dict[str, Any]) -> Arrays:
    cfg = _config(config)
    return {
        "weights": np.zeros((int(cfg["features"]), int(cfg["classes"])), dtype=np.float32),
        "bias": np.zeros(int(cfg["classes"]), dtype=np.float32),
    }


def predict(model: Arrays, x: F32) -> npt.NDArray[np.int64]:
    logits = x @ model["weights"] + model["bias"]
    return np.asarray(np.argmax(logits, axis=1), dtype=np.int64)


def accuracy(model: Arrays, x: F32, y: npt.NDArray[np.int64]) -> float:
    return float(np.mean(predict(model, x) == y))


def _softmax(z: F32) -> F32:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float32)


class LogisticRegressionTrainer:
    """Local SGD on this device's shard; the update is the change in the weights."""

    def __init__(self, device_id: str, config: dict[str, Any]) -> None:
        cfg = _config(config)
        self.cfg = cfg
        digest = hashlib.sha256(f"{cfg['seed']}|{device_id}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        self.rng = rng
        centres = _centres(cfg)
        mix = rng.dirichlet(np.full(centres.shape[0], float(cfg["alpha"])))
        labels = rng.choice(centres.shape[0], size=int(cfg["examples"]), p=mix)
        x, y = _draw(rng, centres, labels)
        cut = int(0.8 * y.size)
        self.x, self.y = x[:cut], y[:cut]
        self.x_val, self.y_val = x[cut:], y[cut:]

    def train(self, model: Arrays) -> TrainResult:
        w = model["weights"].astype(np.float32).copy()
        b = model["bias"].astype(np.float32).copy()
        k = w.shape[1]
        lr = float(self.cfg["learning_rate"])
        batch = int(self.cfg["batch_size"])
        onehot = np.eye(k, dtype=np.float32)[self.y]
        for _ in range(int(self.cfg["epochs"])):
            order = self.rng.permutation(self.y.size)
            for start in range(0, order.size, batch):
                idx = order[start : start + batch]
                p = _softmax(self.x[idx] @ w + b)
                g = (p - onehot[idx]) / idx.size
                w -= lr * (self.x[idx].T @ g)
                b -= lr * g.sum(axis=0)
        new = {"weights": w, "bias": b}
        p_val = _softmax(self.x_val @ w + b)
        loss = float(-np.mean(np.log(p_val[np.arange(self.y_val.size), self.y_val] + 1e-9)))
        return TrainResult(
            update={name: new[name] - model[name] for name in ("weights", "bias")},
            examples=int(self.y.size),
            metrics={"accuracy": accuracy(new, self.x_val, self.y_val), "loss": loss},
        )
