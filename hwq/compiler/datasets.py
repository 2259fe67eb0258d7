"""Calibration data: a named built-in set or a .npy file of float samples."""
from __future__ import annotations

import numpy as np

from hwq.errors import HwqError

CALIBRATION_SETS = ("digits",)
DIGITS_TEST_SIZE = 360


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (shipped with it, no download) as (N, 1, 8, 8) float32 in
    [0, 1], split 1437 train / 360 test, stratified by class: x_train, y_train, x_test, y_test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_SIZE, random_state=seed, stratify=y)
    return x_train, y_train, x_test, y_test


def calibration_set(name: str, input_shape: tuple[int, int, int], n: int = 512) -> np.ndarray:
    """Up to `n` float32 samples of shape (n, *input_shape): "digits" (the first n of the
    digits train split) or the path of a .npy file holding (N, *input_shape) floats."""
    input_shape = tuple(input_shape)
    if name == "digits":
        x = digits_split()[0][:n]
        if int(np.prod(input_shape)) != x[0].size:
            raise HwqError(f"calibration set digits has 1x8x8 samples but the model's input is "
                           f"{'x'.join(map(str, input_shape))}; give a .npy file of inputs instead")
        return x.reshape((len(x), *input_shape))
    if name.endswith(".npy"):
        try:
            x = np.load(name, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise HwqError(f"calibration file {name}: cannot load it ({e})") from None
        if x.ndim != 4 or x.shape[1:] != input_shape or not np.issubdtype(x.dtype, np.floating):
            raise HwqError(f"calibration file {name}: holds {x.dtype} {x.shape}; it must hold "
                           f"floats of shape (N, {', '.join(map(str, input_shape))})")
        return x[:n].astype(np.float32)
    raise HwqError(f"unknown calibration set {name!r}; choose one of {', '.join(CALIBRATION_SETS)} "
                   "or a .npy file path")
