"""Infinity (`infinity-emb`): its ONNX classification path (`--engine optimum`) on our model file.

    PORT=8000 MODEL_DIR=models/minilm-sentiment-int8 \
        python -m benchmarks.peers.servers.infinity_server

POST /classify {"input": [text], "model": "sentiment"} -> {"data": [[{"label", "score"}, ...]]}.
Infinity loads a Hugging Face model folder (config.json, tokenizer files, an ONNX file) through
optimum's ORTModelForSequenceClassification and a transformers text-classification pipeline. Our
model folder has the ONNX file (outputs `logits` and `probabilities`; the pipeline applies softmax
to `logits`) and tokenizer.json, so this wrapper makes that folder in a temporary directory:
links to the two files, a config.json naming a BERT sequence classifier with our labels, and a
tokenizer_config.json. Then it runs Infinity's own CLI (`infinity_emb v2`) with the engine, device
and batch size the documentation gives for CPU serving, from inside that folder, because
Infinity 0.0.78 passes a local ONNX file to optimum as an absolute path that optimum no longer
matches (`Could not find any ONNX files with target file name /.../model.onnx`), while a model id
of `.` works. Its start-up warm-up is off (`--no-model-warmup`): it runs a 514-token text, which
the pipeline does not truncate and this graph (512 positions) refuses; our texts stay under 256.
The vector disk cache is off (it would answer repeated texts from SQLite). ONNX Runtime's session
options are optimum's defaults (not the shared engine's); Infinity's queue sorts waiting texts by
token count before it forms batches.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

NAME = "sentiment"


def model_folder(model_dir: Path, into: Path) -> Path:
    """A Hugging Face style folder for the model in `model_dir`, made under `into`."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    folder = into / NAME
    folder.mkdir()
    (folder / "model.onnx").symlink_to((model_dir / manifest["onnx_file"]).resolve())
    (folder / "tokenizer.json").symlink_to((model_dir / manifest["tokenizer_file"]).resolve())
    labels = list(manifest["labels"])
    config = {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
        "vocab_size": 30522,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer = {"tokenizer_class": "BertTokenizerFast", "do_lower_case": True,
                 "model_max_length": int(manifest["max_tokens"])}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return folder


def main() -> None:
    model_dir = Path(os.environ.get("MODEL_DIR", "models/minilm-sentiment-int8")).resolve()
    folder = model_folder(model_dir, Path(tempfile.mkdtemp(prefix="infinity-")))
    os.chdir(folder)
    cli = str(Path(sys.executable).parent / "infinity_emb")
    argv = [
        cli, "v2", "--model-id", ".", "--served-model-name", NAME, "--engine", "optimum",
        "--device", "cpu", "--batch-size", os.environ.get("PEER_MAX_BATCH", "32"),
        "--no-model-warmup", "--no-vector-disk-cache", "--log-level", "warning",
        "--host", os.environ.get("HOST", "127.0.0.1"), "--port", os.environ["PORT"],
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    # Replace this process: the benchmark stops the server by its session, with nothing between.
    os.execve(cli, argv, env)  # noqa: S606 (a fixed argv, no shell)


if __name__ == "__main__":
    main()
