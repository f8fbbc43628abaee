"""Measure the bot's offline token estimate against Llama 3's real tokenizer.

Why: the bot counts tokens with OpenAI's o200k vocabulary (exact for OpenAI's current
models) and must stay inside the context of whatever model a self-hoster runs. This
script builds prompts exactly as the bot does (persona + history + new message, with
speaker names) from real text, counts them the bot's way, and counts what a llama.cpp
or Ollama server running Llama 3 reports as `prompt_tokens` (Llama 3's tokenizer plus
its chat template), then prints the error before and after the bot's calibration from
reported usage.

Needs Node.js and the npm package llama3-tokenizer-js:
    npm install --prefix /tmp/tok llama3-tokenizer-js@1.2.0
    .venv/bin/python scripts/measure_token_error.py /tmp/tok
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bot.chat.context import as_message
from bot.llm.tokens import TokenCounter
from bot.models import Turn

ROOT = Path(__file__).resolve().parent.parent
NODE = """
import tok from 'llama3-tokenizer-js';
import fs from 'fs';
const items = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
console.log(JSON.stringify(items.map(t => tok.encode(t, {bos: false, eos: false}).length)));
"""
EXTRA = [
    "lol that's wild 😂😂 did you see the patch notes?? they nerfed everything",
    "Können Sie mir bitte erklären, wie die Speicherverwaltung in Rust funktioniert?",
    "東京で一番おいしいラーメン屋はどこですか？",
    "```python\nfor i in range(10):\n    print(f'{i:>3} {i**2:>5}')\n```\nwhy does this align?",
    "SELECT user_id, COUNT(*) FROM messages\n"
    "WHERE created_at > NOW() - INTERVAL '7 days' GROUP BY 1;",
    "ok",
    "thanks!",
    "can you summarise the conversation so far in three bullet points?",
]


def corpus() -> list[str]:
    texts: list[str] = list(EXTRA)
    for path in sorted((ROOT.parent / "shared" / "reference").glob("*.txt")):
        paragraphs = [p.strip() for p in path.read_text().split("\n\n") if p.strip()]
        texts.extend(p[:1500] for p in paragraphs)
    return texts


def llama3_counts(tok_dir: Path, texts: list[str]) -> list[int]:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tok_dir) / "count.mjs"
        script.write_text(NODE)
        data = Path(tmp) / "texts.json"
        data.write_text(json.dumps(texts))
        out = subprocess.run(
            ["node", str(script), str(data)], check=True, capture_output=True, text=True
        )
    counts: list[int] = json.loads(out.stdout)
    return counts


def main(tok_dir: str) -> None:
    rng = random.Random(7)
    texts = corpus()
    counter = TokenCounter()
    prompts: list[list[dict[str, str]]] = []
    for _ in range(200):
        n = rng.randint(0, 20)
        history = []
        for i in range(n):
            role = "user" if i % 2 == 0 else "assistant"
            history.append(
                Turn(role, rng.choice(texts), 0, 0, 1, rng.choice(["Ann", "Bob Smith", "zoë"]))
            )
        system = {"role": "system", "content": "You are Helper, a friendly assistant in #general."}
        new = as_message(Turn("user", rng.choice(texts), 0, 0, 1, "Ann"))
        prompts.append([system, *[as_message(t) for t in history], new])
    contents = [m["content"] for p in prompts for m in p]
    llama = iter(llama3_counts(Path(tok_dir), contents))
    estimated, reported = [], []
    for prompt in prompts:
        estimated.append(counter.count_messages(prompt))
        # Llama 3 template: <|begin_of_text|>, per message header (3) + "\n\n" + content +
        # <|eot_id|>, then the assistant header that primes the reply (4).
        reported.append(1 + sum(next(llama) + 5 for _ in prompt) + 4)
    raw = [(e - r) / r * 100 for e, r in zip(estimated, reported, strict=True)]
    # Calibration as the bot does it: learn from the first 20 replies, apply to the rest.
    for e, r in zip(estimated[:20], reported[:20], strict=True):
        counter.observe(e, r)
    calibrated = [
        (counter.calibrated(e) - r) / r * 100
        for e, r in zip(estimated[20:], reported[20:], strict=True)
    ]
    for label, errs in (("raw o200k estimate", raw), ("after calibration", calibrated)):
        print(
            f"{label:>20}: mean {statistics.mean(errs):+.1f} %, median "
            f"{statistics.median(errs):+.1f} %, worst under {min(errs):+.1f} %, "
            f"worst over {max(errs):+.1f} % (n={len(errs)})"
        )
    print(f"calibration ratio learned: {counter.ratio:.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tok")
