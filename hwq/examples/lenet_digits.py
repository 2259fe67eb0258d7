"""A small LeNet for scikit-learn's 8x8 handwritten digits: hwq's end-to-end example.

    python -m hwq.examples.lenet_digits    # train (or load the cached weights) and report
    hwq compile hwq.examples.lenet_digits:LeNet --input-shape 1x8x8 --calib digits -o lenet.hwq

Input is 1x8x8 in [0, 1]; `pretrained()` trains deterministically in a few seconds and
caches the weights in hwq's cache directory (hwq/cache.py), keyed by this file's contents.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hwq.cache import cache_dir
from hwq.compiler.datasets import digits_split



class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 2 * 2, 32)
        self.fc2 = nn.Linear(32, 10)

    @classmethod
    def pretrained(cls) -> "LeNet":
        """What `hwq compile hwq.examples.lenet_digits:LeNet` builds: the trained model."""
        return pretrained()

    def forward(self, x):
        x = self.pool1(F.relu(self.bn1(self.conv1(x))))
        x = self.pool2(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def load_digits_split(seed: int = 0):
    """(x_train, y_train, x_test, y_test): 1437 / 360 digits, x float32 (N, 1, 8, 8) in [0, 1]."""
    return digits_split(seed)


def train(model: nn.Module, epochs: int = 40, seed: int = 0) -> nn.Module:
    """Train `model` on the digits train split, deterministically for a given seed (the
    caller's random state and thread count are left as they were)."""
    x_train, y_train, _, _ = load_digits_split()
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: bit-identical sums, run to run
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
            model.train()
            for _ in range(epochs):
                for batch in torch.randperm(len(x)).split(32):
                    optimizer.zero_grad()
                    F.cross_entropy(model(x[batch]), y[batch]).backward()
                    optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model.eval()(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def pretrained(directory: str | Path | None = None) -> LeNet:
    """A trained LeNet; trained once, then loaded from the cache."""
    directory = Path(directory) if directory is not None else cache_dir("examples")
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    path = directory / f"lenet_digits-{key}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the initial weights; training then seeds its own shuffling
        model = LeNet()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    train(model)
    directory.mkdir(parents=True, exist_ok=True)
    # write then rename, so a concurrent reader never sees half a file
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model


if __name__ == "__main__":
    _, _, x_test, y_test = load_digits_split()
    print(f"LeNet digits test accuracy: {accuracy(pretrained(), x_test, y_test):.4f}")
