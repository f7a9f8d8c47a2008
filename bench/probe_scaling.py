"""How the probe's time and memory grow with the sample and with the model.

Sample: the embedded SmolLM2 on the embedded data at 128 tokens, 8 to 64 rows. Model: random
Llama models built from configs (hidden 64 to 576, 4 blocks, MLP 4x wider) on 16 pre-tokenized
rows of 128 tokens. For each point: the probe's data pass and spectra seconds (exact method)
and the accumulators' planned bytes. One process, points in increasing order.

    python bench/probe_scaling.py [--append bench/results/probe_scaling.jsonl --machine "..."]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from records import add_record_arguments, emit  # noqa: E402  (bench/records.py)

from advisor.loading import load_model  # noqa: E402
from advisor.probe_pass import probe  # noqa: E402


def point(model, data, tokenizer, rows: int) -> dict:
    started = time.perf_counter()
    result = probe(model, data, tokenizer=tokenizer, num_samples=rows, batch_size=8, max_length=128, method="exact",
                   seed=0, progress=False)
    total = time.perf_counter() - started
    return {"rows": result.num_rows, "tokens": result.tokens, "layers": len(result.layers),
            "pass_s": round(total - result.spectra_seconds, 2), "spectra_s": round(result.spectra_seconds, 2),
            "accumulator_mb": round(result.accumulator_bytes / 2**20, 1)}


def random_llama(hidden: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=4,
                         num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                         max_position_embeddings=256)
    return LlamaForCausalLM(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_record_arguments(parser)
    args = parser.parse_args()
    model, tokenizer = load_model(None)
    by_sample = [point(model, None, tokenizer, rows) for rows in (8, 16, 32, 64)]
    generator = torch.Generator().manual_seed(0)
    token_rows = [{"input_ids": torch.randint(3, 1024, (128,), generator=generator).tolist()} for _ in range(16)]
    by_model = []
    for hidden in (64, 128, 256, 576):
        small = random_llama(hidden)
        parameters = sum(p.numel() for p in small.parameters())
        by_model.append({"hidden": hidden, "parameters": parameters, **point(small, token_rows, None, 16)})
    report = {"by_sample": by_sample, "by_model": by_model, "threads": torch.get_num_threads()}
    emit(report, args)


if __name__ == "__main__":
    main()
