#!/usr/bin/env python3
"""bf16 reference: the fixture models under PyTorch's CPU autocast to bfloat16.

For each fixture NAME in {llama, llama_tied, gpt2} (made by make_fixtures.py), loads
fixtures/NAME with transformers in float32, runs the fixture's tokens through it inside
torch.autocast("cpu", dtype=torch.bfloat16) (matrix products in bf16, fp32 elsewhere, as
PyTorch users train in mixed precision) and writes fixtures/NAME/autocast_bf16.safetensors:
  logits (B*T, V) float32, loss (1) float32 -- mean cross-entropy of those logits.
tests/unit/test_bf16_reference.c compares tandem's bf16 forward with these.

Run: .venv/bin/python tests/reference/make_bf16_fixture.py
"""
import os

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)
HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    for name in ("llama", "llama_tied", "gpt2"):
        d = os.path.join(HERE, "fixtures", name)
        with safe_open(os.path.join(d, "reference.safetensors"), "pt") as f:
            tokens = f.get_tensor("tokens").long()
            targets = f.get_tensor("targets").long()
            ref = f.get_tensor("logits").float()
        model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=tokens, use_cache=False).logits
        logits = logits.float().reshape(-1, logits.shape[-1])
        loss = F.cross_entropy(logits, targets.reshape(-1))
        rel = ((logits - ref.reshape(logits.shape)).abs().max() / ref.abs().max()).item()
        save_file({"logits": logits.contiguous(), "loss": loss.reshape(1).float()},
                  os.path.join(d, "autocast_bf16.safetensors"),
                  metadata={"torch": torch.__version__, "autocast": "cpu bfloat16"})
        print(f"{name}: autocast bf16 loss {loss.item():.6f}, logits max rel diff to the "
              f"float64 reference {rel:.3e}")


if __name__ == "__main__":
    main()
