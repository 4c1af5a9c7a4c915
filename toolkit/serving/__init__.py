"""Serving: model URI -> local or distributed predictor, and batch scoring of files."""

from __future__ import annotations

from toolkit.serving.batch import ScoringOptions, score_files
from toolkit.serving.loader import DistributedPredictor, LocalPredictor, load_predictor, resolve

__all__ = ["DistributedPredictor", "LocalPredictor", "ScoringOptions", "load_predictor", "resolve", "score_files"]
