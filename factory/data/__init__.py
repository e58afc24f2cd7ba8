"""Real data: image folders and their masks, class vocabularies, and adapters from
published defect sets (masks or YOLO layout) to boxes."""

from factory.data.adapters import ADAPTERS, RealSample, RealSet, load_real, write_yolo
from factory.data.masks import binary_to_boxes, mask_to_boxes

__all__ = ["ADAPTERS", "RealSample", "RealSet", "binary_to_boxes", "load_real", "mask_to_boxes", "write_yolo"]
