"""Results tables: one defense's row (results.json/csv/md), the multi-defense table (rows =
defenses, as the paper's), and TensorBoard summaries of the same numbers."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from l2lda_tf.evaluation.battery import BatteryOutcome, display_name

DEFENSE_NAMES = {"plain": "Plain", "pgd": "PGD", "l2l": "L2L", "l2lda": "L2L-DA"}


@dataclass
class Results:
    """One defense evaluated under a list of attacks. `correct` maps each column ("natural"
    first, then attack names) to per-example 0/1 strings, so worst cases can be recomputed."""

    defense: str
    run: str
    epsilon: float
    images: int
    correct: dict[str, str]
    attack_seconds: dict[str, float]
    setup_seconds: dict[str, float] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_outcome(cls, defense: str, run: str, epsilon: float, outcome: BatteryOutcome,
                     setup_seconds: dict[str, float], settings: dict) -> Results:
        correct = {k: "".join("1" if c else "0" for c in v) for k, v in outcome.correct.items()}
        return cls(defense, run, epsilon, outcome.images, correct, outcome.attack_seconds,
                   setup_seconds, settings)

    @property
    def attacks(self) -> list[str]:
        return [k for k in self.correct if k != "natural"]

    def correct_array(self, column: str) -> np.ndarray:
        return np.frombuffer(self.correct[column].encode(), np.uint8) == ord("1")

    def accuracies(self) -> dict[str, float]:
        """Accuracy (%) per column: Natural, each attack, Min (lowest of the white-box ones)
        and Worst-case (examples classified correctly clean and under every white-box attack).
        Transfer columns are shown but left out of Min and Worst-case, as in the paper."""
        row = {"Natural": 100.0 * self.correct_array("natural").mean()}
        for name in self.attacks:
            row[display_name(name)] = 100.0 * self.correct_array(name).mean()
        white_box = [k for k in self.correct if not k.startswith("transfer-")]
        row["Min"] = min(row[display_name(k) if k != "natural" else "Natural"]
                         for k in white_box)
        every = np.logical_and.reduce([self.correct_array(k) for k in white_box])
        row["Worst-case"] = 100.0 * every.mean()
        return row

    def seconds_per_1000(self) -> dict[str, float]:
        """Attack time per 1,000 images (excluding the training of learned attacks)."""
        return {display_name(k): 1000.0 * v / self.images for k, v in self.attack_seconds.items()}

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "accuracy": self.accuracies(),
                           "seconds_per_1000_images": self.seconds_per_1000()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Results:
        data = json.loads(text)
        data.pop("accuracy", None)
        data.pop("seconds_per_1000_images", None)
        return cls(**data)


def defense_label(config) -> str:
    """Row name of a run: Plain, PGD10, L2L or L2L-DA."""
    name = DEFENSE_NAMES.get(config.defense, config.defense)
    return f"{name}{config.pgd_steps}" if config.defense == "pgd" else name


def table_rows(results: list[Results]) -> tuple[list[str], list[list]]:
    """Header and rows (accuracy %, two decimals) of the table with one row per defense."""
    columns: list[str] = []
    for r in results:
        columns += [c for c in r.accuracies() if c not in columns and c not in ("Min",
                                                                                "Worst-case")]
    columns += ["Min", "Worst-case"]
    rows = []
    for r in results:
        acc = r.accuracies()
        rows.append([r.defense, *[f"{acc[c]:.2f}" if c in acc else "" for c in columns]])
    return ["defense", *columns], rows


def markdown_table(results: list[Results]) -> str:
    header, rows = table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(results: list[Results]) -> str:
    header, rows = table_rows(results)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def timing_table(results: list[Results]) -> str:
    """Markdown: seconds per 1,000 images per attack, and training seconds of learned ones."""
    lines = ["| defense | attack | s per 1,000 images | training s |", "| --- | --- | --- | --- |"]
    for r in results:
        for name, seconds in r.seconds_per_1000().items():
            setup = next((v for k, v in r.setup_seconds.items() if display_name(k) == name), 0.0)
            lines.append(f"| {r.defense} | {name} | {seconds:.1f} | {setup:.1f} |")
    return "\n".join(lines) + "\n"


def write_results(results: list[Results], out_dir: str | Path, name: str = "results") -> Path:
    """Writes NAME.json (everything, per-example correctness included), NAME.csv and NAME.md
    (the table, then attack times) and TensorBoard summaries under out_dir/logs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = [json.loads(r.to_json()) for r in results]
    (out_dir / f"{name}.json").write_text(json.dumps(data[0] if len(data) == 1 else data,
                                                     indent=2))
    (out_dir / f"{name}.csv").write_text(csv_table(results))
    eps = ", ".join(sorted({f"{r.epsilon:g}" for r in results}))
    images = ", ".join(sorted({str(r.images) for r in results}))
    (out_dir / f"{name}.md").write_text(
        f"Accuracy (%) on {images} eval images, ℓ∞ ε = {eps}.\n\n{markdown_table(results)}\n"
        f"Attack time on this machine:\n\n{timing_table(results)}")
    write_summaries(results, out_dir / "logs")
    return out_dir


def write_summaries(results: list[Results], log_dir: str | Path) -> None:
    """TensorBoard scalars eval/<defense>/<column> and the markdown table as text."""
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        for r in results:
            for column, value in r.accuracies().items():
                tf.summary.scalar(f"eval/{r.defense}/{column}", value, step=0)
        tf.summary.text("eval/table", markdown_table(results), step=0)
    writer.flush()
    writer.close()


def load_results(path: str | Path) -> Results:
    path = Path(path)
    try:
        return Results.from_json(path.read_text())
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{path} is not a results file ({err})") from err
