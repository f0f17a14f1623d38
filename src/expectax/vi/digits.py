"""Binarised image data sets for the discrete VAE (:mod:`expectax.vi.vae`).

Two sources, both returning ``float32`` arrays of zeros and ones with one flattened image per row:

- :func:`load_digits`: the 1,797 handwritten 8×8 digits that ship inside scikit-learn (no
  download), grey levels 0..16 thresholded at ``threshold`` × 16, split once into a training and
  a held-out set by a fixed permutation (the split never depends on the training seed).
- :func:`load_npz`: MNIST (or any image set) from a local ``.npz`` file; expectax never
  downloads anything. The format is that of Keras' ``mnist.npz``:

  ====================  ====================================================================
  key                   contents
  ====================  ====================================================================
  ``x_train``           training images, shape ``(N, 28, 28)`` or ``(N, 784)`` (any ``H × W``
                        or flat ``D`` works), ``uint8`` grey levels 0..255 or floats in [0, 1]
  ``x_test``            held-out images, the same shape after the leading axis
  ``y_train/y_test``    optional labels, ignored
  ====================  ====================================================================

  Pixels are binarised by a fixed threshold (``x > threshold`` after scaling to [0, 1]; the
  DisARM reference's ``get_binarized_mnist_batch`` uses 0.5), and ``train_size`` keeps the
  first images of ``x_train`` for training (the reference: 50,000 of MNIST's 60,000). To
  write such a file from arrays you already have:
  ``numpy.savez_compressed("mnist.npz", x_train=xtr, x_test=xte)``.

References:
  Dong, Mnih & Tucker (2020), "DisARM: an antithetic gradient estimator for binary latent
  variables", NeurIPS — the VAE benchmarks these loaders feed.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

__all__ = ["Dataset", "load_digits", "load_npz"]


class Dataset(NamedTuple):
    """A binarised data set: ``train`` and ``test`` of shape ``(N, D)``, values in {0, 1}.

    ``shape`` is the image shape ``(H, W)`` for plotting; ``name`` a label for tables.
    """

    train: np.ndarray
    test: np.ndarray
    shape: tuple[int, int]
    name: str


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise ValueError(
            f"threshold must lie strictly between 0 and 1 (a fraction of the grey scale), got "
            f"{threshold}; use 0.5 to binarise at mid-grey."
        )
    return threshold


def load_digits(threshold: float = 0.5, test_size: int = 297) -> Dataset:
    """scikit-learn's 8×8 handwritten digits, binarised: 1,500 training and 297 held-out images.

    Args:
      threshold: a pixel is 1 when its grey level exceeds ``threshold × 16``.
      test_size: how many images to hold out (taken by a fixed permutation, seed 0).

    Returns:
      A :class:`Dataset` with ``D = 64``.
    """
    threshold = _check_threshold(threshold)
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits data set ships with scikit-learn, which is not installed: "
            "pip install scikit-learn (or pass --data FILE.npz with your own images)."
        ) from err
    images = sk_load_digits().data.astype(np.float32) / 16.0
    n = images.shape[0]
    if not 0 < test_size < n:
        raise ValueError(f"--test-size must be between 1 and {n - 1}, got {test_size}.")
    perm = np.random.default_rng(0).permutation(n)
    binary = (images > threshold).astype(np.float32)
    return Dataset(binary[perm[test_size:]], binary[perm[:test_size]], (8, 8), "digits")


def _as_unit(x: np.ndarray, key: str, path: str) -> np.ndarray:
    if x.ndim < 2:
        raise ValueError(
            f"--data {path}: {key} must hold one image per row, shape (N, H, W) or (N, D); got "
            f"shape {x.shape}."
        )
    x = x.reshape(x.shape[0], -1)
    if np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 255:
            raise ValueError(
                f"--data {path}: integer {key} must be grey levels in 0..255, found values in "
                f"[{x.min()}, {x.max()}]."
            )
        return x.astype(np.float32) / 255.0
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)) or x.min() < 0.0 or x.max() > 1.0:
            raise ValueError(
                f"--data {path}: floating-point {key} must lie in [0, 1]; scale it first "
                "(e.g. x / 255)."
            )
        return x.astype(np.float32)
    raise ValueError(f"--data {path}: {key} has dtype {x.dtype}; expected uint8 or float.")


def load_npz(
    path: str | os.PathLike[str], threshold: float = 0.5, train_size: int | None = None
) -> Dataset:
    """Images from a local ``.npz`` file with ``x_train`` and ``x_test`` (see the module docs).

    Args:
      path: the file, e.g. Keras' ``mnist.npz``.
      threshold: a pixel is 1 when its value scaled to [0, 1] exceeds ``threshold``.
      train_size: train on the first ``train_size`` images of ``x_train`` only (the DisARM
        reference trains on MNIST's ``train[:50000]`` and keeps ``train[50000:]`` for
        validation); None: all of them. ``x_test`` is the held-out set either way.

    Raises:
      FileNotFoundError / ValueError: naming ``--data`` and what the file must contain.
    """
    threshold = _check_threshold(threshold)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"--data {path}: no such file. Pass a local .npz file with arrays x_train and "
            "x_test (e.g. Keras' mnist.npz); expectax never downloads data. Omit --data to use "
            "scikit-learn's digits."
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - re-raised with the flag's name
        raise ValueError(
            f"--data {path}: could not read it as a NumPy .npz archive ({err}). Save your "
            "images with numpy.savez_compressed(path, x_train=..., x_test=...)."
        ) from err
    with archive:
        missing = [k for k in ("x_train", "x_test") if k not in archive.files]
        if missing:
            raise ValueError(
                f"--data {path}: missing array(s) {missing}; the file holds "
                f"{sorted(archive.files)}. It needs x_train and x_test (one image per row, uint8 "
                "0..255 or float in [0, 1])."
            )
        train = _as_unit(archive["x_train"], "x_train", path)
        test = _as_unit(archive["x_test"], "x_test", path)
        raw_shape = archive["x_train"].shape[1:]
    if train_size is not None:
        if not 0 < train_size <= train.shape[0]:
            raise ValueError(
                f"--train-size must be between 1 and the {train.shape[0]} images of x_train in "
                f"{path}, got {train_size}."
            )
        train = train[:train_size]
    if train.shape[1] != test.shape[1]:
        raise ValueError(
            f"--data {path}: x_train has {train.shape[1]} pixels per image but x_test has "
            f"{test.shape[1]}; both must have the same image size."
        )
    if len(raw_shape) == 2:
        shape = (int(raw_shape[0]), int(raw_shape[1]))
    else:
        side = int(round(np.sqrt(train.shape[1])))
        shape = (side, side) if side * side == train.shape[1] else (1, train.shape[1])
    name = os.path.splitext(os.path.basename(path))[0]
    binarise = lambda x: (x > threshold).astype(np.float32)
    return Dataset(binarise(train), binarise(test), shape, name)
