"""advise() time against the 5-point uniform-rank sweep it replaces, on the embedded SmolLM2.

Measured in one process: advise() at 64 rows x 256 tokens (the probe's defaults; advise's own are
the calibration's protocol, 32 x 128, half the rows and tokens), and the mean time of
LoRA training steps (r=16, every block linear, AdamW, batches of 8 rows x 256 tokens, the first
step left out as warm-up). The sweep's cost is modelled as 5 ranks x ``--steps`` steps each at
that measured step time (ranks change a step's time very little on this model: the adapter is
a few percent of the weights), so the ratio is advise / (5 x steps x step time). ``--steps``
is the training you would run per rank (default 1000: 8,000 rows, two epochs of 4,000).

    python bench/advise_vs_sweep.py [--steps 1000] [--append bench/results/advise_vs_sweep.jsonl --machine "..."]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from records import add_record_arguments, emit  # noqa: E402  (bench/records.py)

from advisor.data import make_batches  # noqa: E402
from advisor.layers import find_target_layers  # noqa: E402
from advisor.loading import load_model  # noqa: E402
from advisor.recommend import advise  # noqa: E402

SWEEP_RANKS = 5
TIMED_STEPS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    add_record_arguments(parser)
    args = parser.parse_args()
    model, tokenizer = load_model(None)
    started = time.perf_counter()
    advise(model, None, tokenizer=tokenizer, num_samples=64, max_length=256, progress=False)
    advise_seconds = time.perf_counter() - started

    batches = make_batches(None, tokenizer, num_samples=64, batch_size=8, max_length=256, seed=0)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=sorted(find_target_layers(model))))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    peft_model.train()
    step_times = []
    for batch in batches[: TIMED_STEPS + 1]:
        started = time.perf_counter()
        logits = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch.labels[:, 1:].flatten(),
                                                 ignore_index=-100)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - started)
    step = sum(step_times[1:]) / TIMED_STEPS
    sweep = SWEEP_RANKS * args.steps * step
    report = {
        "model": "SmolLM2-135M-Instruct (fp32, CPU)", "advise_s": round(advise_seconds, 2),
        "lora_step_s": round(step, 3), "steps_per_rank": args.steps, "sweep_ranks": SWEEP_RANKS,
        "sweep_s_modelled": round(sweep, 1), "advise_over_sweep": round(advise_seconds / sweep, 4)
    }
    emit(report, args)


if __name__ == "__main__":
    main()
