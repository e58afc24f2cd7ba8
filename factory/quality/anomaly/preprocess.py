"""Image preprocessing: grayscale, resize, and the paper's illumination filters
(section 5.4: local contrast normalization, homomorphic filtering). Both are off by
default; turn them on where lighting varies across a line (the config is saved in
the checkpoint so inference preprocesses exactly as training did)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclass
class PreprocessConfig:
    image_size: int = 128
    channels: int = 1  # 1 = grayscale
    homomorphic: bool = False
    homomorphic_sigma: float = 0.1  # cutoff as a fraction of the image side (low frequencies = illumination)
    homomorphic_gains: tuple[float, float] = (0.5, 1.5)  # (low, high) frequency gains
    lcn: bool = False
    lcn_sigma: float = 0.08  # local window (Gaussian std) as a fraction of the image side

    def to_dict(self) -> dict:
        d = asdict(self)
        d["homomorphic_gains"] = list(self.homomorphic_gains)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        d = dict(d)
        if "homomorphic_gains" in d:
            d["homomorphic_gains"] = tuple(d["homomorphic_gains"])
        return cls(**d)


def homomorphic_filter(img: np.ndarray, sigma: float = 0.1, gains: tuple[float, float] = (0.5, 1.5)) -> np.ndarray:
    """log -> FFT -> Gaussian high-emphasis filter (gain `low` at DC rising to `high`) -> exp.
    Suppresses slowly varying illumination (multiplicative) and keeps reflectance detail.
    Input and output: float HxW in [0, 1]."""
    H, W = img.shape
    lo, hi = gains
    log = np.log1p(img.astype(np.float64))
    fy = np.fft.fftfreq(H)[:, None]
    fx = np.fft.fftfreq(W)[None, :]
    d2 = fy**2 + fx**2
    filt = lo + (hi - lo) * (1.0 - np.exp(-d2 / (2 * sigma**2)))
    out = np.expm1(np.real(np.fft.ifft2(np.fft.fft2(log) * filt)))
    out -= out.min()
    return (out / max(out.max(), 1e-8)).astype(np.float32)


def local_contrast_normalize(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """(x - local mean) / local std with Gaussian windows, mapped back to about [0, 1]."""
    x = img.astype(np.float32)
    mean = ndimage.gaussian_filter(x, sigma_px)
    var = ndimage.gaussian_filter((x - mean) ** 2, sigma_px)
    z = (x - mean) / np.sqrt(var + 1e-4)
    return np.clip(0.5 + z / 6.0, 0.0, 1.0)


def to_gray_float(image: np.ndarray) -> np.ndarray:
    """HxW or HxWxC uint8 (or float in [0,1]) -> HxW float32 in [0, 1]."""
    x = np.asarray(image)
    if x.ndim == 3:
        x = x[..., :3].mean(axis=2) if x.shape[2] >= 3 else x[..., 0]
    x = x.astype(np.float32)
    return x / 255.0 if np.asarray(image).dtype == np.uint8 else x


def preprocess(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """One image -> C x S x S float32, ready for the model."""
    if cfg.channels == 1:
        x = to_gray_float(image)
        x = np.asarray(Image.fromarray(x).resize((cfg.image_size, cfg.image_size), Image.BILINEAR), np.float32)
        if cfg.homomorphic:
            x = homomorphic_filter(x, cfg.homomorphic_sigma, cfg.homomorphic_gains)
        if cfg.lcn:
            x = local_contrast_normalize(x, cfg.lcn_sigma * cfg.image_size)
        return x[None]
    raise NotImplementedError("only grayscale (channels: 1) anomaly models are implemented")


def preprocess_batch(images, cfg: PreprocessConfig) -> np.ndarray:
    return np.stack([preprocess(im, cfg) for im in images]).astype(np.float32)
