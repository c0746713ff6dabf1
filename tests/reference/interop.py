#!/usr/bin/env python3
"""Interoperability check: tandem checkpoints vs Hugging Face transformers.

For each case (default: llama, gpt2) this
  1. writes an llm.c-format token shard (bytes of English text, ids 0..255)
     with numpy -- an independent writer of the format,
  2. runs `TANDEM train JOB.json` for a tiny model (20 steps),
  3. checks the checkpoint directory (config.json, model.safetensors,
     tokenizer.json, optimizer.safetensors, trainer_state.json),
  4. lists model.safetensors (names/dtypes/shapes) and compares it with the
     state_dict of the HF model built from config.json (lm_head.weight may be
     absent when embeddings are tied),
  5. loads the checkpoint with AutoModelForCausalLM.from_pretrained (float32,
     eager attention) and insists nothing was missing/unexpected,
  6. runs `TANDEM generate --model CKPT --prompt TEXT --max-new-tokens 0
     --logits-out FILE` and compares its logits with HF's on the same tokens:
     fails if max|a-b| / max|b| > --tol (default 1e-4),
  7. checks that tokenizer.json (loaded with the `tokenizers` package) encodes
     the prompt to the same ids tandem used.

The case "lora" (also run by default; needs peft, see requirements.txt)
  1. trains a tiny llama base (vocab 260: the 256 bytes and tandem's four
     special tokens, so ChatML fits) with `TANDEM train`, writes a few dozen
     chat conversations (reverse a list of letters) as JSON Lines,
  2. runs `TANDEM finetune` with method lora on all seven llama matrices,
     checks the PEFT files and that training made lora_B non-zero,
  3. loads the adapter with PeftModel.from_pretrained(base in float32) and
     insists every tensor of adapter_model.safetensors is in it, unchanged,
  4. runs `TANDEM merge`, then `TANDEM generate --tokens IDS
     --logits-out FILE` on the merged checkpoint for a ChatML conversation,
     and compares peft's logits on the same ids: fails if
     max|a-b| / max|b| > --tol (also prints how far the adapter moves the
     logits from the base's, which must be far above --tol),
     and the same with `TANDEM generate --adapter` on the base (unmerged),
  5. compares peft's merge_and_unload() weights with the merged
     model.safetensors (same names): fails if max|a-b| > --merge-tol (1e-6).

Prints a table and a final line "interop: N passed, M failed"; exit status 1
if anything failed (or could not run).

Usage: .venv/bin/python tests/reference/interop.py [--tandem build/tandem]
       [--cases llama gpt2 llama_tied lora] [--keep] [--workdir DIR]
"""
import argparse
import glob
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from safetensors import safe_open  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

transformers.logging.set_verbosity_error()

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
PROMPT = "The quick brown fox jumps over the lazy dog, and then it rests."
CKPT_FILES = ["config.json", "model.safetensors", "tokenizer.json",
              "optimizer.safetensors", "trainer_state.json"]

CASES = {
    "llama": {
        "arch": "llama", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
        "vocab_size": 257, "max_position_embeddings": 64, "tie_word_embeddings": False,
    },
    "gpt2": {
        "arch": "gpt2", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 257, "max_position_embeddings": 64,
    },
    # Not run by default: exercises tied embeddings + plain MHA for Llama.
    "llama_tied": {
        "arch": "llama", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 128,
        "vocab_size": 257, "max_position_embeddings": 64, "tie_word_embeddings": True,
    },
}

# --------------------------------------------------------------------------
# Data: an llm.c-format shard written independently of tandem
# --------------------------------------------------------------------------

_SENTENCES = """\
The river ran slowly past the old mill, carrying leaves toward the sea.
A small bird sat on the fence and watched the farmer plant his beans.
In the morning the market filled with voices, bread, and the smell of coffee.
She opened the letter carefully, afraid of what it might say.
Numbers are patient; they wait for someone to add them up.
The train was late again, so the children played cards on the platform.
Every winter the lake froze solid and the town skated until dark.
He wrote three pages about the weather and none about the war.
Light from the lighthouse swept across the water every twelve seconds.
The library kept its rarest books in a cold room without windows.
When the storm passed, the streets smelled of rain and hot stone.
Good tools last longer than the people who make them.
They argued about the map until the sun went down behind the hills.
A cat does not explain itself, and it rarely apologizes.
The engine coughed twice, shook the whole boat, and then ran smoothly.
Her grandmother taught her to count stitches and to distrust flattery.
On Sundays the bakery sold almond cakes shaped like crescent moons.
The bridge had been painted green, then red, then green once more.
Nobody remembered who had planted the orchard behind the school.
At night the city hummed like a machine that never quite slept.""".splitlines()


def make_text(min_bytes, seed=0):
    rng = random.Random(seed)
    parts, n = [], 0
    while n < min_bytes:
        para = " ".join(rng.sample(_SENTENCES, 5)) + "\n\n"
        parts.append(para)
        n += len(para.encode("utf-8"))
    return "".join(parts)


def write_shard(path, tokens):
    tokens = np.asarray(tokens)
    assert tokens.ndim == 1 and tokens.min() >= 0 and tokens.max() < 65536
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0] = SHARD_MAGIC
    header[1] = SHARD_VERSION
    header[2] = len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())


def make_data_dir(root, min_tokens=24000):
    d = os.path.join(root, "data")
    os.makedirs(d, exist_ok=True)
    toks = np.frombuffer(make_text(min_tokens).encode("utf-8"), dtype=np.uint8).astype(np.uint16)
    path = os.path.join(d, "interop_train_000000.bin")
    write_shard(path, toks)
    # Read back as a self-check of the writer.
    raw = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    assert raw[0] == SHARD_MAGIC and raw[1] == SHARD_VERSION and raw[2] == len(toks)
    body = np.fromfile(path, dtype="<u2", offset=HEADER_INTS * 4)
    assert np.array_equal(body, toks)
    assert os.path.getsize(path) == HEADER_INTS * 4 + 2 * len(toks)
    return d, len(toks)


# --------------------------------------------------------------------------
# Result table
# --------------------------------------------------------------------------

class Results:
    def __init__(self):
        self.rows = []

    def add(self, case, check, ok, detail=""):
        status = "PASS" if ok is True else ("FAIL" if ok is False else "SKIP")
        self.rows.append((case, check, status, detail))
        print(f"  [{status}] {case}/{check}: {detail}", flush=True)
        return ok

    def skip(self, case, check, why):
        return self.add(case, check, None, why)

    def table(self):
        w1 = max([4] + [len(r[0]) for r in self.rows])
        w2 = max([5] + [len(r[1]) for r in self.rows])
        lines = [f"{'case':{w1}}  {'check':{w2}}  result  detail",
                 f"{'-' * w1}  {'-' * w2}  ------  ------"]
        for c, k, s, d in self.rows:
            lines.append(f"{c:{w1}}  {k:{w2}}  {s:6}  {d}")
        return "\n".join(lines)

    def counts(self):
        p = sum(1 for r in self.rows if r[2] == "PASS")
        f = sum(1 for r in self.rows if r[2] == "FAIL")
        s = sum(1 for r in self.rows if r[2] == "SKIP")
        return p, f, s


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def run_cmd(argv, log_path, timeout):
    t0 = time.time()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(shlex.quote(a) for a in argv) + "\n")
        log.flush()
        try:
            p = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=REPO)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        except OSError as e:
            log.write(f"could not start: {e}\n")
            rc = f"oserror: {e}"
    return rc, time.time() - t0


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    return "\n".join("      | " + line for line in lines[-n:])


def find_checkpoint(run_dir, steps):
    want = os.path.join(run_dir, f"step_{steps:08d}")
    if os.path.isdir(want):
        return want, True
    found = sorted(glob.glob(os.path.join(run_dir, "step_*")))
    return (found[-1] if found else None), False


def dtype_name(sl):
    return sl.get_dtype()


def expected_config_values(spec):
    """(attribute name on the HF config, expected value); generic names work
    for GPT-2 too through GPT2Config.attribute_map (hidden_size -> n_embd, ...)."""
    keys = ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
            "max_position_embeddings"]
    if spec["arch"] == "llama":
        keys += ["num_key_value_heads", "intermediate_size", "tie_word_embeddings"]
    out = [(k, spec[k]) for k in keys]
    if spec["arch"] == "gpt2":
        out.append(("tie_word_embeddings", True))
    return out


# --------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------

def run_case(name, spec, tandem, work, data_dir, args, res):
    print(f"== {name} ==", flush=True)
    case_dir = os.path.join(work, name)
    os.makedirs(case_dir, exist_ok=True)
    run_dir = os.path.join(case_dir, "run")
    model_cfg = dict(spec)
    job = {
        "model": model_cfg,
        "data": {"train": data_dir, "seq_len": 32},
        "train": {"batch_size": 4, "steps": args.steps, "lr": 3e-3, "warmup": 2, "seed": 1},
        "checkpoint": {"dir": run_dir, "every": args.steps, "keep": 1},
    }
    job_path = os.path.join(case_dir, "job.json")
    with open(job_path, "w") as f:
        json.dump(job, f, indent=2)

    # ---- train
    log = os.path.join(case_dir, "train.log")
    rc, dt = run_cmd(tandem + ["train", job_path], log, args.timeout)
    ckpt, exact = find_checkpoint(run_dir, args.steps)
    if rc != 0 or ckpt is None:
        res.add(name, "train", False, f"rc={rc} ({dt:.1f}s), checkpoint={'none' if ckpt is None else ckpt}")
        print(tail(log))
        return
    missing = [f for f in CKPT_FILES if not os.path.isfile(os.path.join(ckpt, f))]
    ok = exact and not missing
    res.add(name, "train", ok,
            f"{dt:.1f}s -> {os.path.relpath(ckpt, work)}"
            + ("" if exact else f" (expected step_{args.steps:08d})")
            + (f"; missing {missing}" if missing else ""))
    if not ok:
        print(tail(log))
    if not os.path.isfile(os.path.join(ckpt, "config.json")):
        return

    # ---- config.json
    try:
        with open(os.path.join(ckpt, "config.json")) as f:
            raw_cfg = json.load(f)
        cfg = AutoConfig.from_pretrained(ckpt)
        bad = [f"{k}={getattr(cfg, k, None)!r} (want {v!r})"
               for k, v in expected_config_values(spec) if getattr(cfg, k, None) != v]
        if cfg.model_type != spec["arch"]:
            bad.insert(0, f"model_type={cfg.model_type!r}")
        res.add(name, "config", not bad,
                "; ".join(bad) if bad else f"model_type={cfg.model_type}, keys={len(raw_cfg)}")
    except Exception as e:  # noqa: BLE001
        res.add(name, "config", False, f"AutoConfig failed: {type(e).__name__}: {e}")
        return

    # ---- model.safetensors listing vs HF state_dict
    st_path = os.path.join(ckpt, "model.safetensors")
    hf_shapes = None
    try:
        ref_model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")  # tiny: CPU is fine
        hf_shapes = {k: tuple(v.shape) for k, v in ref_model.state_dict().items()}
        del ref_model
    except Exception as e:  # noqa: BLE001
        res.add(name, "safetensors", False, f"could not build HF model from config: {type(e).__name__}: {e}")
    if hf_shapes is not None and os.path.isfile(st_path):
        try:
            with safe_open(st_path, framework="pt") as f:
                meta = f.metadata()
                listing = {k: (dtype_name(f.get_slice(k)), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
            print(f"  model.safetensors: {len(listing)} tensors, metadata={meta}")
            for k in sorted(listing):
                dt_, shp = listing[k]
                print(f"      {k:50s} {dt_:5s} {list(shp)}")
            problems = []
            if not meta or meta.get("format") != "pt":
                problems.append(f"__metadata__ must contain format=pt for from_pretrained (got {meta})")
            tied = bool(getattr(cfg, "tie_word_embeddings", False))
            missing_k = sorted(set(hf_shapes) - set(listing) - ({"lm_head.weight"} if tied else set()))
            extra_k = sorted(set(listing) - set(hf_shapes))
            shape_bad = [f"{k}: {list(listing[k][1])} != {list(hf_shapes[k])}"
                         for k in sorted(set(listing) & set(hf_shapes)) if listing[k][1] != hf_shapes[k]]
            dtypes = sorted({v[0] for v in listing.values()})
            if missing_k:
                problems.append(f"missing {missing_k[:5]}{'...' if len(missing_k) > 5 else ''}")
            if extra_k:
                problems.append(f"unexpected {extra_k[:5]}{'...' if len(extra_k) > 5 else ''}")
            if shape_bad:
                problems.append(f"shapes {shape_bad[:3]}")
            if dtypes != ["F32"]:
                problems.append(f"dtypes {dtypes} (expected F32)")
            res.add(name, "safetensors", not problems,
                    "; ".join(problems) if problems else
                    f"{len(listing)} tensors match HF state_dict ({len(hf_shapes)} keys"
                    f"{', lm_head tied' if tied and 'lm_head.weight' not in listing else ''}), all F32")
        except Exception as e:  # noqa: BLE001
            res.add(name, "safetensors", False, f"{type(e).__name__}: {e}")

    # ---- optimizer.safetensors / trainer_state.json are readable
    try:
        extras = []
        opt = os.path.join(ckpt, "optimizer.safetensors")
        with safe_open(opt, framework="pt") as f:
            extras.append(f"optimizer: {len(list(f.keys()))} tensors")
        with open(os.path.join(ckpt, "trainer_state.json")) as f:
            ts = json.load(f)
        extras.append(f"trainer_state keys={sorted(ts)[:6] if isinstance(ts, dict) else type(ts).__name__}")
        res.add(name, "ckpt-extras", True, "; ".join(extras))
    except Exception as e:  # noqa: BLE001
        res.add(name, "ckpt-extras", False, f"{type(e).__name__}: {e}")

    # ---- from_pretrained
    model = None
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            ckpt, torch_dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
        model.eval()
        bad = {k: v for k, v in info.items() if v}
        res.add(name, "hf-load", not bad,
                f"{bad}" if bad else f"{type(model).__name__}, {sum(p.numel() for p in model.parameters())} params")
        if bad:
            model = None  # randomly initialised pieces: comparing logits would be meaningless
    except Exception as e:  # noqa: BLE001
        res.add(name, "hf-load", False, f"{type(e).__name__}: {e}")

    # ---- generate
    logits_path = os.path.join(case_dir, "logits.safetensors")
    glog = os.path.join(case_dir, "generate.log")
    rc, dt = run_cmd(tandem + ["generate", "--model", ckpt, "--prompt", args.prompt,
                               "--max-new-tokens", "0", "--logits-out", logits_path], glog, args.timeout)
    tokens = logits = None
    if rc != 0 or not os.path.isfile(logits_path):
        res.add(name, "generate", False, f"rc={rc} ({dt:.1f}s), logits file {'present' if os.path.isfile(logits_path) else 'missing'}")
        print(tail(glog))
    else:
        try:
            with safe_open(logits_path, framework="pt") as f:
                keys = set(f.keys())
                tokens = f.get_tensor("tokens") if "tokens" in keys else None
                logits = f.get_tensor("logits") if "logits" in keys else None
            problems = []
            if tokens is None or logits is None:
                problems.append(f"keys {sorted(keys)} (need tokens, logits)")
            else:
                V = spec["vocab_size"]
                if tokens.dtype != torch.int32 or tokens.dim() != 1:
                    problems.append(f"tokens {tokens.dtype} {list(tokens.shape)} (want int32 (T,))")
                if logits.dtype != torch.float32 or tuple(logits.shape) != (tokens.shape[0], V):
                    problems.append(f"logits {logits.dtype} {list(logits.shape)} (want float32 ({tokens.shape[0]}, {V}))")
                if tokens.numel() == 0:
                    problems.append("no tokens")
                elif tokens.min() < 0 or tokens.max() >= V:
                    problems.append(f"token ids out of [0,{V})")
                if tokens.numel() > spec["max_position_embeddings"]:
                    problems.append(f"{tokens.numel()} tokens > max_position_embeddings")
                if not torch.isfinite(logits).all():
                    problems.append("non-finite logits")
            res.add(name, "generate", not problems,
                    "; ".join(problems) if problems else f"{dt:.1f}s, T={tokens.shape[0]}, V={logits.shape[1]}")
            if problems:
                tokens = logits = None
        except Exception as e:  # noqa: BLE001
            res.add(name, "generate", False, f"{type(e).__name__}: {e}")
            tokens = logits = None

    # ---- tokenizer.json agrees with the ids tandem used
    tok_path = os.path.join(ckpt, "tokenizer.json")
    if tokens is None:
        res.skip(name, "tokenizer", "no tokens from generate")
    elif not os.path.isfile(tok_path):
        res.add(name, "tokenizer", False, "tokenizer.json missing")
    else:
        try:
            from tokenizers import Tokenizer
            tk = Tokenizer.from_file(tok_path)
            ids = tk.encode(args.prompt).ids
            got = tokens.tolist()
            ok = ids == got
            res.add(name, "tokenizer", ok,
                    f"tokenizer.json encodes prompt to the same {len(ids)} ids" if ok else
                    f"tokenizer.json ids {ids[:12]}... (len {len(ids)}) != tandem {got[:12]}... (len {len(got)})")
        except Exception as e:  # noqa: BLE001
            res.add(name, "tokenizer", False, f"{type(e).__name__}: {e}")

    # ---- chat template: transformers renders tokenizer_config.json's chat_template to the
    # ChatML prompt tandem's replicas build (worker/infer/replica.c, td_chatml_prompt)
    try:
        from transformers import AutoTokenizer
        htk = AutoTokenizer.from_pretrained(ckpt)
        msgs = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Why is the sky blue?"}]
        want = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
                "Why is the sky blue?<|im_end|>\n<|im_start|>assistant\n")
        got = htk.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        res.add(name, "chat_template", got == want,
                "apply_chat_template gives tandem's ChatML prompt" if got == want else
                f"apply_chat_template gave {got!r}")
    except Exception as e:  # noqa: BLE001
        res.add(name, "chat_template", False, f"{type(e).__name__}: {e}")

    # ---- logits vs HF
    if tokens is None or model is None:
        res.skip(name, "logits", "needs generate output and a clean HF load")
        return
    with torch.no_grad():
        ref = model(input_ids=tokens.long()[None], use_cache=False).logits[0].float()
    abs_diff = (logits - ref).abs().max().item()
    scale = ref.abs().max().item()
    rel = abs_diff / scale if scale > 0 else float("inf")
    argmax_agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    res.add(name, "logits", rel <= args.tol,
            f"max_abs={abs_diff:.3e} max_rel={rel:.3e} (tol {args.tol:.0e}), "
            f"max|ref|={scale:.3f}, argmax agree {argmax_agree * 100:.0f}%")


# --------------------------------------------------------------------------
# LoRA: tandem finetune's adapter in peft, tandem merge vs merge_and_unload
# --------------------------------------------------------------------------

LORA_BASE = {
    # vocab 260 = 256 bytes + tandem's <|endoftext|>, <|im_start|>, <|im_end|>, <|pad|>
    "arch": "llama", "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
    "vocab_size": 260, "max_position_embeddings": 64, "tie_word_embeddings": False,
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_R, LORA_ALPHA = 4, 8
LORA_FILES = ["adapter_config.json", "adapter_model.safetensors"]


def lora_module_path(layer, target):
    part = "self_attn" if target in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return f"base_model.model.model.layers.{layer}.{part}.{target}"


def reverse_conversation(letters):
    return {"messages": [{"role": "user", "content": "Reverse: " + " ".join(letters)},
                         {"role": "assistant", "content": " ".join(reversed(letters))}]}


def write_chat_data(path, n, seed=3):
    """n training conversations of the skill task (reverse 3-5 letters), and
    one more that is not among them (returned, for scoring)."""
    rng = random.Random(seed)
    seen, convs = set(), []
    while len(convs) < n + 1:
        item = tuple(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 5)))
        if item not in seen:
            seen.add(item)
            convs.append(reverse_conversation(list(item)))
    with open(path, "w") as f:
        for c in convs[:n]:
            f.write(json.dumps(c) + "\n")
    return convs[n]


def chatml(conv):
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in conv["messages"])


def run_lora(name, tandem, work, data_dir, args, res):
    print(f"== {name} ==", flush=True)
    case_dir = os.path.join(work, name)
    os.makedirs(case_dir, exist_ok=True)
    try:
        from peft import PeftModel
        import peft
    except ImportError as e:
        res.add(name, "peft", False, f"cannot import peft ({e}); install it as requirements.txt says")
        return

    # ---- base: a tiny llama pretrained by tandem on the byte shard
    base_run = os.path.join(case_dir, "base")
    job = {
        "model": dict(LORA_BASE),
        "data": {"train": data_dir, "seq_len": 32},
        "train": {"batch_size": 4, "steps": args.steps, "lr": 3e-3, "warmup": 2, "seed": 1},
        "checkpoint": {"dir": base_run, "every": args.steps, "keep": 1},
    }
    job_path = os.path.join(case_dir, "base_job.json")
    with open(job_path, "w") as f:
        json.dump(job, f, indent=2)
    log = os.path.join(case_dir, "base.log")
    rc, dt = run_cmd(tandem + ["train", job_path], log, args.timeout)
    base, exact = find_checkpoint(base_run, args.steps)
    if rc != 0 or base is None or not exact:
        res.add(name, "base", False, f"rc={rc} ({dt:.1f}s), checkpoint={base}")
        print(tail(log))
        return
    res.add(name, "base", True, f"{dt:.1f}s -> {os.path.relpath(base, work)} (vocab {LORA_BASE['vocab_size']})")

    # ---- tandem finetune, method lora, all seven matrices
    chat_path = os.path.join(case_dir, "chat.jsonl")
    held_out = write_chat_data(chat_path, args.lora_examples)
    run_dir = os.path.join(case_dir, "lorarun")
    job = {
        "finetune": {"base": base, "method": "lora",
                     "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "target_modules": LORA_TARGETS}},
        "data": {"train": chat_path, "seq_len": 48},
        "train": {"batch_size": 8, "steps": args.steps, "lr": 3e-3, "seed": 5},
        "checkpoint": {"dir": run_dir, "every": args.steps},
        "device": "cpu",
    }
    job_path = os.path.join(case_dir, "finetune_job.json")
    with open(job_path, "w") as f:
        json.dump(job, f, indent=2)
    log = os.path.join(case_dir, "finetune.log")
    rc, dt = run_cmd(tandem + ["finetune", job_path], log, args.timeout)
    adapter, exact = find_checkpoint(run_dir, args.steps)
    missing = [f for f in LORA_FILES if adapter is None or not os.path.isfile(os.path.join(adapter, f))]
    if rc != 0 or adapter is None or not exact or missing:
        res.add(name, "finetune", False, f"rc={rc} ({dt:.1f}s), checkpoint={adapter}"
                + (f"; missing {missing}" if missing else ""))
        print(tail(log))
        return
    losses = []
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    except (OSError, ValueError, KeyError):
        pass
    res.add(name, "finetune", True, f"{dt:.1f}s, {args.lora_examples} conversations, "
            + (f"loss {losses[0]:.4f} -> {losses[-1]:.4f}, " if losses else "")
            + f"-> {os.path.relpath(adapter, work)}")

    # ---- adapter files: config and tensor names/shapes as peft writes them; lora_B trained
    L = LORA_BASE["num_hidden_layers"]
    C, inter = LORA_BASE["hidden_size"], LORA_BASE["intermediate_size"]
    kv = C // LORA_BASE["num_attention_heads"] * LORA_BASE["num_key_value_heads"]
    dims = {"q_proj": (C, C), "k_proj": (C, kv), "v_proj": (C, kv), "o_proj": (C, C),
            "gate_proj": (C, inter), "up_proj": (C, inter), "down_proj": (inter, C)}  # (in, out)
    want = {}
    for layer in range(L):
        for t in LORA_TARGETS:
            fan_in, fan_out = dims[t]
            want[lora_module_path(layer, t) + ".lora_A.weight"] = (LORA_R, fan_in)
            want[lora_module_path(layer, t) + ".lora_B.weight"] = (fan_out, LORA_R)
    try:
        with open(os.path.join(adapter, "adapter_config.json")) as f:
            acfg = json.load(f)
        with safe_open(os.path.join(adapter, "adapter_model.safetensors"), framework="pt") as f:
            file_tensors = {k: f.get_tensor(k) for k in f.keys()}
        problems = []
        for k, v in (("peft_type", "LORA"), ("r", LORA_R), ("lora_alpha", LORA_ALPHA)):
            if acfg.get(k) != v:
                problems.append(f"{k}={acfg.get(k)!r} (want {v!r})")
        if sorted(acfg.get("target_modules") or []) != sorted(LORA_TARGETS):
            problems.append(f"target_modules={acfg.get('target_modules')}")
        if os.path.realpath(str(acfg.get("base_model_name_or_path"))) != os.path.realpath(base):
            problems.append(f"base_model_name_or_path={acfg.get('base_model_name_or_path')!r}")
        got = {k: tuple(v.shape) for k, v in file_tensors.items()}
        if got != want:
            miss, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
            bad = [k for k in set(got) & set(want) if got[k] != want[k]]
            problems.append(f"tensors: missing {miss[:3]}, unexpected {extra[:3]}, shapes {bad[:3]}")
        dtypes = sorted({str(v.dtype) for v in file_tensors.values()})
        if dtypes != ["torch.float32"]:
            problems.append(f"dtypes {dtypes}")
        bmax = [file_tensors[k].abs().max().item() for k in want if k.endswith("lora_B.weight") and k in file_tensors]
        if not bmax or min(bmax) == 0:
            problems.append(f"{sum(1 for b in bmax if b == 0)} of {len(bmax)} lora_B still zero after training")
        res.add(name, "adapter", not problems, "; ".join(problems) if problems else
                f"{len(file_tensors)} tensors (r={LORA_R}, alpha={LORA_ALPHA}, {len(LORA_TARGETS)} targets x {L} layers), "
                f"all {len(bmax)} lora_B non-zero, max|B| {min(bmax):.2e}..{max(bmax):.2e}")
        if problems:
            return
    except Exception as e:  # noqa: BLE001
        res.add(name, "adapter", False, f"{type(e).__name__}: {e}")
        return

    # ---- peft loads the adapter onto the HF base
    try:
        hf_base = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32, attn_implementation="eager")
        pm = PeftModel.from_pretrained(hf_base, adapter)
        pm.eval()
        sd = pm.state_dict()
        lora_keys = {k for k in sd if ".lora_" in k}
        expect_keys = {k.replace(".weight", ".default.weight") for k in file_tensors}
        differ = [k for k in file_tensors
                  if k.replace(".weight", ".default.weight") in sd
                  and not torch.equal(sd[k.replace(".weight", ".default.weight")], file_tensors[k])]
        scale = pm.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"]
        problems = []
        if lora_keys != expect_keys:
            problems.append(f"peft has {len(lora_keys)} lora tensors, file {len(file_tensors)}: "
                            f"missing {sorted(expect_keys - lora_keys)[:3]}, extra {sorted(lora_keys - expect_keys)[:3]}")
        if differ:
            problems.append(f"{len(differ)} tensors differ from the file, e.g. {differ[0]}")
        if scale != LORA_ALPHA / LORA_R:
            problems.append(f"scaling {scale} (want {LORA_ALPHA / LORA_R})")
        res.add(name, "peft-load", not problems, "; ".join(problems) if problems else
                f"peft {peft.__version__}: all {len(lora_keys)} adapter tensors loaded bit-exact, scaling {scale:g}")
    except Exception as e:  # noqa: BLE001
        res.add(name, "peft-load", False, f"{type(e).__name__}: {e}")
        return

    # ---- tandem merge
    merged = os.path.join(case_dir, "merged")
    log = os.path.join(case_dir, "merge.log")
    rc, dt = run_cmd(tandem + ["merge", adapter, "--out", merged], log, args.timeout)
    st_path = os.path.join(merged, "model.safetensors")
    if rc != 0 or not os.path.isfile(st_path):
        res.add(name, "merge", False, f"rc={rc} ({dt:.1f}s), model.safetensors "
                f"{'present' if os.path.isfile(st_path) else 'missing'}")
        print(tail(log))
        return
    res.add(name, "merge", True, f"{dt:.1f}s -> {os.path.relpath(merged, work)}")

    # ---- tandem generate on the merged checkpoint vs peft on the same ids
    try:
        from tokenizers import Tokenizer
        text = chatml(held_out)
        ids = Tokenizer.from_file(os.path.join(base, "tokenizer.json")).encode(text).ids
        logits_path = os.path.join(case_dir, "logits.safetensors")
        glog = os.path.join(case_dir, "generate.log")
        rc, dt = run_cmd(tandem + ["generate", "--model", merged, "--tokens", ",".join(map(str, ids)),
                                   "--max-new-tokens", "0", "--logits-out", logits_path], glog, args.timeout)
        if rc != 0 or not os.path.isfile(logits_path):
            res.add(name, "logits", False, f"generate rc={rc} ({dt:.1f}s)")
            print(tail(glog))
        else:
            with safe_open(logits_path, framework="pt") as f:
                tokens, logits = f.get_tensor("tokens"), f.get_tensor("logits")
            if tokens.tolist() != ids:
                res.add(name, "logits", False, f"generate scored ids {tokens.tolist()[:8]}... not {ids[:8]}...")
            else:
                x = torch.tensor(ids, dtype=torch.long)[None]
                with torch.no_grad():
                    ref = pm(input_ids=x, use_cache=False).logits[0].float()
                    with pm.disable_adapter():
                        base_logits = pm(input_ids=x, use_cache=False).logits[0].float()
                scale_ = ref.abs().max().item()
                abs_diff = (logits - ref).abs().max().item()
                rel = abs_diff / scale_ if scale_ > 0 else float("inf")
                effect = (ref - base_logits).abs().max().item() / scale_
                # the check means something only if the adapter moves the logits far more than tol
                ok = rel <= args.tol and effect > 100 * args.tol
                res.add(name, "logits", ok,
                        f"merged (tandem generate) vs peft adapter: max_abs={abs_diff:.3e} max_rel={rel:.3e} "
                        f"(tol {args.tol:.0e}, rel = max|a-b|/max|peft|), max|peft|={scale_:.3f}, T={len(ids)}; "
                        f"adapter moves peft's logits from the base's by {effect:.3e} rel"
                        + ("" if effect > 100 * args.tol else f" (must exceed {100 * args.tol:.0e})"))
                # the adapter unmerged: tandem generate --adapter on the base
                upath = os.path.join(case_dir, "logits-adapter.safetensors")
                rc, dt = run_cmd(tandem + ["generate", "--model", base, "--adapter", adapter,
                                           "--tokens", ",".join(map(str, ids)), "--max-new-tokens", "0",
                                           "--logits-out", upath], glog, args.timeout)
                if rc != 0 or not os.path.isfile(upath):
                    res.add(name, "logits-adapter", False, f"generate --adapter rc={rc} ({dt:.1f}s)")
                    print(tail(glog))
                else:
                    with safe_open(upath, framework="pt") as f:
                        ul = f.get_tensor("logits")
                    urel = (ul - ref).abs().max().item() / scale_
                    res.add(name, "logits-adapter", urel <= args.tol and effect > 100 * args.tol,
                            f"base + adapter unmerged (tandem generate --adapter) vs peft: max_rel={urel:.3e} "
                            f"(tol {args.tol:.0e})")
    except Exception as e:  # noqa: BLE001
        res.add(name, "logits", False, f"{type(e).__name__}: {e}")

    # ---- merge_and_unload vs tandem's merged model.safetensors
    try:
        with safe_open(os.path.join(base, "model.safetensors"), framework="pt") as f:
            before = {k: f.get_tensor(k) for k in f.keys()}
        with torch.no_grad():
            unloaded = pm.merge_and_unload()
        ref_sd = unloaded.state_dict()
        with safe_open(st_path, framework="pt") as f:
            got = {k: f.get_tensor(k) for k in f.keys()}
        problems = []
        if set(got) != set(ref_sd):
            problems.append(f"names: missing {sorted(set(ref_sd) - set(got))[:3]}, "
                            f"unexpected {sorted(set(got) - set(ref_sd))[:3]}")
        common = sorted(set(got) & set(ref_sd))
        shape_bad = [k for k in common if got[k].shape != ref_sd[k].shape]
        if shape_bad:
            problems.append(f"shapes differ: {shape_bad[:3]}")
        common = [k for k in common if k not in shape_bad]
        targeted = [k for k in common if any(f".{t}.weight" in k for t in LORA_TARGETS)]
        others = [k for k in common if k not in targeted]
        d_t = max(((got[k].double() - ref_sd[k].double()).abs().max().item() for k in targeted), default=0.0)
        d_o = max(((got[k].double() - ref_sd[k].double()).abs().max().item() for k in others), default=0.0)
        worst = max(targeted, key=lambda k: (got[k].double() - ref_sd[k].double()).abs().max().item(), default="-")
        moved = max(((ref_sd[k] - before[k]).abs().max().item() for k in targeted if k in before), default=0.0)
        if max(d_t, d_o) > args.merge_tol:
            problems.append(f"max|tandem - peft| {max(d_t, d_o):.3e} > {args.merge_tol:.0e} (worst {worst})")
        if len(targeted) != L * len(LORA_TARGETS):
            problems.append(f"{len(targeted)} merged matrices, want {L * len(LORA_TARGETS)}")
        res.add(name, "merged-weights", not problems,
                ("; ".join(problems) + "; " if problems else "")
                + f"{len(common)} tensors: {len(targeted)} merged max_abs={d_t:.3e}, "
                f"{len(others)} others max_abs={d_o:.3e} (tol {args.merge_tol:.0e} abs); "
                f"the merge moved weights by up to {moved:.3e}")
    except Exception as e:  # noqa: BLE001
        res.add(name, "merged-weights", False, f"{type(e).__name__}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tandem", default=os.path.join(REPO, "build", "tandem"),
                    help="tandem binary (a command line is split with shlex)")
    ap.add_argument("--cases", nargs="+", default=["llama", "gpt2", "lora"], choices=sorted(CASES) + ["lora"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tol", type=float, default=1e-4, help="max relative logits difference")
    ap.add_argument("--merge-tol", type=float, default=1e-6,
                    help="lora: max absolute difference of tandem merge vs peft merge_and_unload")
    ap.add_argument("--lora-examples", type=int, default=48, help="lora: conversations to fine-tune on")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per tandem invocation")
    ap.add_argument("--workdir", help="use this directory (kept) instead of a temp dir")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()

    tandem = shlex.split(args.tandem)
    res = Results()
    print(f"interop: tandem={args.tandem}  torch {torch.__version__}  transformers {transformers.__version__}")
    exe = tandem[0] if os.path.isabs(tandem[0]) or os.sep in tandem[0] else shutil.which(tandem[0])
    if not exe or not os.path.isfile(exe) or not os.access(exe, os.X_OK):
        res.add("-", "binary", False, f"{tandem[0]} not found or not executable (build it first)")
        print(res.table())
        print("interop: 0 passed, 1 failed")
        return 1

    if args.workdir:
        work = os.path.abspath(args.workdir)
        os.makedirs(work, exist_ok=True)
        cleanup = False
    else:
        work = tempfile.mkdtemp(prefix="tandem-interop-")
        cleanup = not args.keep
    try:
        data_dir, ntok = make_data_dir(work)
        print(f"data: {ntok} tokens in {data_dir}")
        for name in args.cases:
            try:
                if name == "lora":
                    run_lora(name, tandem, work, data_dir, args, res)
                else:
                    run_case(name, CASES[name], tandem, work, data_dir, args, res)
            except Exception as e:  # noqa: BLE001 -- keep going with other cases
                res.add(name, "internal", False, f"{type(e).__name__}: {e}")
    finally:
        if cleanup:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work dir kept: {work}")

    passed, failed, skipped = res.counts()
    print()
    print(res.table())
    if skipped:
        print(f"({skipped} checks skipped because an earlier step failed)")
    print(f"interop: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
