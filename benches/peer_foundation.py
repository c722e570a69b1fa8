#!/usr/bin/env python3
"""The peer side of `cargo bench --bench foundation`: the same workloads in PyTorch eager +
transformers, on the same weights (an f32 HF folder), prompts and thread count. Prints one JSON
object on stdout; progress goes to stderr.

Workloads (see docs/benchmarks.md):
- gen_b{B}: transformers `generate`, sampling at temperature 0.7 (top_k 0, top_p 1: plain
  softmax sampling, as r2m's), exactly N new tokens (min_new_tokens = max_new_tokens = N, so EOS
  never stops a row). tokens/s = B * N / wall time of the whole call (prefill included).
- train: one optimiser step of a plain HF LlamaForCausalLM: forward, cross-entropy on the shifted
  labels (labels = input_ids), backward, torch.optim.AdamW over all weights, zero_grad.
  tokens/s = B * T / step time.
- parity: the last-position logits of prompt 0 (a forward over the left-padded batch-1 prompt), so
  that the bench can check both sides compute the same model.

Run by the bench; by hand:
  .venv/bin/python benches/peer_foundation.py --model DIR --prompts prompts.json --threads 2
"""
import argparse
import json
import statistics
import sys
import time

import torch


def log(*a):
    print("peer:", *a, file=sys.stderr, flush=True)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev, warmup, reps, what):
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        log(f"{what}: warmup {i + 1}/{warmup} {time.perf_counter() - t0:.3f} s")
    times = []
    for i in range(reps):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
        log(f"{what}: rep {i + 1}/{reps} {times[-1]:.3f} s")
    return times


def left_pad(prompts, pad_id, dev):
    p = max(len(x) for x in prompts)
    ids = [[pad_id] * (p - len(x)) + list(x) for x in prompts]
    mask = [[0] * (p - len(x)) + [1] * len(x) for x in prompts]
    return torch.tensor(ids, device=dev), torch.tensor(mask, device=dev)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="f32 HF folder (config.json + model.safetensors)")
    ap.add_argument("--prompts", required=True, help='JSON {"prompts": [[ids]], "pad_id": int}')
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gen-batches", default="1,32")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--gen-warmup", type=int, default=1)
    ap.add_argument("--gen-reps", default="3,3", help="repetitions per batch size, in --gen-batches order")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--train-seq", type=int, default=256)
    ap.add_argument("--train-warmup", type=int, default=1)
    ap.add_argument("--train-reps", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of gen,train to skip")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    import transformers
    from transformers import AutoModelForCausalLM

    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("peer: --device cuda but torch sees no GPU")
    spec = json.load(open(a.prompts))
    prompts, pad_id = spec["prompts"], spec["pad_id"]
    skip = set(filter(None, a.skip.split(",")))

    t0 = time.perf_counter()
    # transformers 4.x calls it torch_dtype, 5.x dtype; f32 is the default of both.
    model = AutoModelForCausalLM.from_pretrained(a.model, attn_implementation="sdpa").to(dev).float()
    log(f"loaded {type(model).__name__} in {time.perf_counter() - t0:.1f} s "
        f"(torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()})")
    out = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "results": {},
    }

    # Parity: last-position logits of prompt 0, batch of 1.
    model.eval()
    with torch.no_grad():
        ids, mask = left_pad(prompts[:1], pad_id, dev)
        logits = model(input_ids=ids, attention_mask=mask).logits[0, -1].float().cpu()
    out["parity_logits"] = logits.tolist()

    if "gen" not in skip:
        batches = [int(x) for x in a.gen_batches.split(",")]
        reps = [int(x) for x in a.gen_reps.split(",")]
        for bi, b in enumerate(batches):
            batch = [prompts[i % len(prompts)] for i in range(b)]
            ids, mask = left_pad(batch, pad_id, dev)
            n = a.new_tokens
            seed = [0]

            def run():
                seed[0] += 1
                torch.manual_seed(seed[0])
                with torch.no_grad():
                    o = model.generate(
                        input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, top_k=0,
                        top_p=1.0, max_new_tokens=n, min_new_tokens=n, pad_token_id=pad_id,
                    )
                assert o.shape == (b, ids.shape[1] + n), o.shape

            times = timed(run, dev, a.gen_warmup, reps[min(bi, len(reps) - 1)], f"gen b{b}")
            med = statistics.median(times)
            out["results"][f"gen_b{b}"] = {
                "tokens_per_s": b * n / med, "median_s": med, "times_s": times, "tokens": b * n,
            }

    if "train" not in skip:
        model.train()
        b, t = a.train_batch, a.train_seq
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (b, t), generator=g).to(dev)
        mask = torch.ones_like(ids)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)

        def step():
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        times = timed(step, dev, a.train_warmup, a.train_reps, f"train {b}x{t}")
        med = statistics.median(times)
        out["results"]["train"] = {"tokens_per_s": b * t / med, "median_s": med, "times_s": times, "tokens": b * t}

    print(json.dumps(out))


if __name__ == "__main__":
    main()
