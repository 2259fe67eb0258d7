"""hwq: a PyTorch model to a power-of-two int8 systolic accelerator on an FPGA, proven
bit-exact from the golden model to the RTL.

    import hwq
    pkg = hwq.compile(model, (1, 8, 8), calib)    # quantize, compile, prove on the ISS
    y = pkg.predict(x, sim="iss")                 # golden, iss, verilator or icarus
    pkg.save("model.hwq"); pkg = hwq.load("model.hwq")
    hwq.sweep("sweep.yaml", out="results")        # a design-space sweep on Dask

`compile`, `load` and `Package` come from hwq/api.py, `sweep` from hwq/sweeps/, imported
on first use so that `import hwq` stays light for the CLI and for code that needs one
layer alone.
"""
from __future__ import annotations

__all__ = ["compile", "load", "sweep", "Package", "HwqError"]

from hwq.errors import HwqError


def __getattr__(name: str):
    if name in ("compile", "load"):
        from hwq import api
        return getattr(api, name)
    if name == "sweep":
        from hwq.sweeps.engine import sweep
        return sweep
    if name == "Package":
        from hwq.package import Package
        return Package
    raise AttributeError(f"module 'hwq' has no attribute {name!r}")
