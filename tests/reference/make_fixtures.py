#!/usr/bin/env python3
"""Generate tiny reference fixtures for tandem from real Hugging Face models.

For each model NAME in {llama, llama_tied, gpt2} this writes
tests/reference/fixtures/NAME/ with:

  config.json, model.safetensors   -- model.save_pretrained(..., safe_serialization=True), float32
  reference.safetensors            -- tokens, targets, logits, loss, grad.<param name>
  adamw.safetensors                -- (llama and gpt2 only) params after 3 clipped AdamW steps,
                                      plus loss.1..3 and grad_norm.1..3

Logits, loss and gradients are computed in float64 (then stored as float32).
HF's Llama code silently computes a few things in float32 even when the model
is float64 (RMSNorm, RoPE cos/sin, the eager softmax, the final logits cast);
those spots are patched below so the reference is float64 end to end. Every
fixture is also cross-checked against an independent from-scratch float64
implementation of the architecture (spec_forward_*), which doubles as an
executable statement of the conventions the C code must follow.

Run: .venv/bin/python tests/reference/make_fixtures.py
"""
import contextlib
import json
import math
import os
import shutil
import struct
import sys

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import safetensors  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

transformers.logging.set_verbosity_error()

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_ROOT = os.path.join(HERE, "fixtures")
B, T, V = 2, 8, 97

# Optimizer reference (adamw.safetensors): ADAMW_STEPS full-batch steps on the fixture's
# tokens/targets, each = forward, backward, clip_grad_norm_(max_norm), AdamW step, zero_grad.
ADAMW_STEPS = 3
ADAMW_LR = 1e-2
ADAMW_BETAS = (0.9, 0.95)
ADAMW_EPS = 1e-8
ADAMW_WD = 0.1          # only for params with dim >= 2 (matrices, embeddings)
ADAMW_MAX_NORM = 1.0
CLIP_EPS = 1e-6         # torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to <= 1


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------

def llama_config(tied):
    return LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4 if tied else 2,
        max_position_embeddings=16,
        vocab_size=V,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tied,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attn_implementation="eager",
    )


def gpt2_config():
    return GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=16,
        vocab_size=V,
        n_inner=None,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        attn_implementation="eager",
    )


def build_llama(tied, seed):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(tied))  # HF default init: N(0, 0.02), norms = 1
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, modeling_llama.LlamaRMSNorm):
                mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=gen))
    return model


def build_gpt2(seed):
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(gpt2_config())
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=gen))
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    return model


# --------------------------------------------------------------------------
# float64 patches for HF Llama (HF forces float32 in several places)
# --------------------------------------------------------------------------

def _rmsnorm_fwd_same_dtype(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _rope_fwd_same_dtype(self, x, position_ids):
    # Same math as LlamaRotaryEmbedding.forward (default rope type), but in x.dtype.
    inv_freq = self.inv_freq.to(x.dtype)
    freqs = position_ids[:, :, None].to(x.dtype) * inv_freq[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


@contextlib.contextmanager
def float64_patches():
    orig_norm = modeling_llama.LlamaRMSNorm.forward
    orig_rope = modeling_llama.LlamaRotaryEmbedding.forward
    orig_softmax = torch.nn.functional.softmax

    def softmax(input, dim=None, _stacklevel=3, dtype=None):
        if dtype == torch.float32 and input.dtype == torch.float64:
            dtype = None
        return orig_softmax(input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)

    modeling_llama.LlamaRMSNorm.forward = _rmsnorm_fwd_same_dtype
    modeling_llama.LlamaRotaryEmbedding.forward = _rope_fwd_same_dtype
    torch.nn.functional.softmax = softmax
    try:
        yield
    finally:
        modeling_llama.LlamaRMSNorm.forward = orig_norm
        modeling_llama.LlamaRotaryEmbedding.forward = orig_rope
        torch.nn.functional.softmax = orig_softmax


def to_float64(model):
    model.double()
    if isinstance(model, LlamaForCausalLM):
        # inv_freq was computed in float32 at construction; recompute it in float64.
        rot = model.model.rotary_emb
        dim = model.config.hidden_size // model.config.num_attention_heads
        inv = 1.0 / (model.config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        rot.inv_freq = inv
        rot.original_inv_freq = inv
    return model


def hf_logits(model, tokens):
    """Logits without HF's final `.float()` cast (LlamaForCausalLM casts to fp32 in 4.45)."""
    if isinstance(model, LlamaForCausalLM):
        h = model.model(input_ids=tokens, use_cache=False).last_hidden_state
    else:
        h = model.transformer(input_ids=tokens, use_cache=False).last_hidden_state
    return model.lm_head(h)


# --------------------------------------------------------------------------
# Independent float64 spec implementations (weights in HF layout)
# --------------------------------------------------------------------------

def spec_forward_llama(p, cfg, tokens):
    C = cfg.hidden_size
    H = cfg.num_attention_heads
    KV = cfg.num_key_value_heads
    D = C // H
    eps = cfg.rms_norm_eps
    Bn, Tn = tokens.shape

    def rmsnorm(x, w):
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

    # RoPE, HF "rotate_half" layout: dim i pairs with dim i + D/2 (NOT adjacent pairs);
    # frequency for i in [0, D/2): theta^(-2i/D).
    inv = cfg.rope_theta ** (-torch.arange(0, D // 2, dtype=torch.float64) * 2.0 / D)
    ang = torch.arange(Tn, dtype=torch.float64)[:, None] * inv[None, :]  # (T, D/2)
    cos, sin = ang.cos(), ang.sin()

    def rope(x):  # x: (B, h, T, D)
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    mask = torch.ones(Tn, Tn, dtype=torch.bool).tril()
    x = p["model.embed_tokens.weight"][tokens]
    for li in range(cfg.num_hidden_layers):
        pre = f"model.layers.{li}."
        h = rmsnorm(x, p[pre + "input_layernorm.weight"])
        q = (h @ p[pre + "self_attn.q_proj.weight"].T).view(Bn, Tn, H, D).transpose(1, 2)
        k = (h @ p[pre + "self_attn.k_proj.weight"].T).view(Bn, Tn, KV, D).transpose(1, 2)
        v = (h @ p[pre + "self_attn.v_proj.weight"].T).view(Bn, Tn, KV, D).transpose(1, 2)
        q, k = rope(q), rope(k)
        # GQA: query head j uses kv head j // (H // KV)
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(Bn, Tn, C)
        x = x + y @ p[pre + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, p[pre + "post_attention_layernorm.weight"])
        g = h @ p[pre + "mlp.gate_proj.weight"].T
        u = h @ p[pre + "mlp.up_proj.weight"].T
        x = x + (F.silu(g) * u) @ p[pre + "mlp.down_proj.weight"].T
    x = rmsnorm(x, p["model.norm.weight"])
    w_out = p["model.embed_tokens.weight"] if cfg.tie_word_embeddings else p["lm_head.weight"]
    return x @ w_out.T


def spec_forward_gpt2(p, cfg, tokens):
    C = cfg.n_embd
    H = cfg.n_head
    D = C // H
    eps = cfg.layer_norm_epsilon
    Bn, Tn = tokens.shape

    def ln(x, w, b):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased variance
        return (x - mu) / torch.sqrt(var + eps) * w + b

    def gelu_new(x):  # tanh approximation
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))

    mask = torch.ones(Tn, Tn, dtype=torch.bool).tril()
    x = p["transformer.wte.weight"][tokens] + p["transformer.wpe.weight"][:Tn][None]
    for li in range(cfg.n_layer):
        pre = f"transformer.h.{li}."
        h = ln(x, p[pre + "ln_1.weight"], p[pre + "ln_1.bias"])
        # Conv1D: weight stored (in, out); y = x @ W + b (no transpose)
        qkv = h @ p[pre + "attn.c_attn.weight"] + p[pre + "attn.c_attn.bias"]
        q, k, v = qkv.split(C, dim=-1)
        q, k, v = (t.view(Bn, Tn, H, D).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(Bn, Tn, C)
        x = x + y @ p[pre + "attn.c_proj.weight"] + p[pre + "attn.c_proj.bias"]
        h = ln(x, p[pre + "ln_2.weight"], p[pre + "ln_2.bias"])
        h = gelu_new(h @ p[pre + "mlp.c_fc.weight"] + p[pre + "mlp.c_fc.bias"])
        x = x + h @ p[pre + "mlp.c_proj.weight"] + p[pre + "mlp.c_proj.bias"]
    x = ln(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"])
    return x @ p["transformer.wte.weight"].T  # lm_head always tied to wte


# --------------------------------------------------------------------------
# Optimizer reference
# --------------------------------------------------------------------------

def spec_adamw_run(p0, cfg, tokens, targets):
    """Hand-written float64 clip + AdamW loop on the spec forward (no torch.optim).

    Conventions (match torch 1.13 clip_grad_norm_ + AdamW, single-tensor path):
      norm   = sqrt(sum over all params of sum(g^2))      (tied matrix counted once)
      g     *= min(1, max_norm / (norm + 1e-6))
      p     *= 1 - lr * wd            (wd = 0.1 if p.dim() >= 2 else 0; decoupled, before the moments)
      m      = b1 m + (1 - b1) g
      v      = b2 v + (1 - b2) g^2
      p     -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)      t = 1, 2, 3
    """
    fwd = spec_forward_gpt2 if isinstance(cfg, GPT2Config) else spec_forward_llama
    b1, b2 = ADAMW_BETAS
    p = {n: t.detach().clone() for n, t in p0.items()}
    m = {n: torch.zeros_like(t) for n, t in p.items()}
    v = {n: torch.zeros_like(t) for n, t in p.items()}
    losses, norms = [], []
    for t in range(1, ADAMW_STEPS + 1):
        leaf = {n: x.clone().requires_grad_(True) for n, x in p.items()}
        loss = F.cross_entropy(fwd(leaf, cfg, tokens).view(-1, V), targets.view(-1))
        loss.backward()
        g = {n: x.grad for n, x in leaf.items()}
        norm = math.sqrt(sum((x * x).sum().item() for x in g.values()))
        scale = min(1.0, ADAMW_MAX_NORM / (norm + CLIP_EPS))
        for n in p:
            gn = g[n] * scale
            wd = ADAMW_WD if p[n].dim() >= 2 else 0.0
            p[n] = p[n] * (1.0 - ADAMW_LR * wd)
            m[n] = b1 * m[n] + (1.0 - b1) * gn
            v[n] = b2 * v[n] + (1.0 - b2) * gn * gn
            denom = v[n].sqrt() / math.sqrt(1.0 - b2 ** t) + ADAMW_EPS
            p[n] = p[n] - (ADAMW_LR / (1.0 - b1 ** t)) * m[n] / denom
        losses.append(loss.item())
        norms.append(norm)
    return p, losses, norms


def torch_adamw_run(model, tokens, targets, patched):
    """ADAMW_STEPS steps with torch.nn.utils.clip_grad_norm_ and torch.optim.AdamW."""
    params = [p for _, p in model.named_parameters()]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": ADAMW_WD},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=ADAMW_LR, betas=ADAMW_BETAS, eps=ADAMW_EPS)
    model.zero_grad(set_to_none=True)
    losses, norms = [], []
    for _ in range(ADAMW_STEPS):
        with float64_patches() if patched else contextlib.nullcontext():
            logits = hf_logits(model, tokens)
        loss = F.cross_entropy(logits.view(-1, V), targets.view(-1))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=ADAMW_MAX_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        norms.append(norm.item())
    return losses, norms


def make_adamw(name, out, model_cls, tokens, targets, ref_loss, seed):
    """Write out/adamw.safetensors, starting from the saved float32 model.safetensors."""
    model = model_cls.from_pretrained(out, attn_implementation="eager")
    model.eval()
    p0 = {n: p.detach().double().clone() for n, p in model.named_parameters()}  # exact widening
    to_float64(model)
    for n, p in model.named_parameters():
        assert p.dtype == torch.float64 and torch.equal(p.detach(), p0[n]), n
    losses, norms = torch_adamw_run(model, tokens, targets, patched=True)
    final = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, p in final.items():
        assert p.dtype == torch.float64, n
    assert abs(losses[0] - ref_loss) <= 1e-12 * abs(ref_loss), (losses[0], ref_loss)

    # Independent check: hand-written clip + AdamW on the spec forward.
    sp, slosses, snorms = spec_adamw_run(p0, model.config, tokens, targets)
    d_param = max((sp[n] - final[n]).abs().max().item() for n in final)
    d_loss = max(abs(a - b) / abs(b) for a, b in zip(slosses, losses))
    d_norm = max(abs(a - b) / abs(b) for a, b in zip(snorms, norms))
    assert d_param < 1e-12, f"{name}: spec vs torch AdamW params abs diff {d_param}"
    assert d_loss < 1e-12 and d_norm < 1e-12, f"{name}: spec vs torch AdamW loss/norm {d_loss} {d_norm}"

    # Plausibility: plain float32 HF + torch AdamW from the same start (printed only).
    m32 = model_cls.from_pretrained(out, attn_implementation="eager")
    m32.eval()
    losses32, _ = torch_adamw_run(m32, tokens, targets, patched=False)
    d32 = max((p.detach().double() - final[n]).abs().max().item() for n, p in m32.named_parameters())
    d32_loss = max(abs(a - b) for a, b in zip(losses32, losses))

    tensors = {}
    for n, p in final.items():
        tensors["param." + n] = p.float().contiguous()
    for i in range(ADAMW_STEPS):
        tensors[f"loss.{i + 1}"] = torch.tensor([losses[i]], dtype=torch.float64).float()
        tensors[f"grad_norm.{i + 1}"] = torch.tensor([norms[i]], dtype=torch.float64).float()
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "safetensors": safetensors.__version__}
    metadata = dict(versions)
    metadata.update({
        "versions": json.dumps(versions, sort_keys=True),
        "model": name,
        "seed": str(seed),
        "B": str(B), "T": str(T), "V": str(V),
        "compute_dtype": "float64",
        "steps": str(ADAMW_STEPS),
        "lr": repr(ADAMW_LR),
        "beta1": repr(ADAMW_BETAS[0]),
        "beta2": repr(ADAMW_BETAS[1]),
        "eps": repr(ADAMW_EPS),
        "weight_decay": repr(ADAMW_WD),
        "weight_decay_rule": "weight_decay for params with dim >= 2, 0 for 1-D params",
        "max_grad_norm": repr(ADAMW_MAX_NORM),
        "step": "loss = cross_entropy(model(tokens), targets) (no shift); backward; "
                "clip_grad_norm_(max_norm); AdamW.step(); zero_grad",
        "loss.k": "loss at the start of step k, before its update",
        "grad_norm.k": "total L2 grad norm of step k, before clipping",
    })
    path = os.path.join(out, "adamw.safetensors")
    save_file(tensors, path, metadata=metadata)
    canonicalize_header(path)
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == metadata
        for k, t in tensors.items():
            assert torch.equal(f.get_tensor(k), t), k
    moved = max((final[n] - p0[n]).abs().max().item() for n in final)
    print(f"    adamw: loss={['%.6f' % x for x in losses]}  grad_norm={['%.6f' % x for x in norms]}")
    print(f"    adamw: max|dparam|={moved:.2e}  spec_vs_torch64(params={d_param:.1e}, "
          f"loss={d_loss:.1e}, norm={d_norm:.1e})  hf32_vs_64(params={d32:.1e}, loss={d32_loss:.1e})  "
          f"{os.path.getsize(path)} bytes")
    return losses, norms


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

def max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def canonicalize_header(path):
    """Rewrite a safetensors header with sorted JSON keys.

    safetensors stores __metadata__ in a hash map, so its key order (and hence the
    file bytes) changes from run to run. Tensor data and offsets are untouched;
    the header is re-padded with spaces to a multiple of 8 as the format allows.
    """
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = {}
    if meta is not None:
        ordered["__metadata__"] = dict(sorted(meta.items()))
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def make_fixture(name, model, seed, adamw=False):
    out = os.path.join(OUT_ROOT, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)

    model.eval()
    model.save_pretrained(out, safe_serialization=True)  # float32 weights

    gen = torch.Generator().manual_seed(seed + 2000)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    targets = torch.randint(0, V, (B, T), generator=gen)

    # Plain (unpatched) HF float32 forward, for a sanity comparison.
    with torch.no_grad():
        logits32 = model(input_ids=tokens, use_cache=False).logits.double()

    to_float64(model)
    with float64_patches():
        logits = hf_logits(model, tokens)
    assert logits.dtype == torch.float64
    loss = F.cross_entropy(logits.view(-1, V), targets.view(-1))
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    for n, g in grads.items():
        assert g.dtype == torch.float64, n

    # Independent spec implementation, float64, with its own autograd.
    cfg = model.config
    spec_params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    spec_fwd = spec_forward_gpt2 if isinstance(model, GPT2LMHeadModel) else spec_forward_llama
    spec_logits = spec_fwd(spec_params, cfg, tokens)
    spec_loss = F.cross_entropy(spec_logits.view(-1, V), targets.view(-1))
    spec_loss.backward()
    d_logits = max_rel(spec_logits.detach(), logits.detach())
    d_grad = max(max_rel(spec_params[n].grad, grads[n]) for n in grads)
    assert d_logits < 1e-12, f"{name}: spec vs HF float64 logits rel diff {d_logits}"
    assert d_grad < 1e-10, f"{name}: spec vs HF float64 grad rel diff {d_grad}"
    d32 = max_rel(logits32, logits.detach())
    assert d32 < 1e-5, f"{name}: HF float32 vs float64 logits rel diff {d32}"

    tensors = {
        "tokens": tokens.to(torch.int32).contiguous(),
        "targets": targets.to(torch.int32).contiguous(),
        "logits": logits.detach().float().contiguous(),
        "loss": loss.detach().float().reshape(1).contiguous(),
    }
    for n, g in grads.items():
        tensors["grad." + n] = g.float().contiguous()
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "safetensors": safetensors.__version__}
    metadata = dict(versions)
    metadata.update({
        "versions": json.dumps(versions, sort_keys=True),
        "model": name,
        "seed": str(seed),
        "B": str(B), "T": str(T), "V": str(V),
        "compute_dtype": "float64",
        "loss": "mean cross_entropy(logits[b,t], targets[b,t]) over all B*T positions, no shift",
    })
    ref_path = os.path.join(out, "reference.safetensors")
    save_file(tensors, ref_path, metadata=metadata)
    canonicalize_header(ref_path)

    # Read back through safetensors to make sure the rewritten file is valid and exact.
    with safe_open(ref_path, framework="pt") as f:
        assert f.metadata() == metadata
        for k, t in tensors.items():
            assert torch.equal(f.get_tensor(k), t), k
    sizes = {f: os.path.getsize(os.path.join(out, f)) for f in sorted(os.listdir(out))}
    nparam = sum(p.numel() for p in model.parameters())
    print(f"{name:11s} loss={loss.item():.6f}  params={nparam}  "
          f"spec_vs_hf64(logits={d_logits:.1e}, grads={d_grad:.1e})  hf32_vs_hf64={d32:.1e}")
    for f, s in sizes.items():
        print(f"    {f:24s} {s:8d} bytes")
    if adamw:
        make_adamw(name, out, type(model), tokens, targets, loss.item(), seed)
    return loss.item()


def main():
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  "
          f"safetensors {safetensors.__version__}")
    make_fixture("llama", build_llama(tied=False, seed=1234), seed=1234, adamw=True)
    make_fixture("llama_tied", build_llama(tied=True, seed=5678), seed=5678)
    make_fixture("gpt2", build_gpt2(seed=4321), seed=4321, adamw=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
