"""Detector retraining: does the synthetic data make a detector better on real images?

Arms `real` (real train images), `mixed` (real + a published synthetic version,
classes mapped onto the real set's names) and optionally `synthetic` (synthetic
only), each trained per seed with the same optimizer-step budget by default and
judged on the same held-out real eval set. Modules: `config` (settings, inputs,
run ids), `data` (each arm's images), `arm` (one Ray Train worker: ultralytics
inside), `records` (an arm's plan, its worker's inputs, its metrics.json),
`launch` (the driver: budgets, one Ray Train run per arm and seed, side by side),
`compare` (mean +- std, paired gains), `report` (HTML), `trigger` (publish
callback and watcher), `offline` (no network).
"""

from factory.retrain.config import RetrainError, RetrainSettings
from factory.retrain.launch import retrain
from factory.retrain.trigger import publish_hook

__all__ = ["RetrainError", "RetrainSettings", "publish_hook", "retrain"]
