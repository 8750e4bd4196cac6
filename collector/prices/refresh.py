#!/usr/bin/env python3
"""Regenerates the built-in price table (models.json) from LiteLLM's price files.

    pip download --no-deps litellm==VERSION -d /tmp/l && unzip -o /tmp/l/litellm-*.whl \
        'litellm/model_prices_and_context_window_backup.json' -d /tmp/l/VERSION
    python3 collector/prices/refresh.py /tmp/l/NEW/litellm/model_prices_and_context_window_backup.json@NEW@YYYY-MM-DD \
        /tmp/l/OLD/litellm/model_prices_and_context_window_backup.json@OLD@YYYY-MM-DD > collector/prices/models.json

Each argument is `FILE@LITELLM_VERSION@RELEASE_DATE`, newest first. Every model of MODELS is taken from the first
file that lists one of its LiteLLM keys, with every per-token price field the pricer reads (base, long-context and
service-tier variants) copied as LiteLLM has it: no figure is typed by hand. A model only an older file lists is
marked `retired` (LiteLLM dropped it: its provider no longer sells it, so its last list price is final).
"""
import json
import re
import sys
from datetime import date

OPENAI = "https://openai.com/api/pricing/"
ANTHROPIC = "https://docs.anthropic.com/en/docs/about-claude/pricing"
GOOGLE = "https://ai.google.dev/gemini-api/docs/pricing"
BEDROCK = "https://aws.amazon.com/bedrock/pricing/"

# (key in tailscope's table, provider's price page, LiteLLM keys to try in order). The key is what the pricer's
# candidates reduce a span's model name to (dated, Bedrock and Vertex names resolve to it: collector/src/cost/prices.rs).
MODELS = [
    # OpenAI (also Azure OpenAI's global list price)
    *[(m, OPENAI, [m]) for m in [
        "gpt-6.1-sol", "gpt-6.1-terra", "gpt-6-sol", "gpt-6-luna", "gpt-6-astra",
        "gpt-5.6", "gpt-5.6-sol", "gpt-5.6-terra", "gpt-5.6-luna", "gpt-5.5", "gpt-5.5-pro",
        "gpt-5.4", "gpt-5.4-mini", "gpt-5.4-nano", "gpt-5.4-pro", "gpt-5.2", "gpt-5.2-pro", "gpt-5.2-codex",
        "gpt-5.1", "gpt-5.1-codex", "gpt-5.1-codex-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5-pro",
        "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-2024-05-13", "gpt-4o-mini",
        "o1", "o3", "o3-pro", "o3-mini", "o4-mini", "text-embedding-3-small", "text-embedding-3-large",
    ]],
    # Anthropic (also on Bedrock and Vertex under dated names)
    *[(m, ANTHROPIC, [m]) for m in [
        "claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5", "claude-opus-5", "claude-sonnet-5",
        "claude-fable-5-1", "claude-fable-5", "claude-mythos-5-1", "claude-mythos-5",
        "claude-opus-4-8", "claude-opus-4-7", "claude-opus-4-6", "claude-opus-4-5", "claude-sonnet-4-6",
        "claude-sonnet-4-5", "claude-haiku-4-5",
    ]],
    ("claude-opus-4-1", ANTHROPIC, ["claude-opus-4-1", "claude-opus-4-1-20250805"]),
    ("claude-opus-4", ANTHROPIC, ["claude-opus-4-20250514"]),
    ("claude-sonnet-4", ANTHROPIC, ["claude-sonnet-4-20250514"]),
    ("claude-3-7-sonnet", ANTHROPIC, ["claude-3-7-sonnet-20250219"]),
    ("claude-3-5-sonnet", ANTHROPIC, ["claude-3-5-sonnet-20241022"]),
    ("claude-3-5-haiku", ANTHROPIC, ["claude-3-5-haiku-20241022"]),
    ("claude-3-haiku", ANTHROPIC, ["claude-3-haiku-20240307"]),
    # Google (the Gemini API's list price; Vertex AI's is the same for these)
    *[(m, GOOGLE, ["gemini/" + m]) for m in [
        "gemini-4-argon", "gemini-4-hydrogen", "gemini-3.8-flash", "gemini-3.7-flash", "gemini-3.6-flash",
        "gemini-3.5-flash", "gemini-3.5-flash-lite", "gemini-3.1-pro-preview", "gemini-3.1-flash-lite",
        "gemini-3-flash-preview", "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite",
        "gemini-2.0-flash", "gemini-embedding-001",
    ]],
    ("gemini-3-pro-preview", GOOGLE, ["gemini/gemini-3-pro-preview", "vertex_ai/gemini-3-pro-preview"]),
    # Amazon Bedrock (us-east-1 on-demand)
    ("nova-premier", BEDROCK, ["amazon.nova-premier-v1:0"]),
    ("nova-pro", BEDROCK, ["amazon.nova-pro-v1:0"]),
    ("nova-lite", BEDROCK, ["amazon.nova-lite-v1:0"]),
    ("nova-micro", BEDROCK, ["amazon.nova-micro-v1:0"]),
    ("nova-2-lite", BEDROCK, ["amazon.nova-2-lite-v1:0"]),
    ("llama3-3-70b-instruct", BEDROCK, ["meta.llama3-3-70b-instruct-v1:0"]),
]

# The per-token fields the pricer reads (collector/src/cost/prices.rs `TOKEN_FIELDS`), each also with a
# long-context (`_above_200k_tokens`) and/or service-tier (`_priority`, `_flex`, `_batches`) suffix.
BASES = [
    "input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
    "cache_creation_input_token_cost_above_1hr", "cache_creation_input_token_cost", "output_cost_per_reasoning_token",
]
FIELD = re.compile(
    r"^(%s)(_above_\d+[km]?_tokens)?(_priority|_flex|_batches)?$" % "|".join(re.escape(b) for b in BASES)
)


def month(d: date) -> str:
    return d.strftime("%B %Y")


def main(argv):
    files = []
    for arg in argv:
        path, version, released = arg.split("@")
        with open(path) as f:
            files.append((json.load(f), version, date.fromisoformat(released)))
    out = {}
    for key, source, litellm_keys in MODELS:
        found = next(((table[k], version, released, k, i) for i, (table, version, released) in enumerate(files)
                      for k in litellm_keys if k in table), None)
        if found is None:
            sys.exit(f"{key}: none of {litellm_keys} is in any file given")
        entry, version, released, litellm_key, index = found
        prices = {f: v for f, v in entry.items() if FIELD.match(f) and isinstance(v, (int, float))}
        if "input_cost_per_token" not in prices:
            sys.exit(f"{key}: LiteLLM's {litellm_key} has no input_cost_per_token")
        row = {"litellm_provider": entry.get("litellm_provider"), "mode": entry.get("mode"), **prices,
               "source": source, "as_of": f"list price as of {month(released)}",
               "checked_against": f"LiteLLM {version} {litellm_key}"}
        if index > 0:
            row["retired"] = f"not listed by LiteLLM {files[0][1]} ({files[0][2].isoformat()}): the last list price"
        out[key] = row
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
