"""``privacy.secagg_100x100k.*``: one SecAgg+ round, 100 clients x 100,000 float32 values.

The protocol of :mod:`fogcoord.secagg` run in one process over its messages (no JSON):
21 neighbours per client, threshold 11, clip 1, a 32-bit ring, stochastic rounding, and 10 of
the 100 clients dropping after sending their masked input (they do not answer the unmasking
request, so their self masks are reconstructed from their neighbours' shares). Vectors are
drawn before timing. Every round is checked: the sum must cover all 100 inputs and match the
plain sum of the clipped vectors within the stated quantisation bound.

* ``.server`` (s): wall time inside the server's methods -- setup, validating and summing every
  reply, closing each stage, reconstructing the secrets and removing the masks -- for the
  round. Baseline: a plain numpy sum of the 100 vectors in the same run.
* ``.client`` (ms): wall time inside one client's methods (key generation, sharing and sealing,
  opening shares, quantising, mask expansion, unmasking), averaged over the 100 clients.
  Baseline: a client's share of the plain sum (its time / 100).

The median of three rounds is reported, after a warm-up round. The log also reports the costlier
case where the 10 clients drop before masking, so their pairwise masks must be recomputed.
"""

from __future__ import annotations

import statistics
from time import perf_counter

import numpy as np

from benchmarks.harness import Figure, Unit, log
from fogcoord.secagg import SecAggRun, run_secure_aggregation

FIGURES = ("privacy.secagg_100x100k.server", "privacy.secagg_100x100k.client")
UNITS: dict[str, Unit] = {
    "privacy.secagg_100x100k.server": "s",
    "privacy.secagg_100x100k.client": "ms",
}
TIMEOUT_S = 180.0

CLIENTS = 100
LENGTH = 100_000
NEIGHBOURS = 21
THRESHOLD = 11
DROPPING = 10
CLIP = 1.0
ROUNDS = 3
SERVER_TARGET_S = 0.3
CLIENT_TARGET_MS = 15.0


def _round(
    vectors: dict[str, np.ndarray], stage: str, dropping: set[str], rng: np.random.Generator
) -> SecAggRun:
    run = run_secure_aggregation(
        vectors,
        threshold=THRESHOLD,
        neighbours=NEIGHBOURS,
        clip=CLIP,
        dropouts={stage: dropping},
        rng=rng,
    )
    included = set(run.result.included)
    expected = set(vectors) - (dropping if stage != "unmasking" else set())
    if included != expected:
        raise RuntimeError(f"the sum covers {len(included)} inputs, expected {len(expected)}")
    truth = np.zeros(LENGTH)
    for cid in included:
        truth += np.clip(vectors[cid], -CLIP, CLIP)
    error = float(np.abs(run.result.total - truth).max())
    if error > run.result.error_bound:
        raise RuntimeError(f"error {error:.3g} exceeds the bound {run.result.error_bound:.3g}")
    return run


def _client_ms(run: SecAggRun) -> float:
    return statistics.fmean(run.client_seconds.values()) * 1e3


def run() -> list[Figure]:
    rng = np.random.default_rng(20240601)
    vectors = {
        f"device-{i:03d}": rng.normal(0.0, 0.3, LENGTH).astype(np.float32) for i in range(CLIENTS)
    }
    dropping = {str(c) for c in rng.choice(sorted(vectors), DROPPING, replace=False)}

    _round(vectors, "unmasking", dropping, rng)
    rounds = [_round(vectors, "unmasking", dropping, rng) for _ in range(ROUNDS)]
    server_s = statistics.median(r.server_seconds for r in rounds)
    client_ms = statistics.median(_client_ms(r) for r in rounds)

    plain = []
    for _ in range(5):
        started = perf_counter()
        total = np.zeros(LENGTH, dtype=np.float64)
        for vector in vectors.values():
            total += vector
        plain.append(perf_counter() - started)
    plain_s = statistics.median(plain)

    before = _round(vectors, "masked_input", dropping, rng)
    log(
        f"  {CLIENTS} clients x {LENGTH:,} values, k={NEIGHBOURS}, t={THRESHOLD}, "
        f"{DROPPING} dropping after masking: server {server_s * 1e3:.1f} ms, "
        f"client {client_ms:.2f} ms, plain sum {plain_s * 1e3:.2f} ms; "
        f"error bound {rounds[0].result.error_bound:.2g}"
    )
    log(
        f"  {DROPPING} dropping before masking instead: server "
        f"{before.server_seconds * 1e3:.1f} ms, client {_client_ms(before):.2f} ms"
    )
    return [
        Figure(
            "privacy.secagg_100x100k.server",
            server_s,
            "s",
            baseline=plain_s,
            target=SERVER_TARGET_S,
            op="<=",
        ),
        Figure(
            "privacy.secagg_100x100k.client",
            client_ms,
            "ms",
            baseline=plain_s * 1e3 / CLIENTS,
            target=CLIENT_TARGET_MS,
            op="<=",
        ),
    ]
