"""What the user sees: `hwq quantize` writes its report; `hwq compile` refuses, in one
line and without a package, the layers and settings this ISA version cannot run."""
from pathlib import Path

import pytest

from hwq.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "hwq" / "examples" / "lenet_digits.py"
STUDY = Path(__file__).resolve().parent.parent / "hwq" / "configs" / "quant" / "percentile_perchannel.yaml"
LEAKY = '''
import torch, torch.nn as nn, torch.nn.functional as F
class Leaky(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(256, 10)
    def forward(self, x):
        y = F.leaky_relu(self.a(x), -0.1)
        return self.fc(torch.flatten(F.relu(y + self.b(y)), 1))
'''


def test_quantize_report(tmp_path, capsys):
    assert main(["quantize", f"{EXAMPLE}:LeNet", "--input-shape", "1x8x8", "--calib", "digits",
                 "-o", str(tmp_path), "--quant-config", str(STUDY), "-q"]) == 0
    out = capsys.readouterr().out
    assert "| conv1 | conv | entropy |" in out and "(8 ch)" in out and "| int8 |" in out
    assert (tmp_path / "calibration.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("model, config, message", [
    ("leaky", None, "hwq compile: error: layer 'a': LeakyReLU negative_slope -0.1 is outside what "
                    "the hardware multiplies by (0..511 / 256); use a slope in [0, 1.99]\n"),
])
def test_compile_refuses_cleanly(tmp_path, capsys, model, config, message):
    (tmp_path / "leaky.py").write_text(LEAKY)
    spec = f"{tmp_path / 'leaky.py'}:Leaky" if model == "leaky" else f"{EXAMPLE}:LeNet"
    out = tmp_path / "pkg.hwq"
    argv = ["compile", spec, "--input-shape", "1x8x8", "--calib", "digits", "-o", str(out), "-q"]
    assert main(argv + (["--quant-config", str(config)] if config else [])) == 2
    assert capsys.readouterr().err == message
    assert not out.exists()
