#!/usr/bin/env python3
"""Train a tiny byte-level LLaMA on real text found on this machine.

This is ShardQuant's *trained* test fixture: unlike tests/data/golden/*, the
weights are learned, so activations have real statistics (per-channel scale
differences, mild outlier channels) and quantization methods can be compared
on something closer to a real LLM.

Usage (from the repository root; CPU only, no network, ~10 minutes on 2 cores):

    /tmp/hfenv/bin/python tests/trained/train_tiny_llama.py

By default training is bounded by wall time (--budget-seconds, 540 s): the
learning-rate schedule (linear warmup, cosine decay) runs on the fraction of
the time budget used, so the run always finishes in about the same time
whatever the machine's load, and the number of steps depends on the machine.
--steps N instead trains exactly N steps with a step-based schedule (same
shape), which is the reproducible mode.

Other options: --out DIR (default tests/data/trained/tiny-llama-bytes),
--check-determinism N (train N steps twice in-process, compare the weights
bitwise, and exit without writing anything).

Outputs (see tests/trained/README.md):
    config.json, model.safetensors   save_pretrained, float32 weights
    calib.npy                        uint16 [32, 128] windows of the training stream
    eval.npy                         uint16 [16, 128] windows of the held-out stream
    training.json                    steps, time, losses, held-out ppl, corpus recipe,
                                     activation statistics, library versions

Corpus (byte-level: token id = byte value, vocab 256):
    1. regular files /usr/share/doc/**/copyright and /usr/share/doc/**/README*
       (files ending in .gz are gunzipped),
    2. the *.py files under the directory of the `os` module of the running
       Python (the standard library), excluding anything under site-packages/
       and dist-packages/ (third-party code, machine-specific).
    Each root's files are taken in sorted path order (root 1 first, then root 2);
    exact-duplicate files (same bytes) are kept only at their first occurrence;
    each file is decoded as UTF-8 with errors='replace', re-encoded as UTF-8,
    and terminated by one b"\\n" separator.  The last 2% of the stream is held
    out; the first 30 MB of the rest is the training stream.
"""

import argparse
import glob
import gzip
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time

# Threads that wait passively instead of spinning: on a shared 2-core machine
# with other load, spinning OpenMP threads made a training step ~6x slower
# (measured: 2 threads 525 tok/s spinning vs 4950 tok/s passive, 1 thread ~3300).
# libgomp reads this when torch loads it, so it must be set before `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import safetensors
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "data", "trained", "tiny-llama-bytes"))

SEED = 1234
HELDOUT_FRACTION = 0.02
TRAIN_CAP_BYTES = 30 * 1000 * 1000

# Training hyper-parameters.
BATCH = 16
SEQ = 256
DEFAULT_BUDGET_SECONDS = 540.0
PEAK_LR = 2e-3
MIN_LR_FRAC = 0.1
WARMUP = 50
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
LOG_EVERY = 25

# Fixture windows.
CALIB_SHAPE = (32, 128)
EVAL_SHAPE = (16, 128)


def make_config():
    return LlamaConfig(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


# ---------------------------------------------------------------------------
# Corpus.
# ---------------------------------------------------------------------------
def corpus_files():
    doc_root = "/usr/share/doc"
    doc = set(glob.glob(os.path.join(doc_root, "**", "copyright"), recursive=True))
    doc |= set(glob.glob(os.path.join(doc_root, "**", "README*"), recursive=True))
    doc = sorted(p for p in doc if os.path.isfile(p))

    py_root = os.path.dirname(os.__file__)
    py = glob.glob(os.path.join(py_root, "**", "*.py"), recursive=True)
    py = sorted(
        p
        for p in py
        if os.path.isfile(p)
        and "/site-packages/" not in p[len(py_root):]
        and "/dist-packages/" not in p[len(py_root):]
    )
    roots = [
        {"root": doc_root, "globs": ["**/copyright", "**/README*"], "note": "*.gz gunzipped"},
        {"root": py_root, "globs": ["**/*.py"], "note": "excluding site-packages/, dist-packages/"},
    ]
    return roots, [doc, py]


def read_text_bytes(path):
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError):
            pass
    return raw.decode("utf-8", errors="replace").encode("utf-8")


def build_corpus():
    roots, groups = corpus_files()
    seen = set()
    parts = []
    n_files = 0
    n_dups = 0
    per_root = []
    for meta, files in zip(roots, groups):
        kept = 0
        nbytes = 0
        for p in files:
            b = read_text_bytes(p)
            h = hashlib.sha256(b).digest()
            if h in seen:
                n_dups += 1
                continue
            seen.add(h)
            parts.append(b)
            parts.append(b"\n")
            kept += 1
            nbytes += len(b) + 1
        per_root.append(dict(meta, files_found=len(files), files_kept=kept, bytes=nbytes))
        n_files += kept
    stream = b"".join(parts)
    n_held = int(len(stream) * HELDOUT_FRACTION)
    held = stream[len(stream) - n_held:]
    train = stream[: len(stream) - n_held]
    train_uncapped = len(train)
    if len(train) > TRAIN_CAP_BYTES:
        train = train[:TRAIN_CAP_BYTES]
    summary = {
        "encoding": "byte-level, token id = byte value (vocab 256)",
        "order": "root 1 files in sorted path order, then root 2 files in sorted path order",
        "roots": per_root,
        "dedup": "exact duplicate files (same bytes after decode) dropped after the first",
        "files": n_files,
        "duplicates_dropped": n_dups,
        "decode": "utf-8 errors='replace', re-encoded utf-8, each file followed by b'\\n'",
        "stream_bytes": len(stream),
        "stream_sha256": hashlib.sha256(stream).hexdigest(),
        "heldout": "last %g of the stream" % HELDOUT_FRACTION,
        "heldout_bytes": len(held),
        "heldout_sha256": hashlib.sha256(held).hexdigest(),
        "train_bytes_before_cap": train_uncapped,
        "train_cap_bytes": TRAIN_CAP_BYTES,
        "train": "first min(cap, len) bytes of the stream before the held-out part",
        "train_bytes": len(train),
        "train_sha256": hashlib.sha256(train).hexdigest(),
    }
    return (
        np.frombuffer(train, dtype=np.uint8).copy(),
        np.frombuffer(held, dtype=np.uint8).copy(),
        summary,
    )


def even_windows(stream, n, length):
    """n windows of `length` tokens at evenly spaced, deterministic offsets."""
    offs = np.linspace(0, len(stream) - length, n).astype(np.int64)
    return np.stack([stream[o : o + length] for o in offs]).astype(np.uint16), offs


# ---------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------
def lr_at(step, progress):
    """Linear warmup over WARMUP steps, then cosine decay to MIN_LR_FRAC * PEAK_LR
    as `progress` (fraction of the step or time budget used, 0..1) goes to 1."""
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    p = min(1.0, max(0.0, progress))
    return PEAK_LR * (MIN_LR_FRAC + (1 - MIN_LR_FRAC) * 0.5 * (1 + math.cos(math.pi * p)))


def train_model(train_stream, steps=None, budget_seconds=None, log=True):
    """Train for exactly `steps` steps (step-based schedule) or, if steps is None,
    until `budget_seconds` of wall time are used (time-based schedule)."""
    assert (steps is None) != (budget_seconds is None)
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = LlamaForCausalLM(make_config())
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=PEAK_LR,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    data = torch.from_numpy(train_stream)
    t0 = time.time()
    history = []
    window = []
    done = 0
    step = 0
    warm_end_t = None  # time at which warmup ended (time-based mode)
    while True:
        if steps is not None:
            if step >= steps:
                break
            progress = (step - WARMUP) / max(1, steps - WARMUP)
        else:
            elapsed = time.time() - t0
            if elapsed >= budget_seconds:
                break
            if step == WARMUP:
                warm_end_t = elapsed
            if warm_end_t is None:
                progress = 0.0
            else:
                progress = (elapsed - warm_end_t) / max(1e-9, budget_seconds - warm_end_t)
        lr = lr_at(step, progress)
        for g in opt.param_groups:
            g["lr"] = lr
        offs = rng.integers(0, len(train_stream) - SEQ, size=BATCH)
        x = torch.stack([data[o : o + SEQ] for o in offs]).long()
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        window.append(loss.item())
        step += 1
        done = step
        if done % LOG_EVERY == 0 or done == steps:
            m = float(np.mean(window))
            history.append({"step": done, "train_loss": round(m, 5), "lr": float("%.4g" % lr),
                            "seconds": round(time.time() - t0, 1)})
            if log:
                print("step %5d  train loss %.4f (ppl %.2f)  lr %.2e  %.0fs"
                      % (done, m, math.exp(m), lr, time.time() - t0), flush=True)
            window = []
    if window:  # partial last logging window (time-based mode)
        m = float(np.mean(window))
        history.append({"step": done, "train_loss": round(m, 5), "lr": float("%.4g" % lr),
                        "seconds": round(time.time() - t0, 1), "window_steps": len(window)})
    model.eval()
    return model, done, time.time() - t0, history


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------
@torch.no_grad()
def hf_loss(model, ids_u16):
    """Mean next-token NLL (nats) as transformers computes it (labels=input_ids)."""
    x = torch.from_numpy(ids_u16.astype(np.int64))
    return float(model(input_ids=x, labels=x).loss)


@torch.no_grad()
def sample_loss(model, stream, n=256, length=256, batch=64):
    """Mean next-token NLL over n evenly spaced windows of the stream (a larger
    held-out sample than eval.npy, for a less noisy figure)."""
    ids, _ = even_windows(stream, n, length)
    x_all = torch.from_numpy(ids.astype(np.int64))
    tot, cnt = 0.0, 0
    for i in range(0, n, batch):
        x = x_all[i : i + batch]
        logits = model(input_ids=x).logits
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        tot += float(nll)
        cnt += x[:, 1:].numel()
    return tot / cnt, n, length


@torch.no_grad()
def activation_stats(model, calib_u16):
    """Per-layer per-channel max|x| at the inputs of the linear layers, on the calib set."""
    sites = ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"]
    absmax = {}
    hooks = []
    for li, layer in enumerate(model.model.layers):
        for s in sites:
            mod = layer.get_submodule(s)

            def hook(m, inp, key=(li, s)):
                a = inp[0].detach().abs().amax(dim=(0, 1))
                absmax[key] = a if key not in absmax else torch.maximum(absmax[key], a)

            hooks.append(mod.register_forward_pre_hook(hook))
    x = torch.from_numpy(calib_u16.astype(np.int64))
    out = model(input_ids=x, output_hidden_states=True)
    for h in hooks:
        h.remove()
    res = []
    for li in range(len(model.model.layers)):
        row = {"layer": li}
        for s in sites:
            a = absmax[(li, s)].float()
            med = float(a.median())
            top = torch.topk(a, 3)
            row[s.split(".")[1]] = {
                "channels": a.numel(),
                "max": round(float(a.max()), 4),
                "median": round(med, 4),
                "max_over_median": round(float(a.max()) / med, 3),
                "top3_channels": [int(i) for i in top.indices],
                "top3_absmax": [round(float(v), 4) for v in top.values],
            }
        # Residual stream entering this layer (hidden_states[li]), before the RMSNorm.
        h = out.hidden_states[li].abs().amax(dim=(0, 1))
        row["residual_in"] = {
            "max": round(float(h.max()), 4),
            "median": round(float(h.median()), 4),
            "max_over_median": round(float(h.max() / h.median()), 3),
            "top3_channels": [int(i) for i in torch.topk(h, 3).indices],
        }
        res.append(row)
    return res


def print_stats(title, stats):
    print(title)
    print("  layer  site        max|x|   median   max/med  top channels")
    for row in stats:
        for s in ["q_proj", "gate_proj", "o_proj", "down_proj", "residual_in"]:
            r = row[s]
            print("  %5d  %-10s %8.3f %8.3f %8.2f   %s"
                  % (row["layer"], s, r["max"], r["median"], r["max_over_median"], r["top3_channels"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=None,
                    help="train exactly N steps (step-based schedule) instead of a time budget")
    ap.add_argument("--budget-seconds", type=float, default=DEFAULT_BUDGET_SECONDS,
                    help="wall-time budget for training when --steps is not given (default %(default)s)")
    ap.add_argument("--check-determinism", type=int, default=0, metavar="N",
                    help="train N steps twice, compare weights bitwise, write nothing")
    args = ap.parse_args()

    torch.set_num_threads(2)
    torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(True)

    t_start = time.time()
    train, held, corpus = build_corpus()
    print("corpus: %d files (%d duplicates dropped), %d bytes, sha256 %s"
          % (corpus["files"], corpus["duplicates_dropped"], corpus["stream_bytes"], corpus["stream_sha256"]))
    print("  train %d bytes (cap %d, %d before cap), held-out %d bytes; built in %.1fs"
          % (len(train), TRAIN_CAP_BYTES, corpus["train_bytes_before_cap"], len(held), time.time() - t_start))

    if args.check_determinism:
        sds = []
        for run in range(2):
            m, _, sec, hist = train_model(train, steps=args.check_determinism, log=False)
            sds.append({k: v.clone() for k, v in m.state_dict().items()})
            print("run %d: %d steps in %.1fs, last logged loss %.6f"
                  % (run, args.check_determinism, sec, hist[-1]["train_loss"]))
        same = all(torch.equal(sds[0][k], sds[1][k]) for k in sds[0])
        diff = max(float((sds[0][k] - sds[1][k]).abs().max()) for k in sds[0])
        print("bitwise identical weights: %s (max abs diff %.3g)" % (same, diff))
        return

    if args.steps is not None:
        model, steps_done, seconds, history = train_model(train, steps=args.steps)
    else:
        model, steps_done, seconds, history = train_model(train, budget_seconds=args.budget_seconds)
    print("trained %d steps in %.1fs" % (steps_done, seconds))

    calib, calib_offs = even_windows(train, *CALIB_SHAPE)
    evals, eval_offs = even_windows(held, *EVAL_SHAPE)

    eval_loss = hf_loss(model, evals)
    calib_loss = hf_loss(model, calib)
    held_loss, held_n, held_len = sample_loss(model, held)
    print("eval.npy  (transformers loss): %.4f nats/byte, ppl %.3f" % (eval_loss, math.exp(eval_loss)))
    print("calib.npy (transformers loss): %.4f nats/byte, ppl %.3f" % (calib_loss, math.exp(calib_loss)))
    print("held-out sample (%d x %d evenly spaced windows): %.4f nats/byte, ppl %.3f"
          % (held_n, held_len, held_loss, math.exp(held_loss)))

    stats = activation_stats(model, calib)
    print_stats("activation absmax per channel on calib.npy (trained model):", stats)
    torch.manual_seed(SEED)
    rand_stats = activation_stats(LlamaForCausalLM(make_config()).eval(), calib)
    print_stats("same, randomly initialised model (reference):", rand_stats)

    # -- write ---------------------------------------------------------------
    out = args.out
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    model.save_pretrained(out, safe_serialization=True)
    gc = os.path.join(out, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    np.save(os.path.join(out, "calib.npy"), calib)
    np.save(os.path.join(out, "eval.npy"), evals)

    meta = {
        "model": "LlamaForCausalLM, byte-level (vocab 256), float32 weights",
        "seed": SEED,
        "steps": steps_done,
        "schedule_mode": ("steps (%d)" % args.steps) if args.steps is not None
                         else "time budget (%g s)" % args.budget_seconds,
        "train_seconds": round(seconds, 1),
        "batch": BATCH,
        "seq_len": SEQ,
        "tokens_seen": steps_done * BATCH * SEQ,
        "optimizer": {"name": "AdamW", "peak_lr": PEAK_LR, "warmup_steps": WARMUP,
                      "schedule": "linear warmup (steps), then cosine decay to %g x peak over the "
                                  "rest of the step or time budget" % MIN_LR_FRAC,
                      "betas": [0.9, 0.95], "weight_decay": WEIGHT_DECAY,
                      "weight_decay_on": "2-D weights only", "grad_clip": GRAD_CLIP},
        "threads": torch.get_num_threads(),
        "final_train_loss": history[-1]["train_loss"],
        "final_train_loss_note": "mean over the last logged window of %d steps" % LOG_EVERY,
        "eval_npy": {"shape": list(evals.shape), "dtype": "uint16",
                     "offsets_in_heldout": [int(o) for o in eval_offs],
                     "loss": eval_loss, "perplexity": math.exp(eval_loss),
                     "how": "transformers LlamaForCausalLM(input_ids=eval, labels=eval).loss, "
                            "mean over 16 x 127 predicted bytes, fp32"},
        "calib_npy": {"shape": list(calib.shape), "dtype": "uint16",
                      "offsets_in_train": [int(o) for o in calib_offs],
                      "loss": calib_loss, "perplexity": math.exp(calib_loss)},
        "heldout_sample": {"windows": held_n, "window_len": held_len,
                           "offsets": "np.linspace(0, len(heldout) - 256, 256).astype(int64)",
                           "loss": held_loss, "perplexity": math.exp(held_loss)},
        "train_history": history,
        "corpus": corpus,
        "activation_stats_calib": stats,
        "activation_stats_calib_random_init": rand_stats,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "safetensors": safetensors.__version__,
                     "numpy": np.__version__},
        "command": "/tmp/hfenv/bin/python tests/trained/train_tiny_llama.py"
                   + (" --steps %d" % args.steps if args.steps is not None else
                      ("" if args.budget_seconds == DEFAULT_BUDGET_SECONDS
                       else " --budget-seconds %g" % args.budget_seconds)),
    }
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")

    # Round trip: reload what was written and check the eval loss is reproduced.
    re = LlamaForCausalLM.from_pretrained(out).eval()
    re_loss = hf_loss(re, np.load(os.path.join(out, "eval.npy")))
    print("reloaded from %s: eval loss %.6f (written %.6f)" % (out, re_loss, eval_loss))
    assert abs(re_loss - eval_loss) < 1e-5
    for fn in sorted(os.listdir(out)):
        print("  %-20s %9d bytes" % (fn, os.path.getsize(os.path.join(out, fn))))
    print("total wall time %.1fs" % (time.time() - t_start))


if __name__ == "__main__":
    main()
