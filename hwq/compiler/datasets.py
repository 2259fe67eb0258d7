"""Calibration data: a named built-in set or a .npy file of float samples."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hwq.errors import HwqError

CALIBRATION_SETS = ("digits",)
DIGITS_TEST_SIZE = 360
# the input shapes the digits fit: the 8x8 image, or its 64 pixels as a vector
DIGITS_SHAPES = ((1, 8, 8), (64, 1, 1))


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


def load_array(path: str | Path, what: str) -> np.ndarray:
    """The array an .npy file holds, refusing in one line what is not one: a missing file,
    an .npz archive or a text file under an .npy name, an array of Python objects (whose
    pickles are never loaded)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise HwqError(f"{what} {path}: cannot read it ({e.strerror})") from None
    if magic[:4] == b"PK\x03\x04":
        raise HwqError(f"{what} {path}: is an .npz archive, not an .npy array; save one array "
                       "with numpy.save")
    if magic != b"\x93NUMPY":
        raise HwqError(f"{what} {path}: not a NumPy .npy file; save the array with numpy.save")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        why = ("it holds Python objects (pickled data), which hwq does not load; save a "
               "numeric array" if "pickle" in str(e) else f"cannot load it ({e})")
        raise HwqError(f"{what} {path}: {why}") from None
    except OSError as e:
        raise HwqError(f"{what} {path}: cannot load it ({e})") from None


def check_inputs(x, input_shape: tuple[int, int, int], what: str) -> np.ndarray:
    """`x` as float32 (N, *input_shape), N >= 1, every value finite."""
    x = np.asarray(x)
    want = ", ".join(map(str, input_shape))
    if x.ndim != 4 or x.shape[1:] != tuple(input_shape) or len(x) == 0 or x.dtype.kind not in "fiu":
        raise HwqError(f"{what}: holds {x.dtype} {x.shape}; it must hold real numbers of shape "
                       f"(N, {want}) with N >= 1")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise HwqError(f"{what}: holds NaN or infinity")
    return x


def calibration_set(calib, input_shape: tuple[int, int, int], n: int = 512) -> np.ndarray:
    """Up to `n` float32 samples of shape (n, *input_shape): "digits" (the first n of the
    digits train split), the path of a .npy file holding (N, *input_shape) floats, or such
    an array itself."""
    input_shape = tuple(input_shape)
    if isinstance(calib, np.ndarray):
        return check_inputs(calib, input_shape, "calibration data")[:n]
    if not isinstance(calib, (str, Path)):
        raise HwqError(f"calibration data is a {type(calib).__name__}; give 'digits', a .npy "
                       "file path or an array of shape (N, C, H, W)")
    name = str(calib)
    if name == "digits":
        if input_shape not in DIGITS_SHAPES:
            raise HwqError(f"calibration set digits has 1x8x8 images (or 64-vectors) but the "
                           f"model's input is {'x'.join(map(str, input_shape))}; give a .npy "
                           "file of inputs instead")
        x = digits_split()[0][:n]
        return x.reshape((len(x), *input_shape))
    if name.endswith(".npy"):
        x = load_array(name, "calibration file")
        return check_inputs(x, input_shape, f"calibration file {name}")[:n]
    raise HwqError(f"unknown calibration set {name!r}; choose one of {', '.join(CALIBRATION_SETS)} "
                   "or a .npy file path")
