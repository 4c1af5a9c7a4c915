"""Serving: model URI -> local or distributed predictor, and batch scoring of files."""

from __future__ import annotations

from toolkit.serving.batch import score_files
from toolkit.serving.loader import DistributedPredictor, LocalPredictor, load_predictor, resolve

__all__ = ["DistributedPredictor", "LocalPredictor", "load_predictor", "resolve", "score_files"]
