#!/usr/bin/env python3
"""End-to-end check of tandem's HTTP gateway (docs/gateway.md) with the official clients.

Drives a running gateway with the `openai` (v1+ API) and `ollama` Python packages and checks:
  - OpenAI /v1/completions, non-stream and stream (with stream_options.include_usage): the
    streamed text, finish_reason and usage agree with the non-stream answer (same seed);
  - OpenAI /v1/chat/completions, non-stream and stream (role, content, first delta's role);
  - greedy (temperature 0) determinism across two requests;
  - OpenAI /v1/models lists the model;
  - Ollama /api/generate and /api/chat, non-stream and stream agree (text, done, counts);
  - Ollama /api/tags, /api/ps, /api/show;
  - errors through the clients: unknown model -> 404, max_tokens < 1 -> 400 (OpenAI), unknown
    model -> 404 (Ollama), and with --api-key a wrong key -> 401.
The model's text is never checked beyond its type and stream/non-stream agreement.

Usage (with a gateway already listening, e.g. `tandem serve --model DIR --http 127.0.0.1:PORT`):
  .venv/bin/python tests/e2e/gateway_clients.py \
      --base http://127.0.0.1:PORT --model NAME [--api-key KEY]
Prints `PASS name: detail` or `FAIL name: detail` per check; exits 1 if any failed, else 0.
"""
import argparse
import sys

import ollama
import openai

PROMPT = "A fool and his money"
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Tell me a fortune."}]
COMPLETION_ARGS = dict(prompt=PROMPT, max_tokens=24, temperature=0.8, seed=7)
CHAT_ARGS = dict(messages=MESSAGES, max_tokens=24, temperature=1.0, seed=11)
GEN_OPTIONS = {"temperature": 0.8, "seed": 7, "num_predict": 24}
CHAT_OPTIONS = {"temperature": 1.0, "seed": 11, "num_predict": 24}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="gateway URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--model", required=True, help="model name the replicas registered")
    ap.add_argument("--api-key", default=None, help="the gateway's --api-key, if any")
    args = ap.parse_args()
    base, M, key = args.base.rstrip("/"), args.model, args.api_key

    oa = openai.OpenAI(base_url=base + "/v1", api_key=key or "none", max_retries=0, timeout=60)
    ol = ollama.Client(host=base, timeout=60,
                       headers={"Authorization": "Bearer " + key} if key else None)
    failed = []
    memo = {}  # non-stream answers, shared by the stream checks (computed on first use)

    # A test model never trained on chat often ends its turn at once; so that the chat
    # stream/non-stream comparison compares text, use the first seed with a non-empty answer.
    try:
        for seed in range(1, 41):
            r = oa.chat.completions.create(model=M, **dict(CHAT_ARGS, seed=seed))
            if r.choices[0].message.content:
                CHAT_ARGS["seed"] = CHAT_OPTIONS["seed"] = seed
                print(f"chat seed {seed}: the first with a non-empty answer", flush=True)
                break
        else:
            print("chat: no seed in 1..40 gives a non-empty answer; chat checks compare ''")
    except Exception as e:  # noqa: BLE001 - the chat checks below report it
        print(f"chat seed search failed: {e}")

    def check(name, fn):
        try:
            print(f"PASS {name}: {fn()}", flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure, keep going
            failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)

    def once(k, fn):
        if k not in memo:
            memo[k] = fn()
        return memo[k]

    def completion():
        return once("cmpl", lambda: oa.completions.create(model=M, **COMPLETION_ARGS))

    def chat():
        return once("chat", lambda: oa.chat.completions.create(model=M, **CHAT_ARGS))

    def generate():
        return once("gen", lambda: ol.generate(model=M, prompt=PROMPT, options=GEN_OPTIONS))

    def ollama_chat():
        return once("ochat", lambda: ol.chat(model=M, messages=MESSAGES, options=CHAT_OPTIONS))

    # 1. OpenAI completions, non-stream
    def t_completions():
        r = completion()
        c, u = r.choices[0], r.usage
        assert isinstance(c.text, str), f"text is {type(c.text).__name__}"
        assert c.finish_reason in ("stop", "length"), f"finish_reason {c.finish_reason!r}"
        assert u is not None, "no usage"
        assert u.prompt_tokens > 0 and u.completion_tokens >= 1, f"usage {u}"
        assert u.total_tokens == u.prompt_tokens + u.completion_tokens, f"usage {u}"
        return f"{u.completion_tokens} tokens, {c.finish_reason}, text {c.text!r}"

    # 2. OpenAI completions, stream (same seed: the same text)
    def t_completions_stream():
        ref = completion()
        text, reasons, usage = [], [], []
        for chunk in oa.completions.create(model=M, stream=True,
                                           stream_options={"include_usage": True},
                                           **COMPLETION_ARGS):
            if chunk.choices:
                text.append(chunk.choices[0].text)
                if chunk.choices[0].finish_reason is not None:
                    reasons.append(chunk.choices[0].finish_reason)
            elif chunk.usage is not None:
                usage.append(chunk.usage)
        text = "".join(text)
        assert text == ref.choices[0].text, f"stream {text!r} != non-stream {ref.choices[0].text!r}"
        assert reasons == [ref.choices[0].finish_reason], f"finish_reasons {reasons}"
        assert len(usage) == 1, f"{len(usage)} usage chunks"
        assert usage[0].completion_tokens == ref.usage.completion_tokens, f"usage {usage[0]}"
        return f"{len(text)} chars match, usage chunk {usage[0].completion_tokens} tokens"

    # 3. OpenAI chat, non-stream and stream
    def t_chat():
        m = chat().choices[0].message
        assert m.role == "assistant", f"role {m.role!r}"
        assert isinstance(m.content, str), f"content is {type(m.content).__name__}"
        return f"content {m.content!r}"

    def t_chat_stream():
        ref = chat().choices[0].message.content
        pieces, roles = [], []
        for chunk in oa.chat.completions.create(model=M, stream=True, **CHAT_ARGS):
            if not chunk.choices:
                continue
            roles.append(chunk.choices[0].delta.role)
            if chunk.choices[0].delta.content is not None:
                pieces.append(chunk.choices[0].delta.content)
        assert roles and roles[0] == "assistant", f"first delta.role {roles[:1]}"
        text = "".join(pieces)
        assert text == ref, f"stream {text!r} != non-stream {ref!r}"
        return f"{len(pieces)} pieces, {len(text)} chars match"

    # 4. greedy determinism
    def t_greedy():
        a, b = (oa.completions.create(model=M, prompt="The best way to", max_tokens=24,
                                      temperature=0).choices[0].text for _ in range(2))
        assert a == b, f"{a!r} != {b!r}"
        return f"text {a!r}"

    # 5. /v1/models
    def t_models():
        ids = [m.id for m in oa.models.list()]
        assert M in ids, f"{M!r} not in {ids}"
        return f"ids {ids}"

    # 6. Ollama generate, non-stream and stream
    def t_generate():
        r = generate()
        assert r.done is True, f"done {r.done!r}"
        assert r.done_reason in ("stop", "length"), f"done_reason {r.done_reason!r}"
        assert isinstance(r.response, str), f"response is {type(r.response).__name__}"
        assert r.eval_count >= 1 and r.prompt_eval_count >= 1, \
            f"eval_count {r.eval_count}, prompt_eval_count {r.prompt_eval_count}"
        assert r.total_duration > 0 and r.eval_duration > 0, \
            f"total_duration {r.total_duration}, eval_duration {r.eval_duration}"
        return f"{r.eval_count} tokens, {r.done_reason}, response {r.response!r}"

    def t_generate_stream():
        ref = generate()
        parts = list(ol.generate(model=M, prompt=PROMPT, options=GEN_OPTIONS, stream=True))
        assert parts, "no parts"
        text = "".join(p.response or "" for p in parts)
        assert text == ref.response, f"stream {text!r} != non-stream {ref.response!r}"
        last = parts[-1]
        assert last.done is True, f"last done {last.done!r}"
        assert not any(p.done for p in parts[:-1]), "done before the last part"
        assert last.eval_count == ref.eval_count, f"eval_count {last.eval_count} != {ref.eval_count}"
        assert last.done_reason == ref.done_reason, f"done_reason {last.done_reason!r}"
        return f"{len(parts)} parts, {len(text)} chars match"

    # 7. Ollama chat, non-stream and stream
    def t_ollama_chat():
        r = ollama_chat()
        assert r.done is True, f"done {r.done!r}"
        assert r.message.role == "assistant", f"role {r.message.role!r}"
        assert isinstance(r.message.content, str), f"content {r.message.content!r}"
        return f"content {r.message.content!r}"

    def t_ollama_chat_stream():
        ref = ollama_chat().message.content
        parts = list(ol.chat(model=M, messages=MESSAGES, options=CHAT_OPTIONS, stream=True))
        assert parts, "no parts"
        text = "".join(p.message.content or "" for p in parts)
        assert text == ref, f"stream {text!r} != non-stream {ref!r}"
        assert parts[-1].done is True, f"last done {parts[-1].done!r}"
        return f"{len(parts)} parts, {len(text)} chars match"

    # 8. Ollama tags, ps, show
    def t_ollama_info():
        names = [m.model for m in ol.list().models]
        assert M in names, f"{M!r} not in /api/tags {names}"
        running = [m.model for m in ol.ps().models]
        ol.show(M)
        return f"tags {names}, ps {running}, show ok"

    # 9. errors through the clients
    def expect(exc_type, status, fn):
        try:
            fn()
        except exc_type as e:
            assert e.status_code == status, f"status {e.status_code}, wanted {status}"
            return f"{exc_type.__name__} {e.status_code}: {e}"
        raise AssertionError(f"no {exc_type.__name__} raised")

    def t_err_model():
        return expect(openai.NotFoundError, 404, lambda: oa.completions.create(
            model="no-such-model", prompt=PROMPT, max_tokens=4))

    def t_err_max_tokens():
        return expect(openai.BadRequestError, 400, lambda: oa.completions.create(
            model=M, prompt=PROMPT, max_tokens=-5))

    def t_err_ollama_model():
        return expect(ollama.ResponseError, 404, lambda: ol.generate(
            model="no-such-model", prompt=PROMPT, options={"num_predict": 4}))

    # 10. wrong API key
    def t_wrong_key():
        bad = openai.OpenAI(base_url=base + "/v1", api_key=key + "-wrong", max_retries=0,
                            timeout=60)
        return expect(openai.AuthenticationError, 401, lambda: bad.completions.create(
            model=M, prompt=PROMPT, max_tokens=4))

    check("openai_completions", t_completions)
    check("openai_completions_stream", t_completions_stream)
    check("openai_chat", t_chat)
    check("openai_chat_stream", t_chat_stream)
    check("greedy_determinism", t_greedy)
    check("openai_models", t_models)
    check("ollama_generate", t_generate)
    check("ollama_generate_stream", t_generate_stream)
    check("ollama_chat", t_ollama_chat)
    check("ollama_chat_stream", t_ollama_chat_stream)
    check("ollama_tags_ps_show", t_ollama_info)
    check("error_openai_unknown_model", t_err_model)
    check("error_openai_bad_max_tokens", t_err_max_tokens)
    check("error_ollama_unknown_model", t_err_ollama_model)
    if key:
        check("error_wrong_api_key", t_wrong_key)

    print(f"{'FAILED' if failed else 'OK'}: {len(failed)} failed" +
          (f" ({', '.join(failed)})" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
