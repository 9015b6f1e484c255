#!/usr/bin/env python3
"""Checks a running `ember serve` with the official `openai` Python client.

Usage:
    python openai_client_test.py --base-url http://127.0.0.1:PORT/v1 \
        [--api-key KEY] --expect-json FILE

FILE holds what the CLI generates greedily for the same requests:
    {"model": ID,
     "chat": {"messages": [...], "max_tokens": N, "text": EXPECTED},
     "completion": {"prompt": "...", "max_tokens": N, "text": EXPECTED}}

Checks, in order: the model list; a chat completion at temperature 0 (text equal to
chat.text, usage consistent); the same streamed (deltas concatenate to the same text,
one finish_reason, a last usage chunk with no choices that matches); the chat with
logprobs and top_logprobs (the SDK's types, the same text, the most likely token
chosen at each position); a completion, one with logprobs, and a streamed completion
likewise; `stop` cutting the greedy text where the stop
string first occurs; `seed` reproducing a sampled answer; and the errors: a wrong
API key (401, only when --api-key is given), an unknown model (404), a prompt longer
than the context (400). Prints one JSON line and exits 0, or 1 at the first failure.
"""

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

import openai
from openai import OpenAI


def fail(message):
    raise AssertionError(message)


def check(cond, message):
    if not cond:
        fail(message)


def check_usage(usage, max_tokens, what):
    """Usage is present and adds up; completion tokens within max_tokens; the prompt's
    cached tokens (prefix caching) fewer than its tokens."""
    check(usage is not None, f"{what}: no usage")
    p, c, t = usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
    check(p > 0, f"{what}: prompt_tokens {p} should be positive")
    check(0 <= c <= max_tokens, f"{what}: completion_tokens {c} not within 0..{max_tokens}")
    check(t == p + c, f"{what}: total_tokens {t} != prompt {p} + completion {c}")
    details = usage.prompt_tokens_details
    check(details is not None and isinstance(details.cached_tokens, int)
          and 0 <= details.cached_tokens < p,
          f"{what}: prompt_tokens_details {details} should give cached_tokens below {p}")


def check_finish(finish, usage, max_tokens, what):
    check(finish in ("stop", "length"), f"{what}: finish_reason {finish!r} should be stop or length")
    if finish == "length":
        check(usage.completion_tokens == max_tokens,
              f"{what}: finish_reason length but {usage.completion_tokens} of {max_tokens} tokens")


def collect_stream(stream, chat, what):
    """Reads a stream of chunks; returns (text, finish_reason, usage) after checking
    the chunks' shape: one id, the right object, role first (chat), exactly one
    finish_reason, and the usage chunk (no choices) last."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    ids, pieces, finishes, usage, saw_role = set(), [], [], None, False
    n = 0
    for chunk in stream:
        n += 1
        check(usage is None, f"{what}: a chunk came after the usage chunk")
        check(chunk.object == obj, f"{what}: chunk object {chunk.object!r}, expected {obj!r}")
        ids.add(chunk.id)
        if chunk.usage is not None:
            check(chunk.choices == [], f"{what}: the usage chunk should have no choices, has {chunk.choices}")
            usage = chunk.usage
            continue
        check(len(chunk.choices) == 1, f"{what}: chunk with {len(chunk.choices)} choices")
        choice = chunk.choices[0]
        check(choice.index == 0, f"{what}: choice index {choice.index}")
        check(not finishes, f"{what}: a content chunk came after finish_reason")
        if chat:
            if n == 1:
                check(choice.delta.role == "assistant", f"{what}: first delta's role is {choice.delta.role!r}")
                saw_role = True
            piece = choice.delta.content
        else:
            piece = choice.text
        if piece:
            pieces.append(piece)
        if choice.finish_reason is not None:
            finishes.append(choice.finish_reason)
    check(n > 0, f"{what}: no chunks")
    check(len(ids) == 1, f"{what}: chunks carry {len(ids)} different ids")
    check(not chat or saw_role, f"{what}: no role in the first delta")
    check(len(finishes) == 1, f"{what}: {len(finishes)} finish_reasons: {finishes}")
    check(usage is not None, f"{what}: no usage chunk although include_usage was set")
    return "".join(pieces), finishes[0], usage


def stop_string(text):
    """A short stop string from the middle of `text`, at its first occurrence, and the
    text the server should return with it; None when the text is too short."""
    for k in range(max(1, len(text) // 2), len(text) - 2):
        sub = text[k:k + 3]
        if sub.strip() == sub and text.find(sub) == k:
            return sub, text[:k]
    return None


def raw_get(url, headers=None):
    """(status, body) of a GET without the client library."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", help="the server's key; without it the auth check is skipped")
    ap.add_argument("--expect-json", required=True)
    ap.add_argument("--long-words", type=int, default=5000,
                    help="words in the prompt that must exceed the context (default 5000)")
    args = ap.parse_args()

    with open(args.expect_json) as f:
        expect = json.load(f)
    model, chat, comp = expect["model"], expect["chat"], expect["completion"]
    base = args.base_url.rstrip("/")
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    # No retries: a 4xx/5xx must surface at once, not be hidden by a retry.
    client = OpenAI(base_url=base, api_key=args.api_key or "no-key", max_retries=0, timeout=300)
    done = []
    started = time.monotonic()

    # --- plain HTTP: the page and /health need no key; /v1/* does when the server has one
    status, body = raw_get(root + "/health")
    check(status == 200 and json.loads(body).get("status") == "ok", f"/health answered {status} {body!r}")
    status, body = raw_get(root + "/")
    check(status == 200 and 'id="messages"' in body, f"/ answered {status} without the chat page")
    done.append("health_and_page")

    # --- models
    models = client.models.list()
    ids = [m.id for m in models.data]
    check(ids == [model], f"models {ids}, expected [{model!r}]")
    check(models.data[0].owned_by == "ember", f"owned_by {models.data[0].owned_by!r}")
    done.append("models")

    # --- chat, whole
    r = client.chat.completions.create(model=model, messages=chat["messages"],
                                       max_tokens=chat["max_tokens"], temperature=0)
    check(r.object == "chat.completion", f"chat: object {r.object!r}")
    check(r.id.startswith("chatcmpl-"), f"chat: id {r.id!r}")
    check(r.model == model, f"chat: model {r.model!r}")
    check(len(r.choices) == 1 and r.choices[0].index == 0, f"chat: choices {r.choices}")
    msg = r.choices[0].message
    check(msg.role == "assistant", f"chat: role {msg.role!r}")
    check(msg.content == chat["text"], f"chat: content {msg.content!r} != expected {chat['text']!r}")
    check_usage(r.usage, chat["max_tokens"], "chat")
    check_finish(r.choices[0].finish_reason, r.usage, chat["max_tokens"], "chat")
    chat_usage, chat_finish = r.usage, r.choices[0].finish_reason
    done.append("chat")

    # --- chat with log probabilities: the SDK's types parse them, the text is the same,
    # greedy decoding picks each position's most likely token, the bytes make the text
    r = client.chat.completions.create(model=model, messages=chat["messages"],
                                       max_tokens=chat["max_tokens"], temperature=0,
                                       logprobs=True, top_logprobs=2)
    check(r.choices[0].message.content == chat["text"],
          f"chat logprobs: content {r.choices[0].message.content!r} != expected {chat['text']!r}")
    entries = (r.choices[0].logprobs and r.choices[0].logprobs.content) or []
    check(len(entries) > 0, f"chat logprobs: none returned: {r.choices[0].logprobs}")
    for e in entries:
        check(e.logprob <= 0 and len(e.top_logprobs) == 2 and e.top_logprobs[0].token == e.token
              and e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob,
              f"chat logprobs: entry {e}")
    joined = b"".join(bytes(e.bytes) for e in entries).decode("utf-8", errors="replace")
    check(joined == chat["text"], f"chat logprobs: the tokens' bytes give {joined!r}, not {chat['text']!r}")
    done.append("chat_logprobs")

    # --- chat, streamed
    stream = client.chat.completions.create(model=model, messages=chat["messages"],
                                            max_tokens=chat["max_tokens"], temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    text, finish, usage = collect_stream(stream, chat=True, what="chat stream")
    check(text == chat["text"], f"chat stream: text {text!r} != expected {chat['text']!r}")
    check(finish == chat_finish, f"chat stream: finish_reason {finish!r} != {chat_finish!r} unstreamed")
    check(usage == chat_usage, f"chat stream: usage {usage} != {chat_usage} unstreamed")
    done.append("chat_stream")

    # --- completion, whole
    r = client.completions.create(model=model, prompt=comp["prompt"],
                                  max_tokens=comp["max_tokens"], temperature=0)
    check(r.object == "text_completion", f"completion: object {r.object!r}")
    check(r.model == model, f"completion: model {r.model!r}")
    check(len(r.choices) == 1 and r.choices[0].index == 0, f"completion: choices {r.choices}")
    check(r.choices[0].text == comp["text"],
          f"completion: text {r.choices[0].text!r} != expected {comp['text']!r}")
    check(r.choices[0].logprobs is None, "completion: logprobs should be null unless asked for")
    check_usage(r.usage, comp["max_tokens"], "completion")
    check_finish(r.choices[0].finish_reason, r.usage, comp["max_tokens"], "completion")
    comp_usage, comp_finish = r.usage, r.choices[0].finish_reason
    done.append("completion")

    # --- completion with log probabilities (the legacy shape)
    r = client.completions.create(model=model, prompt=comp["prompt"], max_tokens=comp["max_tokens"],
                                  temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    check(r.choices[0].text == comp["text"], f"completion logprobs: text {r.choices[0].text!r}")
    check(lp is not None and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
          == len(lp.text_offset) > 0, f"completion logprobs: {lp}")
    check(all(len(top) == 2 and max(top.values()) == p for top, p in zip(lp.top_logprobs, lp.token_logprobs)),
          f"completion logprobs: the chosen tokens should be the most likely: {lp}")
    done.append("completion_logprobs")

    # --- completion, streamed
    stream = client.completions.create(model=model, prompt=comp["prompt"],
                                       max_tokens=comp["max_tokens"], temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    text, finish, usage = collect_stream(stream, chat=False, what="completion stream")
    check(text == comp["text"], f"completion stream: text {text!r} != expected {comp['text']!r}")
    check(finish == comp_finish, f"completion stream: finish_reason {finish!r} != {comp_finish!r}")
    check(usage == comp_usage, f"completion stream: usage {usage} != {comp_usage}")
    done.append("completion_stream")

    # --- stop: greedy decoding is a prefix of the same text, cut before the stop string
    cut = stop_string(chat["text"])
    if cut is not None:
        stop, before = cut
        r = client.chat.completions.create(model=model, messages=chat["messages"],
                                           max_tokens=chat["max_tokens"], temperature=0, stop=[stop])
        got = r.choices[0].message.content
        check(got == before, f"stop {stop!r}: content {got!r}, expected {before!r}")
        check(r.choices[0].finish_reason == "stop",
              f"stop {stop!r}: finish_reason {r.choices[0].finish_reason!r}")
        check(r.usage.completion_tokens <= chat_usage.completion_tokens,
              f"stop {stop!r}: {r.usage.completion_tokens} tokens, more than without stop")
        done.append("stop")

    # --- seed: the same seed samples the same answer
    sampled = [
        client.chat.completions.create(model=model, messages=chat["messages"], max_tokens=chat["max_tokens"],
                                       temperature=1.0, seed=1234).choices[0].message.content
        for _ in range(2)
    ]
    check(sampled[0] == sampled[1], f"seed 1234 gave two answers: {sampled}")
    done.append("seed")

    # --- errors
    if args.api_key:
        bad = OpenAI(base_url=base, api_key=args.api_key + "-wrong", max_retries=0, timeout=60)
        try:
            bad.models.list()
            fail("a wrong API key was accepted")
        except openai.AuthenticationError as e:
            check(e.status_code == 401, f"wrong key: status {e.status_code}")
            check(isinstance(e.body, dict) and e.body.get("message"), f"wrong key: error body {e.body!r}")
        status, _ = raw_get(base + "/models")
        check(status == 401, f"no Authorization header: /v1/models answered {status}, expected 401")
        done.append("auth")

    try:
        client.chat.completions.create(model=model + "-missing", messages=chat["messages"], max_tokens=4)
        fail("an unknown model was accepted")
    except openai.NotFoundError as e:
        check(isinstance(e.body, dict) and e.body.get("message"), f"unknown model: error body {e.body!r}")
    done.append("unknown_model")

    long_prompt = "word " * args.long_words
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": long_prompt}],
                                       max_tokens=4, temperature=0)
        fail(f"a prompt of {args.long_words} words was accepted")
    except openai.BadRequestError as e:
        check(isinstance(e.body, dict) and e.body.get("message"), f"too long: error body {e.body!r}")
        check(e.body.get("type") == "invalid_request_error", f"too long: error type {e.body.get('type')!r}")
        too_long_message = e.body["message"]
    done.append("too_long")

    # A short prompt asking for a reply longer than the context holds: refused up front,
    # naming max_tokens, rather than cut off.
    try:
        client.completions.create(model=model, prompt=comp["prompt"], max_tokens=10_000_000,
                                  temperature=0)
        fail("max_tokens beyond the context was accepted")
    except openai.BadRequestError as e:
        check(isinstance(e.body, dict) and e.body.get("param") == "max_tokens",
              f"max_tokens too large: error body {e.body!r}")
        check(e.body.get("code") == "context_length_exceeded",
              f"max_tokens too large: error code {e.body.get('code')!r}")
    done.append("max_tokens_too_large")

    print(json.dumps({
        "ok": True,
        "model": model,
        "checks": done,
        "chat_text": chat["text"],
        "completion_text": comp["text"],
        "usage": {"chat": chat_usage.model_dump(exclude_none=True),
                  "completion": comp_usage.model_dump(exclude_none=True)},
        "too_long_message": too_long_message,
        "seconds": round(time.monotonic() - started, 2),
    }))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"openai client test failed: {e}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(e)}))
        sys.exit(1)
    except openai.APIError as e:
        # An error the checks did not expect (e.g. a 400 on a valid request).
        print(f"openai client test failed: unexpected API error: {e!r}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
