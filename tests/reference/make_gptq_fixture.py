#!/usr/bin/env python3
"""GPTQ reference: one matrix rounded by AutoGPTQ's GPTQ (the peer), for test_gptq.

Downloads the auto-gptq 0.7.1 source distribution from PyPI (pip download, no install:
its CUDA extensions are not needed) and loads its two algorithm files,
auto_gptq/quantization/{quantizer,gptq}.py. A weight W (64 x 160, with a few large
columns) and calibration inputs X (2048 x 160, correlated, columns of different scales)
go through GPTQ(layer).add_batch / fasterquant(blocksize=128, percdamp=0.01,
actorder=True), its quantizer preset to tandem's grid: per row scale = max|w| / 127 and
integers -127..127 (zero 127, maxq 254). Writes fixtures/gptq/gptq.safetensors:
  W (64, 160), H (160, 160) = X^T X (float64 sums, stored float32), Q (64, 160) = the peer's
  rounded weights, rtn (64, 160) = round to nearest on the same grid,
and prints ||(W - Q) X|| for GPTQ and for rounding to nearest.
tests/unit/test_gptq.c runs td_gptq_quantize on W and H and compares with Q.

Run: .venv/bin/python tests/reference/make_gptq_fixture.py
"""
import glob
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import types

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.7.1"


def load_peer(tmp):
    subprocess.run([sys.executable, "-m", "pip", "download", f"auto-gptq=={VERSION}",
                    "--no-deps", "--no-binary", ":all:", "-d", tmp, "-q"], check=True,
                   env=dict(os.environ, BUILD_CUDA_EXT="0"))  # its setup.py needs this
    with tarfile.open(glob.glob(os.path.join(tmp, "auto_gptq-*.tar.gz"))[0]) as t:
        t.extractall(tmp)
    src = glob.glob(os.path.join(tmp, "auto_gptq-*", "auto_gptq", "quantization"))[0]
    pkg = types.ModuleType("agq")
    pkg.__path__ = [src]
    sys.modules["agq"] = pkg
    for name in ("quantizer", "gptq"):
        spec = importlib.util.spec_from_file_location(f"agq.{name}", os.path.join(src, name + ".py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f"agq.{name}"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["agq.gptq"].GPTQ


def main():
    torch.manual_seed(7)
    R, C, N = 64, 160, 2048
    W = torch.randn(R, C) * 0.05
    W[:, :4] *= 6.0  # a few large columns: the grid is set by them
    A = torch.randn(C, C) / C ** 0.5 + torch.eye(C)
    X = (torch.randn(N, C) @ A) * torch.exp(torch.randn(C) * 0.7)
    with tempfile.TemporaryDirectory() as tmp:
        GPTQ = load_peer(tmp)
        layer = torch.nn.Linear(C, R, bias=False)
        layer.weight.data.copy_(W)
        g = GPTQ(layer)
        g.add_batch(X.unsqueeze(0), None)
        scale = W.abs().amax(1, keepdim=True) / 127.0
        g.quantizer.configure(8, perchannel=True, sym=True)
        g.quantizer.maxq = torch.tensor(254)
        g.quantizer.scale = scale.clone()
        g.quantizer.zero = torch.full((R, 1), 127.0)
        torch.cuda.synchronize = lambda *a, **k: None  # fasterquant's timing sync; CPU here
        g.fasterquant(blocksize=128, percdamp=0.01, actorder=True)
        Q = layer.weight.data.clone()
    rtn = torch.clamp(torch.round(W / scale), -127, 127) * scale
    H = (X.double().T @ X.double()).float()
    for name, M in (("GPTQ (auto-gptq)", Q), ("round to nearest", rtn)):
        print(f"{name:18s} ||(W - Q) X|| = {((W - M) @ X.T).norm():.5f}")
    save_file({"W": W.contiguous(), "H": H.contiguous(), "Q": Q.contiguous(),
               "rtn": rtn.contiguous()},
              os.path.join(HERE, "fixtures", "gptq", "gptq.safetensors"),
              metadata={"peer": f"auto-gptq {VERSION} GPTQ.fasterquant", "torch": torch.__version__})


if __name__ == "__main__":
    main()
