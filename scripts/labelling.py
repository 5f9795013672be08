"""The README's screenshot of the labelling page, from the real sampler and the real page.

    python -m scripts.labelling [--out docs/labelling.png]     (make labelling-screenshot)

Writes a handful of texts (written for this script, no dataset's), picks them with
`python -m functions.sampler` on the default model, starts the function with LABELLING=on on
loopback, loads the labelling file in headless Chromium (`scripts.cdp`), labels three texts
with keys and takes the picture with the fourth on screen.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from functions import sampler
from loadtests.local import ROOT, running
from scripts.cdp import Browser

SCREENSHOT = ROOT / "docs" / "labelling.png"
TEXTS = (
    "The tent survived two nights of rain, but the zip jammed on the first morning.",
    "Setup took ten minutes. The instructions could be clearer.",
    "Honestly not sure it was worth the price, though it does pack small.",
    "The stove works, I guess. Boils water slower than the box claims.",
    "Arrived a day late; the box was dented but nothing inside was damaged.",
    "Lightest sleeping bag I have owned and properly warm down to freezing.",
    "The straps dig into your shoulders after an hour, otherwise a solid pack.",
    "Customer service replaced the broken pole without any questions.",
    "It is a headlamp. It makes light.",
    "Would have given five stars if the lid did not leak.",
    "Third trip with these boots and my feet are still dry and blister-free.",
    "The colour in the photos is nothing like the real thing.",
)
KEYS = ("2", "p", "ArrowRight")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SCREENSHOT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kubesentiment-labelling-") as tmp:
        texts = Path(tmp) / "texts.jsonl"
        texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), "utf-8")
        batch = Path(tmp) / "batch-1.jsonl"
        if sampler.main([str(texts), "-n", "8", "--seed", "1", "--out", str(batch)]) != 0:
            raise SystemExit("the sampler failed")
        with (
            running(env={"LOG_LEVEL": "warning", "LABELLING": "on"}) as function,
            Browser(size=(1000, 560)) as browser,
        ):
            browser.open(f"{function.base_url}/label")
            browser.set_file("#file", batch)
            browser.wait_for("document.body.dataset.state === 'labelling'")
            for key in KEYS:
                browser.press(key)
            if browser.evaluate("document.body.dataset.labelled") != "2":
                raise SystemExit("the labelling page did not take the keys")
            browser.screenshot(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
