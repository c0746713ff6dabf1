#!/usr/bin/env python3
"""Generate the LoRA reference fixture for tandem from Hugging Face `peft`.

Writes tests/reference/fixtures/lora/:

  config.json, generation_config.json, model.safetensors
        the base: a tiny LlamaForCausalLM (GQA, untied), model.save_pretrained, float32
  adapter/adapter_config.json, adapter/adapter_model.safetensors
        a peft LoRA adapter on all seven llama matrices (r=4, lora_alpha=8, so scale 2),
        PeftModel.save_pretrained, float32; lora_B is random (not PEFT's zero init) so
        that the adapter changes the output and lora_A gets a gradient
  reference.safetensors
        tokens, targets (tandem's convention: already shifted, -1 = not counted), logits,
        loss, grad.<adapter tensor name> for every lora_A / lora_B, and
        merged.<HF name> for every targeted matrix after merge_and_unload(), and
        dropout.loss, dropout.grad.<adapter tensor name>: the same batch with LoRA dropout
        p = 0.25, PEFT's lora_dropout modules given tandem's counter-based masks
        (dropout_masks below, docs/finetune.md "LoRA dropout")

As in make_fixtures.py the reference runs in float64 end to end (the same patches of the
places where HF Llama computes in float32), starting from the exact float32 values that
were saved. It is cross-checked against an independent float64 computation: make_fixtures'
spec_forward_llama with each targeted W replaced by W + (alpha/r) B A, differentiated by
autograd with respect to A and B; and the float64 loss against HF's own shifted-labels
loss (model(input_ids, labels=...)) of the same batch.

Run: .venv/bin/python tests/reference/make_lora_fixture.py
peft is installed with --no-deps (see requirements.txt).
"""
import json
import os
import shutil
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_fixtures as mf  # noqa: E402  (sets torch to 1 thread, deterministic algorithms)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import peft  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

OUT = os.path.join(HERE, "fixtures", "lora")
SEED = 2468
B, T, V = 2, 12, 300
R, ALPHA = 4, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IGNORE = -1  # tandem's "not counted" target

# Which targets of each row count, like an SFT batch that trains on the assistant's tokens
# only: row 0 is one prompt then one answer; row 1 is prompt, answer, second prompt, second
# answer, then padding.
COUNTED = [
    [0] * 5 + [1] * 7,
    [0] * 3 + [1] * 4 + [0] * 2 + [1] * 2 + [0] * 1,
]


def base_config():
    return LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        vocab_size=V,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attn_implementation="eager",
    )


def build_base():
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(base_config())  # HF default init: N(0, 0.02), norms = 1
    gen = torch.Generator().manual_seed(SEED + 1000)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, modeling_llama.LlamaRMSNorm):
                mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=gen))
    model.eval()
    return model


def lora_config():
    return LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS),
                      bias="none", task_type="CAUSAL_LM")


def saved_name(param_name):
    """named_parameters() name -> the name save_pretrained writes (no adapter name)."""
    assert ".default." in param_name, param_name
    return param_name.replace(".default.", ".")


def lora_params(peft_model):
    return {saved_name(n): p for n, p in peft_model.named_parameters() if "lora_" in n}


def make_batch():
    gen = torch.Generator().manual_seed(SEED + 2000)
    seq = torch.randint(0, V, (B, T + 1), generator=gen)
    tokens = seq[:, :T]
    counted = torch.tensor(COUNTED, dtype=torch.bool)
    targets = torch.where(counted, seq[:, 1:], torch.full((B, T), IGNORE))
    # HF's convention for the same batch: labels aligned with input_ids (shifted inside the
    # model); the model sees seq (T+1 tokens), whose first T logits equal those of tokens.
    labels = torch.full((B, T + 1), -100)
    labels[:, 1:] = torch.where(counted, seq[:, 1:], torch.full((B, T), -100))
    return seq, tokens, targets, labels


def tandem_loss(logits, targets):
    """Mean cross-entropy over the counted positions; logits[b, t] predict targets[b, t]."""
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=IGNORE)


def spec_check(base_params, adapter, cfg, tokens, targets):
    """Independent float64 LoRA: W_eff = W + (alpha/r) B A in spec_forward_llama."""
    scale = ALPHA / R
    leaves = {n: t.detach().double().clone().requires_grad_(True) for n, t in adapter.items()}
    p = {n: t.detach().double() for n, t in base_params.items()}
    for li in range(cfg.num_hidden_layers):
        for tgt in TARGETS:
            sub = "self_attn" if tgt in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            hf = f"model.layers.{li}.{sub}.{tgt}"
            a = leaves[f"base_model.model.{hf}.lora_A.weight"]
            b = leaves[f"base_model.model.{hf}.lora_B.weight"]
            p[hf + ".weight"] = p[hf + ".weight"] + scale * (b @ a)
    logits = mf.spec_forward_llama(p, cfg, tokens)
    loss = tandem_loss(logits, targets)
    loss.backward()
    return logits.detach(), loss.detach(), {n: t.grad for n, t in leaves.items()}


DROP_P, DROP_KEY = 0.25, 0x5EED1234ABCD
M64 = (1 << 64) - 1


def mix64(z):
    """splitmix64's output function (common/rng.c td_mix64), on uint64 numpy arrays."""
    z = np.asarray(z, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def dropout_masks(code, n_ex, T, width, p, key):
    """Kept (1) or dropped (0) for each (example, position, input element) of adapter site
    `code` (layer * 8 + the target's index in TARGETS): tandem's masks, written from its
    documented definition."""
    with np.errstate(over="ignore"):
        sk = mix64(np.uint64(key) ^ np.uint64(code))
        e = np.arange(n_ex, dtype=np.uint64)[:, None]
        t = np.arange(T, dtype=np.uint64)[None, :]
        row = mix64(mix64(sk ^ e) ^ t)  # (n_ex, T)
        q = np.arange((width + 3) // 4, dtype=np.uint64)
        w = mix64(row[..., None] + q)  # (n_ex, T, Q)
        bits = np.stack([(w >> np.uint64(16 * i)) & np.uint64(0xFFFF) for i in range(4)], -1)
    bits = bits.reshape(n_ex, T, -1)[..., :width]
    return torch.from_numpy((bits >= np.uint64(int(p * 65536))).astype(np.float64))


class FixedDropout(torch.nn.Module):
    """Stands in for PEFT's lora_dropout: x * mask / (1 - p)."""

    def __init__(self, mask, p):
        super().__init__()
        self.mask, self.scale = mask, 1.0 / (1.0 - p)

    def forward(self, x):
        return x * self.mask.to(x.dtype) * self.scale


def dropout_reference(pm64, tokens, targets):
    """Loss and adapter gradients with LoRA dropout, each PEFT lora_dropout module replaced by
    its site's fixed masks; the modules are put back afterwards."""
    saved, kept, total = [], 0.0, 0
    for li, layer in enumerate(pm64.base_model.model.model.layers):
        for k, tgt in enumerate(TARGETS):
            sub = layer.self_attn if tgt in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp
            mod = getattr(sub, tgt)
            width = mod.base_layer.in_features
            mask = dropout_masks(li * 8 + k, B, T, width, DROP_P, DROP_KEY)
            kept, total = kept + mask.sum().item(), total + mask.numel()
            saved.append((mod, mod.lora_dropout["default"]))
            mod.lora_dropout["default"] = FixedDropout(mask, DROP_P)
    pm64.zero_grad(set_to_none=True)
    with mf.float64_patches():
        logits = mf.hf_logits(pm64.base_model.model, tokens)
    loss = tandem_loss(logits, targets)
    loss.backward()
    grads = {saved_name(n): p.grad.detach().clone() for n, p in pm64.named_parameters()
             if "lora_" in n}
    for mod, orig in saved:
        mod.lora_dropout["default"] = orig
    pm64.zero_grad(set_to_none=True)
    return loss.detach(), grads, kept / total


def max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def main():
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  "
          f"peft {peft.__version__}  safetensors {safetensors.__version__}")
    transformers.logging.set_verbosity_error()
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    adir = os.path.join(OUT, "adapter")
    os.makedirs(adir)

    # ---- base model, saved float32 ----
    base = build_base()
    base.save_pretrained(OUT, safe_serialization=True)
    base_params = {n: p.detach().clone() for n, p in base.named_parameters()}

    # ---- adapter: PEFT's A init (kaiming uniform, seeded), B random instead of zero ----
    torch.manual_seed(SEED + 3000)
    pm = get_peft_model(base, lora_config())
    pm.eval()
    gen = torch.Generator().manual_seed(SEED + 4000)
    with torch.no_grad():
        for n, p in sorted(pm.named_parameters()):
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    adapter32 = {n: p.detach().clone() for n, p in lora_params(pm).items()}
    for n, p in pm.named_parameters():
        assert p.requires_grad == ("lora_" in n), n
    with warnings.catch_warnings():  # "Could not find a config file in": the base has no name
        warnings.filterwarnings("ignore", message="Could not find a config file")
        pm.save_pretrained(adir, safe_serialization=True)
    # save_pretrained also writes a model card; and it stores target_modules from a set, in an
    # order that changes with PYTHONHASHSEED: sort it so the files are reproducible.
    readme = os.path.join(adir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    cpath = os.path.join(adir, "adapter_config.json")
    with open(cpath) as f:
        acfg = json.load(f)
    acfg["target_modules"] = sorted(acfg["target_modules"])
    acfg["base_model_name_or_path"] = ".."
    with open(cpath, "w") as f:
        json.dump(acfg, f, indent=2, sort_keys=True)
        f.write("\n")
    mf.canonicalize_header(os.path.join(adir, "adapter_model.safetensors"))

    seq, tokens, targets, labels = make_batch()

    # ---- float32 PEFT, unpatched (plausibility only) ----
    with torch.no_grad():
        logits32 = pm(input_ids=tokens, use_cache=False).logits.double()

    # ---- reload from the files, float64, the reference ----
    base64 = LlamaForCausalLM.from_pretrained(OUT, attn_implementation="eager")
    base64.eval()
    with torch.no_grad():
        base_logits32 = base64(input_ids=tokens, use_cache=False).logits.double()
    pm64 = PeftModel.from_pretrained(base64, adir, is_trainable=True)
    pm64.eval()
    for n, p in lora_params(pm64).items():
        assert torch.equal(p.detach(), adapter32[n]), f"{n} did not round-trip"
    llama = pm64.base_model.model
    assert isinstance(llama, LlamaForCausalLM)
    mf.to_float64(llama)
    with mf.float64_patches():
        logits = mf.hf_logits(llama, tokens)
    assert logits.dtype == torch.float64
    loss = tandem_loss(logits, targets)
    pm64.zero_grad(set_to_none=True)
    loss.backward()
    grads = {}
    for n, p in pm64.named_parameters():
        if "lora_" in n:
            assert p.grad is not None and p.grad.dtype == torch.float64, n
            grads[saved_name(n)] = p.grad.detach().clone()
        else:
            assert p.grad is None, f"{n}: a frozen base weight got a gradient"
    assert len(grads) == 2 * len(TARGETS) * base_config().num_hidden_layers

    # HF's own loss (its label shift and -100) on the T+1 sequence: the same number.
    with torch.no_grad(), mf.float64_patches():
        hf_loss = llama(input_ids=seq, labels=labels, use_cache=False).loss.item()
    d_hfloss = abs(hf_loss - loss.item()) / loss.item()
    assert d_hfloss < 1e-6, f"HF labels loss {hf_loss} vs {loss.item()}"  # HF's loss upcasts to fp32

    # Independent float64 check of logits, loss and every gradient.
    s_logits, s_loss, s_grads = spec_check(base_params, adapter32, llama.config, tokens, targets)
    d_logits = max_rel(s_logits, logits.detach())
    d_loss = abs(s_loss.item() - loss.item()) / loss.item()
    d_grad = max(max_rel(s_grads[n], grads[n]) for n in grads)
    assert d_logits < 1e-12 and d_loss < 1e-12, (d_logits, d_loss)
    assert d_grad < 1e-10, f"spec vs peft grads {d_grad}"
    d32 = max_rel(logits32, logits.detach())
    assert d32 < 1e-5, f"float32 peft vs float64 logits {d32}"
    d_base = max_rel(base_logits32, logits.detach())
    assert d_base > 1e-2, f"the adapter hardly changes the logits ({d_base})"

    # ---- LoRA dropout with tandem's masks ----
    d_loss_ref, d_grads, kept = dropout_reference(pm64, tokens, targets)
    assert abs(kept - (1 - DROP_P)) < 0.02, f"kept share {kept}"
    assert abs(d_loss_ref.item() - loss.item()) > 1e-4, "dropout did not change the loss"

    # ---- merge_and_unload (float64), stored as float32 ----
    merged_model = pm64.merge_and_unload()
    assert isinstance(merged_model, LlamaForCausalLM)
    merged_all = dict(merged_model.named_parameters())
    assert sorted(merged_all) == sorted(base_params), "merge_and_unload changed the names"
    merged = {}
    scale = ALPHA / R
    for hf, w in merged_all.items():
        w = w.detach()
        mod = hf[: -len(".weight")]
        if mod.split(".")[-1] in TARGETS:
            a = adapter32[f"base_model.model.{mod}.lora_A.weight"].double()
            b = adapter32[f"base_model.model.{mod}.lora_B.weight"].double()
            want = base_params[hf].double() + scale * (b @ a)
            assert (w - want).abs().max().item() < 1e-14, hf
            merged[hf] = w
        else:
            assert torch.equal(w, base_params[hf].double()), f"{hf} changed in the merge"
    with torch.no_grad(), mf.float64_patches():
        merged_logits = mf.hf_logits(merged_model, tokens)
    d_merged = max_rel(merged_logits, logits.detach())
    assert d_merged < 1e-12, f"merged vs adapter logits {d_merged}"

    # ---- reference.safetensors ----
    tensors = {
        "tokens": tokens.to(torch.int32).contiguous(),
        "targets": targets.to(torch.int32).contiguous(),
        "logits": logits.detach().float().contiguous(),
        "loss": loss.detach().float().reshape(1).contiguous(),
    }
    for n, g in grads.items():
        tensors["grad." + n] = g.float().contiguous()
    for n, w in merged.items():
        tensors["merged." + n] = w.float().contiguous()
    tensors["dropout.loss"] = d_loss_ref.float().reshape(1).contiguous()
    for n, g in d_grads.items():
        tensors["dropout.grad." + n] = g.float().contiguous()
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "peft": peft.__version__, "safetensors": safetensors.__version__}
    metadata = dict(versions)
    metadata.update({
        "versions": json.dumps(versions, sort_keys=True),
        "model": "lora",
        "seed": str(SEED),
        "B": str(B), "T": str(T), "V": str(V),
        "r": str(R), "lora_alpha": str(ALPHA), "target_modules": ",".join(TARGETS),
        "compute_dtype": "float64",
        "targets": "already shifted: targets[b,t] is the token after tokens[b,t], or -1 "
                   "where not counted",
        "loss": "mean cross_entropy(logits[b,t], targets[b,t]) over the positions with "
                "targets >= 0",
        "grad.NAME": "d loss / d NAME for every adapter tensor NAME of adapter_model.safetensors",
        "merged.NAME": "the targeted HF weight NAME after merge_and_unload(); the other "
                       "weights are unchanged",
        "dropout_p": str(DROP_P), "dropout_key": str(DROP_KEY),
        "dropout.loss": "the loss with LoRA dropout p (tandem's masks for key dropout_key, "
                        "examples 0..B-1)",
        "dropout.grad.NAME": "d dropout.loss / d NAME",
    })
    ref_path = os.path.join(OUT, "reference.safetensors")
    save_file(tensors, ref_path, metadata=metadata)
    mf.canonicalize_header(ref_path)
    with safe_open(ref_path, framework="pt") as f:
        assert f.metadata() == metadata
        for k, t in tensors.items():
            assert torch.equal(f.get_tensor(k), t), k

    ncount = int((targets >= 0).sum())
    print(f"lora        loss={loss.item():.6f} over {ncount} of {B * T} positions  "
          f"adapter params={sum(t.numel() for t in adapter32.values())}  scale={scale}")
    print(f"    spec_vs_peft64(logits={d_logits:.1e}, loss={d_loss:.1e}, grads={d_grad:.1e})  "
          f"hf_labels_loss={d_hfloss:.1e}  peft32_vs_64={d32:.1e}  merged_vs_adapter={d_merged:.1e}  "
          f"base_vs_adapter={d_base:.2f}")
    print(f"    dropout p={DROP_P}: loss={d_loss_ref.item():.6f}  kept share={kept:.4f}")
    for root, _, files in sorted(os.walk(OUT)):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            print(f"    {os.path.relpath(p, OUT):34s} {os.path.getsize(p):8d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
