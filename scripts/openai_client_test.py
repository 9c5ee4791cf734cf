#!/usr/bin/env python3
"""Talks to a running `qoq serve` with the official `openai` Python client (PyPI), as users' code would.

  openai_client_test.py --base-url http://127.0.0.1:PORT/v1 --api-key KEY --model NAME
Exits non-zero on the first failed check.
"""
import argparse, sys

import openai
from openai import OpenAI


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    c = OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=300)
    checks = 0

    def check(cond, what):
        nonlocal checks
        if not cond:
            sys.exit(f"openai client: FAILED: {what}")
        checks += 1

    models = c.models.list()
    check([m.id for m in models.data] == [a.model], f"models.list gives {[m.id for m in models.data]}")

    prompt = "The capital of France is"
    r = c.completions.create(model=a.model, prompt=prompt, max_tokens=8, temperature=0)
    check(r.object == "text_completion" and r.usage.completion_tokens > 0 and r.choices[0].finish_reason in ("stop", "length"),
          f"completion {r}")
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(model=a.model, prompt=prompt, max_tokens=8, temperature=0, stream=True)
                       if ch.choices)
    check(streamed == r.choices[0].text, f"streamed text {streamed!r} != {r.choices[0].text!r}")

    # lm-evaluation-harness's loglikelihood request shape.
    e = c.completions.create(model=a.model, prompt=prompt, max_tokens=1, temperature=0, echo=True, logprobs=1, seed=1234)
    lp = e.choices[0].logprobs
    check(e.choices[0].text.startswith(prompt), "echo keeps the prompt")
    check(lp.token_logprobs[0] is None and len(lp.tokens) == e.usage.prompt_tokens + 1
          and all(x <= 0 for x in lp.token_logprobs[1:]) and lp.top_logprobs[0] is None and len(lp.text_offset) == len(lp.tokens),
          f"echo logprobs {lp}")

    two = c.completions.create(model=a.model, prompt=[prompt, "Once upon a time"], n=2, max_tokens=4, temperature=0.8, seed=7,
                               presence_penalty=0.5, frequency_penalty=0.5)
    check([ch.index for ch in two.choices] == [0, 1, 2, 3], f"batch × n choices {[ch.index for ch in two.choices]}")
    biased = c.completions.create(model=a.model, prompt=prompt, max_tokens=3, temperature=0, logit_bias={"28": 100}, logprobs=0)
    check(biased.choices[0].text == c.post("/detokenize", body={"tokens": [28, 28, 28]}, cast_to=dict)["prompt"], "logit_bias")

    msgs = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "What is the capital of France?"}]
    ch = c.chat.completions.create(model=a.model, messages=msgs, max_tokens=16, temperature=0)
    check(ch.choices[0].message.role == "assistant" and ch.choices[0].message.content and ch.usage.prompt_tokens > 10, f"chat {ch}")
    parts, usage = [], None
    for chunk in c.chat.completions.create(model=a.model, messages=msgs, max_tokens=16, temperature=0, stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
    check("".join(parts) == ch.choices[0].message.content, f"chat stream {''.join(parts)!r} != {ch.choices[0].message.content!r}")
    check(usage is not None and usage.completion_tokens == ch.usage.completion_tokens, f"stream usage {usage}")
    lpc = c.chat.completions.create(model=a.model, messages=msgs, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    check(len(lpc.choices[0].logprobs.content) == lpc.usage.completion_tokens
          and all(len(t.top_logprobs) == 3 for t in lpc.choices[0].logprobs.content), "chat logprobs")

    for what, call, err in [
        ("wrong key", lambda: OpenAI(base_url=a.base_url, api_key="wrong", max_retries=0).models.list(), openai.AuthenticationError),
        ("unknown model", lambda: c.completions.create(model="no-such-model", prompt="x", max_tokens=1), openai.NotFoundError),
        ("negative max_tokens", lambda: c.completions.create(model=a.model, prompt="x", max_tokens=-1), openai.BadRequestError),
        ("too long", lambda: c.completions.create(model=a.model, prompt="x", max_tokens=10 ** 6), openai.BadRequestError),
    ]:
        try:
            call()
            check(False, f"{what}: accepted")
        except err as ex:
            check(isinstance(ex.body, dict) and ex.body.get("message"), f"{what}: error body {ex.body}")
    print(f"openai client {openai.__version__}: all {checks} checks passed")


if __name__ == "__main__":
    main()
