#!/usr/bin/python3
"""PyTorch peer for tandem's training-throughput benchmark.

Plain eager-mode fp32 PyTorch (works with torch 1.13, no transformers):

  --arch gpt2   nanoGPT / llm.c train_gpt2.py style GPT-2: token + learned
                position embeddings (wpe sized max(T, --positions)),
                pre-LayerNorm blocks, fused c_attn Linear(C,3C) + c_proj,
                MLP C->F->C with tanh-GELU, final LayerNorm, lm_head tied to
                wte, biases everywhere, no dropout.
  --arch llama  RMSNorm, RoPE (rotate_half), SwiGLU MLP with hidden size --ffn,
                grouped-query attention (--kv-heads), no biases, untied lm_head.

One step = forward on a fixed random token batch, cross-entropy, backward,
clip_grad_norm_(1.0), AdamW(lr 3e-4, betas (0.9, 0.95), wd 0.1 on >=2-D
weights as in nanoGPT/llm.c), zero_grad(set_to_none=True).
W untimed warmup steps, then N steps each timed with time.perf_counter.
"""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------
# GPT-2
# --------------------------------------------------------------------------
class GPT2Attention(nn.Module):
    def __init__(self, C, H, T):
        super().__init__()
        assert C % H == 0
        self.H = H
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool)).view(1, 1, T, T)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        H, hd = self.H, C // self.H
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, H, hd).transpose(1, 2)
        k = k.view(B, T, H, hd).transpose(1, 2)
        v = v.view(B, T, H, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class GPT2MLP(nn.Module):
    def __init__(self, C, F_):
        super().__init__()
        self.c_fc = nn.Linear(C, F_)
        self.c_proj = nn.Linear(F_, C)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, C, H, F_, T):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C)
        self.attn = GPT2Attention(C, H, T)
        self.ln_2 = nn.LayerNorm(C)
        self.mlp = GPT2MLP(C, F_)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT2(nn.Module):
    def __init__(self, L, H, C, F_, V, T, positions):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(max(T, positions), C)
        self.h = nn.ModuleList([GPT2Block(C, H, F_, T) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        # GPT-2 init (std 0.02, residual projections scaled by 1/sqrt(2L))
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02
                if name.endswith("c_proj.weight"):
                    std = 0.02 / math.sqrt(2 * L)
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        B, T = idx.shape
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for blk in self.h:
            x = blk(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


# --------------------------------------------------------------------------
# Llama
# --------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, C, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(C))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, C, H, K, T, theta=10000.0):
        super().__init__()
        assert C % H == 0 and H % K == 0
        self.H, self.K, self.hd = H, K, C // H
        hd = self.hd
        assert hd % 2 == 0
        self.q_proj = nn.Linear(C, H * hd, bias=False)
        self.k_proj = nn.Linear(C, K * hd, bias=False)
        self.v_proj = nn.Linear(C, K * hd, bias=False)
        self.o_proj = nn.Linear(H * hd, C, bias=False)
        inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        t = torch.arange(T, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
        self.register_buffer("cos", emb.cos()[None, None], persistent=False)
        self.register_buffer("sin", emb.sin()[None, None], persistent=False)
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool)).view(1, 1, T, T)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        H, K, hd = self.H, self.K, self.hd
        q = self.q_proj(x).view(B, T, H, hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, K, hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, K, hd).transpose(1, 2)
        cos, sin = self.cos[:, :, :T], self.sin[:, :, :T]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if K != H:
            rep = H // K
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, H * hd)
        return self.o_proj(y)


class LlamaMLP(nn.Module):
    def __init__(self, C, F_):
        super().__init__()
        self.gate_proj = nn.Linear(C, F_, bias=False)
        self.up_proj = nn.Linear(C, F_, bias=False)
        self.down_proj = nn.Linear(F_, C, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, C, H, K, F_, T):
        super().__init__()
        self.input_layernorm = RMSNorm(C)
        self.self_attn = LlamaAttention(C, H, K, T)
        self.post_attention_layernorm = RMSNorm(C)
        self.mlp = LlamaMLP(C, F_)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class Llama(nn.Module):
    def __init__(self, L, H, K, C, F_, V, T):
        super().__init__()
        self.embed_tokens = nn.Embedding(V, C)
        self.layers = nn.ModuleList([LlamaBlock(C, H, K, F_, T) for _ in range(L)])
        self.norm = RMSNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02
                if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                    std = 0.02 / math.sqrt(2 * L)
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx, targets):
        x = self.embed_tokens(idx)
        for blk in self.layers:
            x = blk(x)
        logits = self.lm_head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


# --------------------------------------------------------------------------
# benchmark driver
# --------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PyTorch training-throughput peer for tandem")
    p.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=0,
                   help="llama only; 0 = same as --heads")
    p.add_argument("--embd", type=int, default=768)
    p.add_argument("--ffn", type=int, default=0,
                   help="MLP hidden size; 0 = 4*C (gpt2) or "
                        "round_up(8*C/3, 64) (llama)")
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--positions", type=int, default=1024,
                   help="gpt2 wpe rows = max(--seq, --positions)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="0 = os.cpu_count()")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.add_argument("--autocast-bf16", action="store_true",
                   help="forward (and so backward) under torch.autocast(bfloat16): mixed "
                        "precision as PyTorch users run it; master weights stay fp32")
    p.add_argument("--profile", action="store_true",
                   help="profile one extra step; table to stderr")
    a = p.parse_args(argv)
    if a.kv_heads <= 0:
        a.kv_heads = a.heads
    if a.ffn <= 0:
        if a.arch == "gpt2":
            a.ffn = 4 * a.embd
        else:
            a.ffn = ((8 * a.embd // 3) + 63) // 64 * 64
    if a.threads <= 0:
        a.threads = os.cpu_count() or 1
    if a.steps < 1:
        p.error("--steps must be >= 1")
    return a


def build_model(a):
    if a.arch == "gpt2":
        return GPT2(a.layers, a.heads, a.embd, a.ffn, a.vocab, a.seq, a.positions)
    return Llama(a.layers, a.heads, a.kv_heads, a.embd, a.ffn, a.vocab, a.seq)


def make_optimizer(model):
    # nanoGPT / llm.c convention: decay matrices & embeddings, not biases/norms.
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), eps=1e-8)


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)

    model = build_model(a).to(dev)
    model.train()
    # parameters() de-duplicates tied weights, so wte is counted once.
    n_params = sum(p.numel() for p in model.parameters())
    opt = make_optimizer(model)

    g = torch.Generator().manual_seed(a.seed + 1)
    data = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=g)
    x = data[:, :-1].contiguous().to(dev)
    y = data[:, 1:].contiguous().to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step():
        if a.autocast_bf16:
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = model(x, y)
        else:
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(a.warmup):
        step()
    sync()

    times = []
    loss = None
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    final_loss = float(loss.item())

    if a.profile:
        with torch.autograd.profiler.profile() as prof:
            step()
            sync()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15),
              file=sys.stderr)

    med = statistics.median(times)
    mean = statistics.fmean(times) if hasattr(statistics, "fmean") else statistics.mean(times)
    tok = a.batch * a.seq
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    res = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "arch": a.arch,
        "layers": a.layers,
        "embd": a.embd,
        "heads": a.heads,
        "kv_heads": a.kv_heads,
        "ffn": a.ffn,
        "vocab": a.vocab,
        "batch": a.batch,
        "seq": a.seq,
        "threads": a.threads,
        "params": n_params,
        "steps": a.steps,
        "warmup": a.warmup,
        "tokens_per_s": tok / med,
        "ms_per_step_median": med * 1e3,
        "ms_per_step_mean": mean * 1e3,
        "final_loss": final_loss,
        "peak_rss_bytes": rss,
    }
    if a.json:
        print(json.dumps(res), flush=True)
    else:
        print("pytorch %s %s L%d H%d/%d C%d F%d V%d B%d T%d threads=%d params=%.2fM: "
              "%.1f tok/s, %.1f ms/step median, %.1f ms/step mean, loss %.4f, "
              "peak RSS %.1f MiB"
              % (torch.__version__, a.arch, a.layers, a.heads, a.kv_heads, a.embd,
                 a.ffn, a.vocab, a.batch, a.seq, a.threads, n_params / 1e6,
                 res["tokens_per_s"], res["ms_per_step_median"],
                 res["ms_per_step_mean"], final_loss, rss / 2**20), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
