#!/usr/bin/env python3
"""The peer side of `cargo bench --bench foundation`: the same workloads in PyTorch eager +
transformers, on the same weights (an f32 HF folder), prompts and thread count.

Workloads (see docs/benchmarks.md):
- gen: transformers `generate`, sampling at temperature 0.7 (top_k 0, top_p 1: plain softmax
  sampling, as r2m's), exactly N new tokens (min_new_tokens = max_new_tokens = N, so EOS never
  stops a row). Timed: the whole call (prefill included).
- train: one optimiser step of a plain HF LlamaForCausalLM: forward, cross-entropy on the shifted
  labels (labels = input_ids), backward, torch.optim.AdamW over all weights, zero_grad.
- parity: the last-position logits of prompt 0 (batch of 1), so that the bench can check that
  both sides compute the same model.

Two modes:
- `--serve` (what the bench uses): prints one JSON line when loaded, then answers one JSON request
  per stdin line with one JSON line on stdout, so that the bench can interleave peer and r2m
  repetitions (contention on a shared machine then hits both alike). Requests:
  {"cmd": "gen", "b": B, "n": N, "seed": S} -> {"s": seconds}
  {"cmd": "train_setup", "b": B, "t": T} -> {}
  {"cmd": "train"} -> {"s": seconds}
  {"cmd": "train_breakdown"} -> {"forward": s, "backward": s, "adamw": s, "zero_grad": s}
  {"cmd": "quit"}
- standalone (by hand): runs everything and prints one JSON object:
  .venv/bin/python benches/peer_foundation.py --model DIR --prompts prompts.json --threads 2
Progress and timings go to stderr.
"""
import argparse
import json
import statistics
import sys
import time

import torch


def log(*a):
    print("peer:", *a, file=sys.stderr, flush=True)


class Peer:
    def __init__(self, model_dir, prompts, pad_id, device, dtype="f32"):
        import transformers
        from transformers import AutoModelForCausalLM

        self.dev = torch.device(device)
        if self.dev.type == "cuda" and not torch.cuda.is_available():
            sys.exit("peer: --device cuda but torch sees no GPU")
        self.prompts, self.pad_id = prompts, pad_id
        t0 = time.perf_counter()
        # f32 is the default dtype of transformers 4.x and the config's torch_dtype for 5.x.
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").to(self.dev).float()
        self.model.eval()
        # bf16: torch.autocast over the f32 weights (the mixed-precision recipe of HF Trainer /
        # TRL with bf16=True), the same recipe as r2m's policy.dtype = "bf16".
        self.bf16 = dtype == "bf16"
        self.info = {
            "dtype": "bf16 autocast" if self.bf16 else "f32",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "device": str(self.dev),
        }
        log(f"loaded {type(self.model).__name__} in {time.perf_counter() - t0:.1f} s ({self.info})")
        self.opt = None

    def sync(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def left_pad(self, prompts):
        p = max(len(x) for x in prompts)
        ids = [[self.pad_id] * (p - len(x)) + list(x) for x in prompts]
        mask = [[0] * (p - len(x)) + [1] * len(x) for x in prompts]
        return torch.tensor(ids, device=self.dev), torch.tensor(mask, device=self.dev)

    def autocast(self):
        return torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16)

    def parity_logits(self):
        with torch.no_grad(), self.autocast():
            ids, mask = self.left_pad(self.prompts[:1])
            return self.model(input_ids=ids, attention_mask=mask).logits[0, -1].float().cpu().tolist()

    def gen(self, b, n, seed):
        self.model.eval()
        ids, mask = self.left_pad([self.prompts[i % len(self.prompts)] for i in range(b)])
        torch.manual_seed(seed)
        self.sync()
        t0 = time.perf_counter()
        with torch.no_grad(), self.autocast():
            o = self.model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, top_k=0, top_p=1.0,
                max_new_tokens=n, min_new_tokens=n, pad_token_id=self.pad_id,
            )
        self.sync()
        dt = time.perf_counter() - t0
        assert o.shape == (b, ids.shape[1] + n), o.shape
        return dt

    def train_setup(self, b, t):
        self.model.train()
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, self.model.config.vocab_size, (b, t), generator=g).to(self.dev)
        self.mask = torch.ones_like(self.ids)
        # torch's defaults except weight_decay 0 (r2m's and TRL's); on the CPU this is the
        # single-tensor implementation, on CUDA the multi-tensor (foreach) one.
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, weight_decay=0.0)

    def train(self):
        self.sync()
        t0 = time.perf_counter()
        with self.autocast():
            loss = self.model(input_ids=self.ids, attention_mask=self.mask, labels=self.ids).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sync()
        return time.perf_counter() - t0

    def train_breakdown(self):
        t = [time.perf_counter()]
        with self.autocast():
            loss = self.model(input_ids=self.ids, attention_mask=self.mask, labels=self.ids).loss
        self.sync()
        t.append(time.perf_counter())
        loss.backward()
        self.sync()
        t.append(time.perf_counter())
        self.opt.step()
        self.sync()
        t.append(time.perf_counter())
        self.opt.zero_grad(set_to_none=True)
        self.sync()
        t.append(time.perf_counter())
        return dict(zip(["forward", "backward", "adamw", "zero_grad"], [b - a for a, b in zip(t, t[1:])]))


def serve(peer):
    print(json.dumps({"ready": True, **peer.info, "parity_logits": peer.parity_logits()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "quit":
            break
        if cmd == "gen":
            res = {"s": peer.gen(req["b"], req["n"], req["seed"])}
        elif cmd == "train_setup":
            peer.train_setup(req["b"], req["t"])
            res = {}
        elif cmd == "train":
            res = {"s": peer.train()}
        elif cmd == "train_breakdown":
            res = peer.train_breakdown()
        else:
            res = {"error": f"unknown cmd {cmd}"}
        print(json.dumps(res), flush=True)


def standalone(peer, a):
    out = {**peer.info, "results": {}}
    n = a.new_tokens
    for b in [int(x) for x in a.gen_batches.split(",")]:
        times = []
        for i in range(a.warmup + a.reps):
            dt = peer.gen(b, n, i + 1)
            log(f"gen b{b}: {'warmup' if i < a.warmup else 'rep'} {dt:.3f} s")
            if i >= a.warmup:
                times.append(dt)
        med = statistics.median(times)
        out["results"][f"gen_b{b}"] = {"tokens_per_s": b * n / med, "times_s": times}
    peer.train_setup(a.train_batch, a.train_seq)
    times = []
    for i in range(a.warmup + a.reps):
        dt = peer.train()
        log(f"train: {'warmup' if i < a.warmup else 'rep'} {dt:.3f} s")
        if i >= a.warmup:
            times.append(dt)
    med = statistics.median(times)
    out["results"]["train"] = {"tokens_per_s": a.train_batch * a.train_seq / med, "times_s": times}
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="f32 HF folder (config.json + model.safetensors)")
    ap.add_argument("--prompts", required=True, help='JSON {"prompts": [[ids]], "pad_id": int}')
    ap.add_argument("--threads", type=int, required=True, help="torch.set_num_threads (r2m's count)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    # standalone only
    ap.add_argument("--gen-batches", default="1,32")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--train-seq", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec = json.load(open(a.prompts))
    peer = Peer(a.model, spec["prompts"], spec["pad_id"], a.device, a.dtype)
    if a.serve:
        serve(peer)
    else:
        standalone(peer, a)


if __name__ == "__main__":
    main()
