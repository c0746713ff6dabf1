#!/usr/bin/env python3
"""Test double for interop.py -- NOT tandem.

Implements just enough of tandem's CLI with PyTorch + transformers to exercise
interop.py before the C binary exists:

  fake_tandem.py train JOB.json
  fake_tandem.py generate --model CKPT --prompt TEXT --max-new-tokens 0 --logits-out FILE

`train` really reads the llm.c shards (*train*.bin) and runs AdamW for the
requested steps, then writes RUNDIR/step_XXXXXXXX/ with config.json,
model.safetensors, tokenizer.json (byte-level: id = byte value, 256 =
<|endoftext|>), optimizer.safetensors and trainer_state.json.

FAKE_TANDEM_BREAK=<what> makes it misbehave so the harness's failure paths can
be checked: logits (perturb logits by 1e-3 relative), meta (no safetensors
__metadata__), names (rename a tensor), tokenizer (prepend id 256 in generate),
crash (train exits 3).

Usage: .venv/bin/python tests/reference/interop.py \
           --tandem ".venv/bin/python tests/reference/fake_tandem.py"
"""
import argparse
import glob
import json
import os
import sys

import numpy as np
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig  # noqa: E402

transformers.logging.set_verbosity_error()
BREAK = os.environ.get("FAKE_TANDEM_BREAK", "")


def hf_config(m):
    if m["arch"] == "llama":
        return LlamaConfig(
            hidden_size=m["hidden_size"], num_hidden_layers=m["num_hidden_layers"],
            num_attention_heads=m["num_attention_heads"], num_key_value_heads=m["num_key_value_heads"],
            intermediate_size=m["intermediate_size"], vocab_size=m["vocab_size"],
            max_position_embeddings=m["max_position_embeddings"],
            tie_word_embeddings=m.get("tie_word_embeddings", False), bos_token_id=256, eos_token_id=256)
    if m["arch"] == "gpt2":
        return GPT2Config(
            n_embd=m["hidden_size"], n_layer=m["num_hidden_layers"], n_head=m["num_attention_heads"],
            vocab_size=m["vocab_size"], n_positions=m["max_position_embeddings"],
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=256, eos_token_id=256)
    raise SystemExit(f"unknown arch {m['arch']}")


def read_shards(d):
    paths = sorted(glob.glob(os.path.join(d, "*train*.bin")))
    if not paths:
        raise SystemExit(f"no *train*.bin in {d}")
    out = []
    for p in paths:
        h = np.fromfile(p, dtype="<i4", count=256)
        if h[0] != 20240520 or h[1] != 1:
            raise SystemExit(f"{p}: bad header {h[:3]}")
        toks = np.fromfile(p, dtype="<u2", offset=1024)
        if len(toks) != h[2]:
            raise SystemExit(f"{p}: header says {h[2]} tokens, file has {len(toks)}")
        out.append(toks.astype(np.int64))
    return np.concatenate(out)


def byte_tokenizer_json():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    vocab["<|endoftext|>"] = 256
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(["<|endoftext|>"])
    return tk


def train(job_path):
    if BREAK == "crash":
        print("fake_tandem: simulated crash", file=sys.stderr)
        return 3
    with open(job_path) as f:
        job = json.load(f)
    m, tr, ck = job["model"], job["train"], job["checkpoint"]
    torch.manual_seed(tr.get("seed", 1))
    data = read_shards(job["data"]["train"])
    T, B = job["data"]["seq_len"], tr["batch_size"]
    model = AutoModelForCausalLM.from_config(hf_config(m), attn_implementation="eager")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=tr["lr"], weight_decay=0.0)
    rng = np.random.default_rng(tr.get("seed", 1))
    steps, warm = tr["steps"], max(1, tr.get("warmup", 1))
    for step in range(1, steps + 1):
        lr = tr["lr"] * min(1.0, step / warm)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = rng.integers(0, len(data) - T - 1, size=B)
        x = torch.from_numpy(np.stack([data[s:s + T] for s in starts]))
        y = torch.from_numpy(np.stack([data[s + 1:s + T + 1] for s in starts]))
        logits = model(input_ids=x, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step:4d} loss {loss.item():.4f} lr {lr:.2e}", flush=True)
        if step % ck["every"] == 0 or step == steps:
            d = os.path.join(ck["dir"], f"step_{step:08d}")
            os.makedirs(d, exist_ok=True)
            model.save_pretrained(d, safe_serialization=True)
            if BREAK in ("meta", "names"):
                from safetensors.torch import load_file
                sd = load_file(os.path.join(d, "model.safetensors"))
                if BREAK == "names":
                    k = sorted(sd)[1]
                    sd[k + "_renamed"] = sd.pop(k)
                save_file(sd, os.path.join(d, "model.safetensors"))  # no metadata
            byte_tokenizer_json().save(os.path.join(d, "tokenizer.json"))
            state = {}
            for i, p in enumerate(model.parameters()):
                st = opt.state[p]
                state[f"m.{i}"] = st["exp_avg"].contiguous()
                state[f"v.{i}"] = st["exp_avg_sq"].contiguous()
            save_file(state, os.path.join(d, "optimizer.safetensors"))
            with open(os.path.join(d, "trainer_state.json"), "w") as f:
                json.dump({"step": step, "loss": loss.item(), "lr": lr}, f)
    return 0


def generate(a):
    if a.max_new_tokens != 0:
        raise SystemExit("fake_tandem: only --max-new-tokens 0 is supported")
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    ids = tk.encode(a.prompt).ids
    if BREAK == "tokenizer":
        ids = [256] + ids
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    tokens = torch.tensor(ids, dtype=torch.int64)
    with torch.no_grad():
        logits = model(input_ids=tokens[None], use_cache=False).logits[0].float()
    if BREAK == "logits":
        logits = logits + 1e-3 * logits.abs().max() * torch.randn_like(logits)
    save_file({"tokens": tokens.to(torch.int32).contiguous(), "logits": logits.contiguous()}, a.logits_out)
    print(f"wrote {a.logits_out}: T={len(ids)} V={logits.shape[1]}")
    return 0


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "train":
        if len(sys.argv) != 3:
            raise SystemExit("usage: fake_tandem.py train JOB.json")
        return train(sys.argv[2])
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["generate"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=0)
    ap.add_argument("--logits-out", required=True)
    return generate(ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
