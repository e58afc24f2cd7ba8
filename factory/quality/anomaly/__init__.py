"""UIIDD (paper 002): MDAAE + self-attention GAN anomaly detector, as a plain torch
model (`model.py`), its loss terms (`loss.py`), an inference wrapper with the heat
map and checkpoint format (`detector.py`), calibration (`calibrate.py`), threshold
rules (`thresholds.py`) and illumination preprocessing (`preprocess.py`).
Training under Ray Train lives in `factory.training.anomaly`."""

from factory.quality.anomaly.detector import AnomalyDetector, Calibration, ScoreConfig
from factory.quality.anomaly.model import ModelConfig, UIIDDModel
from factory.quality.anomaly.preprocess import PreprocessConfig
from factory.quality.anomaly.thresholds import auroc, f1_max_threshold, recall_threshold, youden_threshold

__all__ = ["AnomalyDetector", "Calibration", "ModelConfig", "PreprocessConfig", "ScoreConfig", "UIIDDModel", "auroc",
           "f1_max_threshold", "recall_threshold", "youden_threshold"]
