"""Peak memory of advise() against one LoRA training step on the embedded SmolLM2.

Each mode runs in a fresh child process (the resident-memory sampler of
``bench/probe_overhead.py``): ``advise`` probes the default 64 rows x 256 tokens in batches of 8
and advises; ``lora-step`` takes one AdamW step of a PEFT LoRA adapter (r=16, alpha 32, every
linear layer in the blocks) on the first of the same batches (8 rows x 256 tokens). Reported:
both peaks, the resident memory before (model and data loaded), and advise's peak over the
training step's.

    python bench/advise_memory.py [--append bench/results/advise_memory.jsonl --machine "..."]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from probe_overhead import PeakResidentMemory, rss_mb  # noqa: E402
from records import add_record_arguments, emit  # noqa: E402  (bench/records.py)


def child(mode: str) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from advisor.data import make_batches
    from advisor.layers import find_target_layers
    from advisor.loading import load_model
    from advisor.recommend import advise

    model, tokenizer = load_model(None)
    batches = make_batches(None, tokenizer, num_samples=64, batch_size=8, max_length=256, seed=0)
    if mode == "lora-step":
        peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=sorted(find_target_layers(model))))
        optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
        batch = batches[0]
    before = rss_mb()
    with PeakResidentMemory() as memory:
        if mode == "advise":
            advise(model, None, tokenizer=tokenizer, num_samples=64, max_length=256, progress=False)
        else:
            peft_model.train()
            logits = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch.labels[:, 1:].flatten(),
                                                     ignore_index=-100)
            loss.backward()
            optimizer.step()
    print(json.dumps({"mode": mode, "rss_before_mb": before, "peak_mb": memory.peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_record_arguments(parser)
    parser.add_argument("--child", choices=("advise", "lora-step"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    memory = {}
    for mode in ("advise", "lora-step"):
        output = subprocess.run([sys.executable, __file__, "--child", mode], check=True, capture_output=True, text=True)
        memory[mode] = json.loads(output.stdout.strip().splitlines()[-1])
    report = {
        "model": "SmolLM2-135M-Instruct (fp32, CPU)",
        "advise_peak_mb": round(memory["advise"]["peak_mb"]),
        "lora_step_peak_mb": round(memory["lora-step"]["peak_mb"]),
        "advise_before_mb": round(memory["advise"]["rss_before_mb"]),
        "lora_step_before_mb": round(memory["lora-step"]["rss_before_mb"]),
        "advise_over_lora_step": round(memory["advise"]["peak_mb"] / memory["lora-step"]["peak_mb"], 3)
    }
    emit(report, args)


if __name__ == "__main__":
    main()
