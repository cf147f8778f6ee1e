"""Train-step benchmark: throughput, achieved FLOP rate and peak memory of each defense.

    python -m benchmarks.train_step --dataset mnist --defense l2lda pgd --batch-size 100
    python -m benchmarks.train_step --dataset cifar10 --defense l2lda \
        --precision float32 mixed_bfloat16 --xla off on --recompute off on --json out.json

Each case (defense × precision × XLA × recomputation) runs in a fresh process on synthetic
inputs of the dataset's real shapes, so its peak memory is its own. Reported per case: clean
images consumed per second (one training step per batch of N clean images; at least `--steps`
steps and 3 s timed, tracing excluded), FLOPs of one step (counted from the traced graph by
TensorFlow's profiler), the achieved GFLOP/s, the machine's dense matmul GFLOP/s in the step's
compute dtype (float32, or bfloat16 under mixed_bfloat16) measured in the same process, their
ratio, and the process's peak resident memory; then a markdown table of all cases.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import queue
import resource
import time

SHAPES = {"digits": ((28, 28, 1), 10), "mnist": ((28, 28, 1), 10),
          "cifar10": ((32, 32, 3), 10), "tiny_imagenet": ((64, 64, 3), 200)}


MIN_SECONDS = 3.0  # each case times at least --steps steps and at least this long


def matmul_gflops(dtype: str = "float32", size: int = 2048, repeats: int = 10,
                  rounds: int = 3) -> float:
    """The machine's dense matmul rate in `dtype` (the step's compute dtype), the roofline the
    train step is compared to: the best of `rounds` timings of `repeats` products, after three
    untimed ones (the rate climbs while warming, and dips whenever anything else runs)."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal([size, size]), dtype)
    product = tf.function(lambda m: tf.matmul(m, m))
    for _ in range(3):
        product(a).numpy()
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            out = product(a)
        out.numpy()
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def graph_flops(function, *args) -> int:
    """Floating-point operations in the graph of `function(*args)`, by TensorFlow's profiler.
    It does not look inside while loops: their bodies count zero."""
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    graph = tf.function(function).get_concrete_function(*args).graph
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(model_analyzer.profile(graph, options=options).total_float_ops)


def step_flops(trainer, x, y) -> int:
    """Floating-point operations of one train step: its graph (static loops, such as the
    L2L-DA unroll and PGD-k up to `UNROLLED_STEPS`, counted fully), plus, for PGD training with
    a longer `tf.while_loop`, k times one attack iteration on the batch's adversarial share."""
    from l2lda_tf.attacks import loss_and_input_gradient
    from l2lda_tf.attacks.pgd import UNROLLED_STEPS

    flops = graph_flops(lambda x, y: trainer.train_step((x, y)), x, y)
    if trainer.config.defense == "pgd" and trainer.config.pgd_steps > UNROLLED_STEPS:
        n_clean = round(trainer.config.clean_share * len(y))
        iteration = graph_flops(
            lambda x, y: loss_and_input_gradient(trainer.classifier, x, y)[2], x[n_clean:],
            y[n_clean:])
        flops += trainer.config.pgd_steps * iteration
    return flops


def measure(dataset: str, defense: str, batch_size: int, steps: int, jit_compile: bool,
            precision: str, recompute: bool = False) -> dict:
    import numpy as np
    import tensorflow as tf

    from l2lda_tf.config import preset
    from l2lda_tf.trainers import build_trainer

    image_shape, num_classes = SHAPES[dataset]
    config = preset(dataset, defense, batch_size=batch_size, epochs=1)
    trainer = build_trainer(config, num_classes, image_shape, steps_per_epoch=steps + 1,
                            jit_compile=jit_compile, precision=precision, recompute=recompute)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(batch_size, *image_shape)).astype(np.float32))
    y = tf.constant(rng.integers(0, num_classes, batch_size))
    roofline = matmul_gflops(trainer.classifier.compute_dtype)
    flops = step_flops(trainer, x, y)
    trainer.make_train_function()
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    start = time.perf_counter()
    trainer.train_function(iterator)  # traces and compiles
    first = time.perf_counter() - start
    start, timed = time.perf_counter(), 0
    while timed < steps or time.perf_counter() - start < MIN_SECONDS:  # short steps: more
        logs = trainer.train_function(iterator)
        float(next(iter(logs.values())))  # wait for the step
        timed += 1
    seconds = (time.perf_counter() - start) / timed
    achieved = flops / seconds / 1e9
    return {
        "dataset": dataset, "defense": defense, "batch_size": batch_size,
        "precision": precision, "jit_compile": jit_compile, "recompute": recompute,
        "first_step_s": round(first, 2),
        "step_s": round(seconds, 4), "images_per_s": round(batch_size / seconds, 1),
        "gflop_per_step": round(flops / 1e9, 2), "achieved_gflops": round(achieved, 1),
        "matmul_gflops": round(roofline, 1), "ratio": round(achieved / roofline, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def _run(queue, kwargs):
    queue.put(measure(**kwargs))


def in_fresh_process(**kwargs) -> dict:
    """`measure(**kwargs)` in a new process, so peak memory and tracing are the case's own; a
    case whose process dies (say, out of memory) comes back as {"error": ...}."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_run, args=(results, kwargs))
    process.start()
    while True:
        try:
            result = results.get(timeout=5)
            break
        except queue.Empty:
            if not process.is_alive():
                return {**kwargs, "error": f"the process died with exit code {process.exitcode}"}
    process.join()
    return result


def markdown_table(results: list[dict]) -> str:
    """All cases; "× PGD" is a step's time over PGD's at the same precision and XLA setting."""
    pgd = {(r["precision"], r["jit_compile"]): r["step_s"] for r in results
           if r["defense"] == "pgd"}
    lines = ["| dataset | defense | precision | XLA | recompute | step s | images/s | × PGD "
             "| GFLOP/step | GFLOP/s | matmul GFLOP/s | ratio | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        base = pgd.get((r["precision"], r["jit_compile"]))
        multiple = f"{r['step_s'] / base:.0f}" if base else "–"
        lines.append(
            f"| {r['dataset']} | {r['defense']} | {r['precision']} "
            f"| {'on' if r['jit_compile'] else 'off'} | {'on' if r['recompute'] else 'off'} "
            f"| {r['step_s']} | {r['images_per_s']} | {multiple} | {r['gflop_per_step']} "
            f"| {r['achieved_gflops']} | {r['matmul_gflops']} | {r['ratio']} "
            f"| {r['peak_rss_mb']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=sorted(SHAPES))
    parser.add_argument("--defense", nargs="+", default=["l2lda", "pgd"])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", nargs="+", default=["float32"])
    parser.add_argument("--xla", nargs="+", choices=("off", "on"), default=["off"],
                        help="compile the train step with XLA (jit_compile)")
    parser.add_argument("--recompute", nargs="+", choices=("off", "on"), default=["off"],
                        help="learned defenses: recompute the generator in the backward pass")
    parser.add_argument("--json", help="also write all results to this file, as a JSON list")
    args = parser.parse_args(argv)
    results = []
    for defense, precision, xla, recompute in itertools.product(
            args.defense, args.precision, args.xla, args.recompute):
        if recompute == "on" and defense not in ("l2l", "l2lda"):
            continue
        result = in_fresh_process(
            dataset=args.dataset, defense=defense, batch_size=args.batch_size,
            steps=args.steps, jit_compile=xla == "on", precision=precision,
            recompute=recompute == "on")
        print(json.dumps(result), flush=True)
        if "error" not in result:
            results.append(result)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)
    print(markdown_table(results))


if __name__ == "__main__":
    main()
