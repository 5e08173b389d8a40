"""What Markdown rendering costs per reply (not a timed test; prints its figures).

A 16 000-character Markdown reply as AI models write them (headings, paragraphs with bold,
italic, inline code and links, lists, fenced code, a quote, a table, emoji), rendered to text
plus entities and split into Telegram messages of 4 096 UTF-16 units: what tgmux does per
reply with ``format: markdown``. The baseline, measured in the same round, is what a reply
costs as plain text: ``tgmux.text.split_text`` of the same text. Also shown: one streamed
draft of the whole text (``render(partial=True)``), and the reply's size in messages and
entities. Figures: milliseconds of CPU time per reply (``time.process_time``: the machine is
shared, wall time would count other processes), medians of ``--rounds`` rounds of
``--replies`` replies.

Run: python bench/bench_formatting.py [--rounds 7] [--replies 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

from tgmux.formatting import check, render, split
from tgmux.text import split_text

REPLY_CHARS = 16_000

SECTION = """## Step {n}: setting up the service

To get **step {n}** right, start from the *current* configuration and check `config.yaml`
first. The [documentation](https://example.com/docs/step-{n}) explains every key; the
short version is below. 🚀 Keep the ~~old~~ defaults unless you need more.

1. Install the package with `pip install example`.
2. Create the config file and set **`timeout: {n}0`**.
3. Restart the service:
   - on Linux, `systemctl restart example`;
   - on macOS, use *launchctl*.

```python
def handler(event, context):
    # step {n}: read the event, answer in under a second
    if not event.get("body"):
        return {{"status": 400, "error": "empty body"}}
    return {{"status": 200, "items": [x * {n} for x in range(10)]}}
```

> **Note:** the service answers `429` when you send more than {n}0 requests per minute;
> wait for the `Retry-After` seconds it gives.

| Setting | Default | Step {n} |
|---------|---------|----------|
| timeout | 30 | {n}0 |
| retries | 3 | {n} |

That is all for step {n}. If it fails, see the logs (`journalctl -u example`) and try again.

"""


def markdown_reply(chars: int = REPLY_CHARS) -> str:
    text, n = "", 1
    while len(text) < chars:
        text += SECTION.format(n=n)
        n += 1
    return text[:chars].rstrip()


def per_reply_ms(work: Callable[[], object], replies: int) -> float:
    started = time.process_time()
    for _ in range(replies):
        work()
    return (time.process_time() - started) / replies * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--replies", type=int, default=50)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    markdown = markdown_reply()
    pieces = split(render(markdown))
    for piece in pieces:
        check(piece)
    print(f"a {len(markdown)}-character Markdown reply: {len(pieces)} messages, "
          f"{sum(len(p.entities) for p in pieces)} entities; medians of {args.rounds} rounds "
          f"of {args.replies} replies")

    bare, ours, draft = [], [], []
    for _ in range(args.rounds):
        bare.append(per_reply_ms(lambda: split_text(markdown, 4096), args.replies))
        ours.append(per_reply_ms(lambda: split(render(markdown)), args.replies))
        draft.append(per_reply_ms(lambda: render(markdown, partial=True), args.replies))
    b, o, d = (statistics.median(x) for x in (bare, ours, draft))
    print(f"  plain text, split_text:        {b:6.2f} ms/reply")
    print(f"  Markdown, render + split:      {o:6.2f} ms/reply ({o - b:+.2f} ms, "
          f"{o / b:.1f}x the plain split); target < 5 ms: {'met' if o < 5 else 'NOT met'}")
    print(f"  one streamed draft, partial:   {d:6.2f} ms")


if __name__ == "__main__":
    main()
