"""The gate's anomaly model. UIIDD (paper 002): MDAAE + self-attention GAN as a plain
torch model (`model.py`) and its loss terms (`loss.py`); the discriminative head
(`disc_head.py`) trained on simulated anomalies (`simulate.py`); native-scale patches
and stitching (`patches.py`); an inference wrapper with the heat map and checkpoint
format (`detector.py`), calibration (`calibrate.py`), threshold rules (`thresholds.py`),
evaluation on labelled images (`evaluate.py`) and illumination preprocessing
(`preprocess.py`). Training under Ray Train lives in `factory.training.anomaly`."""

from factory.quality.anomaly.detector import AnomalyDetector, Calibration, ScoreConfig
from factory.quality.anomaly.model import ModelConfig, UIIDDModel
from factory.quality.anomaly.preprocess import PreprocessConfig
from factory.quality.anomaly.thresholds import auroc, f1_max_threshold, recall_threshold, youden_threshold

__all__ = ["AnomalyDetector", "Calibration", "ModelConfig", "PreprocessConfig", "ScoreConfig", "UIIDDModel", "auroc",
           "f1_max_threshold", "recall_threshold", "youden_threshold"]
