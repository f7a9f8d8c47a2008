"""advise() against PEFT's EVA (``get_eva_state_dict``) on the embedded SmolLM2 and data, one process.

Both over the same batches (64 rows x 256 tokens, the probe's defaults, batches of 8): advise()
runs the gradient probe and the (uncalibrated) rank rule; EVA runs forward passes with an
incremental SVD of every target layer's inputs (LoraConfig r=8, EvaConfig rho=2, tau=0.99, the
same target layers). Interleaved (advise, EVA, advise, EVA, ...); the fastest of each is
reported with their ratio.

    python bench/advise_vs_eva.py [--repeats 1] [--append bench/results/advise_vs_eva.jsonl --machine "..."]
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from peft import EvaConfig, LoraConfig  # noqa: E402
from peft.tuners.lora.eva import get_eva_state_dict  # noqa: E402
from records import add_record_arguments, emit  # noqa: E402  (bench/records.py)

from advisor.data import make_batches  # noqa: E402
from advisor.layers import find_target_layers  # noqa: E402
from advisor.loading import load_model  # noqa: E402
from advisor.recommend import advise  # noqa: E402


def eva_parameters(model, eva: dict) -> int:
    """Trainable LoRA parameters of EVA's allocation: rank (rows of its components) x (in + out)."""
    return sum(v.shape[0] * (v.shape[1] + model.get_submodule(k).out_features) for k, v in eva.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    add_record_arguments(parser)
    args = parser.parse_args()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    model, tokenizer = load_model(None)
    batches = make_batches(None, tokenizer, num_samples=args.samples, batch_size=8, max_length=args.max_length, seed=0)
    dataloader = [{"input_ids": b.input_ids, "attention_mask": b.attention_mask} for b in batches]
    targets = sorted(find_target_layers(model))
    advise_times, eva_times = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        advice = advise(model, None, tokenizer=tokenizer, num_samples=args.samples, max_length=args.max_length,
                        progress=False, return_advice=True)
        advise_times.append(time.perf_counter() - started)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights="eva",
                            eva_config=EvaConfig(rho=2.0, tau=0.99))
        started = time.perf_counter()
        eva = get_eva_state_dict(model, dataloader, config, show_progress_bar=False)
        eva_times.append(time.perf_counter() - started)
    report = {
        "model": "SmolLM2-135M-Instruct (fp32, CPU)", "rows": sum(b.num_rows for b in batches),
        "tokens": sum(int(b.attention_mask.sum()) for b in batches), "layers": len(targets),
        "advise_s": round(min(advise_times), 2), "eva_s": round(min(eva_times), 2),
        "advise_over_eva": round(min(advise_times) / min(eva_times), 3),
        "advise_trainable_params": advice.trainable_params,
        "eva_trainable_params": eva_parameters(model, eva),
        "eva_layers": len(eva),
    }
    emit(report, args)


if __name__ == "__main__":
    main()
