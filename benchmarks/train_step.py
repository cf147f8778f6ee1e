"""Train-step benchmark: throughput, achieved FLOP rate and peak memory of each defense.

    python -m benchmarks.train_step --dataset mnist --defense l2lda pgd --batch-size 100
    python -m benchmarks.train_step --dataset cifar10 --defense l2lda --precision mixed_bfloat16

Each case runs in a fresh process on synthetic inputs of the dataset's real shapes, so its peak
memory is its own. Reported per case: clean images consumed per second (one training step per
batch of N clean images, tracing excluded), FLOPs of one step (counted from the traced graph by
TensorFlow's profiler), the achieved GFLOP/s, the machine's dense float32 matmul GFLOP/s
measured in the same process, their ratio, and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time

SHAPES = {"digits": ((28, 28, 1), 10), "mnist": ((28, 28, 1), 10),
          "cifar10": ((32, 32, 3), 10), "tiny_imagenet": ((64, 64, 3), 200)}


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """The machine's dense float32 matmul rate, the roofline the train step is compared to."""
    import tensorflow as tf

    a = tf.random.normal([size, size])
    product = tf.function(lambda m: tf.matmul(m, m))
    product(a).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        out = product(a)
    out.numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def step_flops(trainer, x, y) -> int:
    """Floating-point operations of one train step, from the traced graph (static unrolls are
    counted fully; ops inside while loops, e.g. PGD's, are counted once per loop body)."""
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    step = tf.function(lambda x, y: trainer.train_step((x, y)))
    graph = step.get_concrete_function(x, y).graph
    options = option_builder.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(model_analyzer.profile(graph, options=options).total_float_ops)


def measure(dataset: str, defense: str, batch_size: int, steps: int, jit_compile: bool,
            precision: str) -> dict:
    import numpy as np
    import tensorflow as tf

    from l2lda_tf.config import preset
    from l2lda_tf.trainers import build_trainer

    image_shape, num_classes = SHAPES[dataset]
    config = preset(dataset, defense, batch_size=batch_size, epochs=1)
    trainer = build_trainer(config, num_classes, image_shape, steps_per_epoch=steps + 1,
                            jit_compile=jit_compile, precision=precision)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(batch_size, *image_shape)).astype(np.float32))
    y = tf.constant(rng.integers(0, num_classes, batch_size))
    roofline = matmul_gflops()
    flops = step_flops(trainer, x, y)
    trainer.make_train_function()
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    start = time.perf_counter()
    trainer.train_function(iterator)  # traces and compiles
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        logs = trainer.train_function(iterator)
    float(next(iter(logs.values())))  # wait for the last step
    seconds = (time.perf_counter() - start) / steps
    achieved = flops / seconds / 1e9
    return {
        "dataset": dataset, "defense": defense, "batch_size": batch_size,
        "precision": precision, "jit_compile": jit_compile, "first_step_s": round(first, 2),
        "step_s": round(seconds, 4), "images_per_s": round(batch_size / seconds, 1),
        "gflop_per_step": round(flops / 1e9, 2), "achieved_gflops": round(achieved, 1),
        "matmul_gflops": round(roofline, 1), "ratio": round(achieved / roofline, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def _run(queue, kwargs):
    queue.put(measure(**kwargs))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=sorted(SHAPES))
    parser.add_argument("--defense", nargs="+", default=["l2lda", "pgd"])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--precision", nargs="+", default=["float32"])
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    for defense in args.defense:
        for precision in args.precision:
            queue = context.Queue()
            kwargs = dict(dataset=args.dataset, defense=defense, batch_size=args.batch_size,
                          steps=args.steps, jit_compile=args.jit_compile, precision=precision)
            process = context.Process(target=_run, args=(queue, kwargs))
            process.start()
            result = queue.get()
            process.join()
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
