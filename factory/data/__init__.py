"""Real data: adapters from published defect sets (masks or YOLO layout) to YOLO boxes."""

from factory.data.adapters import ADAPTERS, RealSample, RealSet, load_real, read_data_yaml, write_yolo
from factory.data.masks import binary_to_boxes, mask_to_boxes

__all__ = ["ADAPTERS", "RealSample", "RealSet", "binary_to_boxes", "load_real", "mask_to_boxes", "read_data_yaml", "write_yolo"]
