#!/usr/bin/env python3
"""The peer side of `cargo bench --bench rl_step`: TRL's GRPOTrainer or RLOOTrainer, one RL step at a
time, on the same weights, reward model, prompts, trainable set and thread count as r2m.

Written against trl 1.16.0 with transformers 4.57.1 and torch 2.11.0 (the bench installs it:
`.venv/bin/pip install "trl==1.16.0" "transformers==4.57.1" "torch==2.11.0"`).

The workload (the bench passes every value; see benches/rl_step.rs):
- policy: the f32 HF folder, every parameter frozen (requires_grad False) except the top
  `--top-layers` blocks and the final norm (r2m's `Trainable::Top { layers, head: false }`);
- reward: the reward model folder as `reward_funcs` (a LlamaForSequenceClassification written by r2m);
- generation: `--prompts-per-step` prompts x `--group` samples, exactly `--new-tokens` tokens
  (`min_new_tokens` = `max_completion_length`), temperature `--temperature`, top_p 1, top_k 0;
- training: `num_iterations` = `--epochs`, `per_device_train_batch_size` = `--minibatch`,
  `steps_per_generation` = B / minibatch, no gradient accumulation: (B / minibatch) x epochs
  optimizer steps per RL step (= per generation); AdamW (transformers' default optimizer) at a
  constant `--lr`, grad-norm clip, fp32, no gradient checkpointing, `beta`, `epsilon`; GRPO with
  loss_type "grpo" and scale_rewards "group"; RLOO without advantage normalisation.

Protocol: prints one JSON line when ready ({"ready": true, versions, "trainable_params", "prompt_ids"}),
then runs TRL's own `trainer.train()`. A callback pauses the loop at every RL-step boundary (every
(B / minibatch) x epochs optimizer steps, i.e. right before a generation) and reads one request
from stdin: {"cmd": "step"} runs one RL step and answers, at the next boundary,
{"s": seconds, "phases": {...}}; {"cmd": "quit"} ends. The phases come from timing TRL's own methods
(`_generate`, `_calculate_rewards`, `_generate_and_score_completions`, `training_step`) and the
optimizer step (callbacks): generate, logprobs_reference (the rest of the rollout: old and reference
log-probs, advantages), reward, update (forward + backward of the training steps + optimizer),
other (grad clipping, scheduler, logging, data loading). Only the protocol goes to stdout; all other
output (transformers' log printing included) goes to stderr.
"""
import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections import defaultdict


class Quit(Exception):
    pass


class Protocol:
    """JSON lines on the real stdout; fd 1 itself is pointed at stderr for everything else."""

    def __init__(self):
        sys.stdout.flush()
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, obj):
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()

    def recv(self):
        line = sys.stdin.readline()
        return json.loads(line) if line.strip() else {"cmd": "quit"}


def log(*a):
    print("peer:", *a, file=sys.stderr, flush=True)


class Phases:
    """Wall time spent in wrapped methods of one trainer, accumulated over one RL step."""

    def __init__(self, sync):
        self.sync = sync
        self.t = defaultdict(float)

    def wrap(self, obj, name, key):
        orig = getattr(obj, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                self.sync()
                self.t[key] += time.perf_counter() - t0

        setattr(obj, name, timed)

    def summary(self, total):
        t = self.t
        gen, rew, roll = t["generate"], t["reward"], t["rollout"]
        fwd_bwd = t["training_step"] - roll  # training_step includes the rollout at the generation step
        update = fwd_bwd + t["optimizer"]
        return {
            "generate": gen,
            "logprobs_reference": roll - gen - rew,
            "reward": rew,
            "update": update,
            "update_fwd_bwd": fwd_bwd,
            "optimizer": t["optimizer"],
            "other": total - roll - update,
        }


def make_driver(proto, phases, steps_per_rl, sync):
    from transformers import TrainerCallback

    class Driver(TrainerCallback):
        """Pauses TRL's loop at each RL-step boundary, times the step, and waits for the next request."""

        def __init__(self):
            self.t0 = None
            self.t_opt = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step % steps_per_rl != 0:
                return
            if self.t0 is not None:
                sync()
                total = time.perf_counter() - self.t0
                proto.send({"s": total, "phases": phases.summary(total), "global_step": state.global_step})
            req = proto.recv()
            if req.get("cmd") != "step":
                if req.get("cmd") != "quit":
                    proto.send({"error": f"unknown request {req}"})
                raise Quit()
            phases.t.clear()
            sync()
            self.t0 = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            sync()
            self.t_opt = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            sync()
            phases.t["optimizer"] += time.perf_counter() - self.t_opt

    return Driver()


def build(a, proto):
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(a.threads)
    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("peer: --device cuda but torch sees no GPU")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    rows = [json.loads(line) for line in open(a.prompts) if line.strip()]
    prompts = [r["prompt"] for r in rows]
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa")
    n_layers = model.config.num_hidden_layers
    top = tuple(f"model.layers.{i}." for i in range(n_layers - a.top_layers, n_layers))
    for name, p in model.named_parameters():
        p.requires_grad_(name == "model.norm.weight" or name.startswith(top))

    b = a.prompts_per_step * a.group
    if b % a.minibatch:
        sys.exit(f"peer: --minibatch {a.minibatch} must divide the batch of {b}")
    steps_per_generation = b // a.minibatch
    steps_per_rl = steps_per_generation * a.epochs
    common = dict(
        output_dir=a.work,
        seed=a.seed,
        use_cpu=not cuda,
        bf16=a.dtype == "bf16",  # autocast over the f32 weights, as r2m's dtype = "bf16"
        fp16=False,
        gradient_checkpointing=a.gradient_checkpointing,
        # Non-reentrant: the lower blocks are frozen, so a checkpointed block's input needs no grad
        # (the reentrant variant would then drop the trained blocks' gradients).
        gradient_checkpointing_kwargs={"use_reentrant": False} if a.gradient_checkpointing else None,
        per_device_train_batch_size=a.minibatch,
        gradient_accumulation_steps=1,
        steps_per_generation=steps_per_generation,
        num_iterations=a.epochs,
        num_generations=a.group,
        max_completion_length=a.new_tokens,
        temperature=a.temperature,
        top_p=1.0,
        top_k=0,
        generation_kwargs={"min_new_tokens": a.new_tokens},
        beta=a.beta,
        epsilon=a.eps,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=a.max_grad_norm,
        max_steps=10**9,  # the bench ends the loop
        logging_steps=steps_per_rl,  # TRL logs once per RL step, as r2m writes one metrics row
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if a.algo == "grpo":
        args = trl.GRPOConfig(**common, loss_type="grpo", scale_rewards="group")
        cls = trl.GRPOTrainer
    else:
        args = trl.RLOOConfig(**common, normalize_advantages=False)
        cls = trl.RLOOTrainer
    phases = Phases(sync)
    driver = make_driver(proto, phases, steps_per_rl, sync)
    # r2m's exported folders name the generic PreTrainedTokenizerFast, whose default inputs include
    # token_type_ids, which Llama's generate() rejects; SmolLM2's own GPT2 tokenizer has only these two.
    inputs = ["input_ids", "attention_mask"]
    tok = AutoTokenizer.from_pretrained(a.model, padding_side="left", truncation_side="left", model_input_names=inputs)
    rm_tok = AutoTokenizer.from_pretrained(a.rm, model_input_names=inputs)
    trainer = cls(
        model=model,
        reward_funcs=a.rm,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        reward_processing_classes=[rm_tok],
        callbacks=[driver],
    )
    phases.wrap(trainer, "_generate", "generate")
    phases.wrap(trainer, "_calculate_rewards", "reward")
    phases.wrap(trainer, "_generate_and_score_completions", "rollout")
    phases.wrap(trainer, "training_step", "training_step")

    # What the bench checks against r2m: the prompt tokens TRL generates from, the trainable weights.
    prompt_ids = trainer._tokenize_prompts(prompts)[0]
    prompt_ids = [[int(t) for t in ids] for ids in prompt_ids]
    info = {
        "ready": True,
        "algo": a.algo,
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": a.device,
        "dtype": a.dtype,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "optimizer_steps_per_rl_step": steps_per_rl,
        "optim": getattr(args.optim, "value", str(args.optim)),
        "prompt_ids": prompt_ids,
    }
    return trainer, info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--algo", choices=["grpo", "rloo"], required=True)
    ap.add_argument("--model", required=True, help="the policy's f32 HF folder")
    ap.add_argument("--rm", required=True, help="the reward model's HF *ForSequenceClassification folder")
    ap.add_argument("--prompts", required=True, help="JSONL, TRL's conversational prompt-only format")
    ap.add_argument("--threads", type=int, required=True, help="torch.set_num_threads (r2m's count)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="TRL's gradient_checkpointing (r2m's policy.gradient_checkpointing)")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--minibatch", type=int, default=16)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--eps", type=float, default=0.2)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--top-layers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="the trainer's output_dir (nothing is saved)")
    a = ap.parse_args()
    if a.device.startswith("cuda:"):  # the trainer uses the first visible GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = a.device.split(":", 1)[1]
    proto = Protocol()
    a.work = a.work or tempfile.mkdtemp(prefix="r2m-peer-rl-")
    try:
        t0 = time.perf_counter()
        trainer, info = build(a, proto)
        log(f"{a.algo}: trainer ready in {time.perf_counter() - t0:.1f} s (trl {info['trl']}, "
            f"{info['trainable_params']} trainable weights, {info['threads']} threads)")
        proto.send(info)
        trainer.train()
    except Quit:
        pass
    except Exception as e:  # report it to the bench, which names it
        traceback.print_exc()
        proto.send({"error": f"{type(e).__name__}: {e}"})
        sys.exit(1)


if __name__ == "__main__":
    main()
