#!/usr/bin/env python3
"""Generate the knowledge-distillation reference fixture for tandem from PyTorch.

Writes tests/reference/fixtures/kd/reference.safetensors:

  s, t      student and teacher logits (N, V), float32 (the values the test feeds tandem)
  targets   int32 (N): the rows that count (>= 0); -1 rows are left out of every mean, and
            their targets are the labels of the cross-entropy part
  for each case C below, computed in float64 from those float32 values:
  loss.C    the loss (shape [1]): the mean over counted rows of
            tau^2 * F.kl_div(log_softmax(s_/tau), log_softmax(t_/tau), log_target=True)
            (forward: KL(teacher || student); reverse swaps the two arguments), mixed
            with the cross-entropy as alpha * CE(s, targets) + (1 - alpha) * KD when
            alpha > 0
  grad.C    d loss / d s (N, V), by autograd
  and the parameters of each case as metadata ("cases": JSON).

With top-k truncation (k > 0) the teacher keeps its k largest logits, renormalized over
them; forward KL compares them with the full student distribution at those entries, reverse
KL renormalizes the student over the same k entries.

Run: .venv/bin/python tests/reference/make_kd_fixture.py
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(7)
torch.set_num_threads(1)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "kd")

N, V = 7, 41
s32 = (torch.randn(N, V) * 2.0).float()
t32 = (torch.randn(N, V) * 3.0).float()
targets = torch.tensor([3, 17, -1, 40, 0, 22, 9], dtype=torch.int32)

CASES = [
    {"name": "fwd", "tau": 2.0, "reverse": False, "topk": 0, "alpha": 0.0},
    {"name": "rev", "tau": 2.0, "reverse": True, "topk": 0, "alpha": 0.0},
    {"name": "fwd_top5", "tau": 1.5, "reverse": False, "topk": 5, "alpha": 0.0},
    {"name": "rev_top5", "tau": 1.5, "reverse": True, "topk": 5, "alpha": 0.0},
    {"name": "fwd_tau1", "tau": 1.0, "reverse": False, "topk": 0, "alpha": 0.0},
    {"name": "mix_fwd", "tau": 2.0, "reverse": False, "topk": 0, "alpha": 0.3},
    {"name": "mix_rev_top8", "tau": 3.0, "reverse": True, "topk": 8, "alpha": 0.6},
]


def kd_loss(s, t, tau, reverse, topk):
    keep = targets >= 0
    s, t = s[keep], t[keep]
    if topk:
        tv, ti = t.topk(topk, dim=-1)
        lt = F.log_softmax(tv / tau, dim=-1)
        if reverse:
            ls = F.log_softmax(s.gather(-1, ti) / tau, dim=-1)
        else:
            ls = F.log_softmax(s / tau, dim=-1).gather(-1, ti)
    else:
        lt = F.log_softmax(t / tau, dim=-1)
        ls = F.log_softmax(s / tau, dim=-1)
    if reverse:  # KL(student || teacher)
        kl = F.kl_div(lt, ls, log_target=True, reduction="sum")
    else:  # KL(teacher || student)
        kl = F.kl_div(ls, lt, log_target=True, reduction="sum")
    return kl * tau * tau / keep.sum()


def ce_loss(s):
    return F.cross_entropy(s, targets.long(), ignore_index=-1, reduction="mean")


tensors = {"s": s32, "t": t32, "targets": targets}
for c in CASES:
    s = s32.double().clone().requires_grad_(True)
    t = t32.double()
    kd = kd_loss(s, t, c["tau"], c["reverse"], c["topk"])
    loss = c["alpha"] * ce_loss(s) + (1 - c["alpha"]) * kd if c["alpha"] > 0 else kd
    loss.backward()
    tensors["loss." + c["name"]] = loss.detach().reshape(1)
    tensors["grad." + c["name"]] = s.grad.detach().clone()
    print("%-13s tau %.1f %-7s top-k %d alpha %.1f: loss %.10f" %
          (c["name"], c["tau"], "reverse" if c["reverse"] else "forward", c["topk"], c["alpha"],
           loss.item()))

os.makedirs(OUT, exist_ok=True)
save_file({k: v.contiguous() for k, v in tensors.items()},
          os.path.join(OUT, "reference.safetensors"), metadata={"cases": json.dumps(CASES)})
print("wrote", os.path.join(OUT, "reference.safetensors"))
