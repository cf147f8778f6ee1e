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
from l2lda_tf.tables import markdown_table as write_markdown_table

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
    stages: dict[str, str] = field(default_factory=dict)  # AutoAttack: robust after each stage
    stage_seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # sanity checks that failed

    @classmethod
    def from_outcome(cls, defense: str, run: str, epsilon: float, outcome: BatteryOutcome,
                     setup_seconds: dict[str, float], settings: dict) -> Results:
        return cls(defense, run, epsilon, outcome.images, _bits(outcome.correct),
                   outcome.attack_seconds, setup_seconds, settings, _bits(outcome.stages),
                   dict(outcome.stage_seconds))

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

    def stage_accuracies(self) -> dict[str, float]:
        """AutoAttack: accuracy (%) after APGD-CE, then after APGD-T too, and so on."""
        return {k: 100.0 * (np.frombuffer(v.encode(), np.uint8) == ord("1")).mean()
                for k, v in self.stages.items()}

    def headline(self) -> tuple[str, float] | None:
        """The robust accuracy to quote: AutoAttack's when it ran, else the lowest column."""
        acc = self.accuracies()
        if not self.attacks:
            return None
        return ("AutoAttack", acc["AutoAttack"]) if "AutoAttack" in acc else ("Min", acc["Min"])

    def metrics(self) -> dict:
        """The summary a dashboard reads: natural and headline robust accuracy, and warnings."""
        headline = self.headline()
        return {"natural_accuracy": self.accuracies()["Natural"],
                "robust_accuracy": headline[1] if headline else None,
                "robust_attack": headline[0] if headline else None,
                "epsilon": self.epsilon, "images": self.images,
                "accuracy": self.accuracies(), "autoattack_stages": self.stage_accuracies(),
                "warnings": self.warnings}

    def seconds_per_1000(self) -> dict[str, float]:
        """Attack time per 1,000 images (excluding the training of learned attacks)."""
        times = {display_name(k): 1000.0 * v / self.images for k, v in self.attack_seconds.items()}
        times.update({f"AutoAttack: {display_name(k)}": 1000.0 * v / self.images
                      for k, v in self.stage_seconds.items()})
        return times

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "accuracy": self.accuracies(),
                           "headline": self.headline(),
                           "seconds_per_1000_images": self.seconds_per_1000()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Results:
        data = json.loads(text)
        for derived in ("accuracy", "headline", "seconds_per_1000_images"):
            data.pop(derived, None)
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
    return write_markdown_table(*table_rows(results))


def stage_table(results: list[Results]) -> str:
    """Markdown: accuracy after each AutoAttack stage (cumulative), for rows that ran it."""
    rows = [[r.defense, *(f"{v:.2f}" for v in r.stage_accuracies().values())]
            for r in results if r.stages]
    if not rows:
        return ""
    names = next(r for r in results if r.stages).stages
    header = ["defense", *(("after " if i == 0 else "+ ") + display_name(k)
                           for i, k in enumerate(names))]
    return write_markdown_table(header, rows)


def csv_table(results: list[Results]) -> str:
    header, rows = table_rows(results)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def timing_table(results: list[Results]) -> str:
    """Markdown: seconds per 1,000 images per attack, and training seconds of learned ones."""
    rows = []
    for r in results:
        for name, seconds in r.seconds_per_1000().items():
            setup = next((v for k, v in r.setup_seconds.items() if display_name(k) == name), 0.0)
            rows.append([r.defense, name, f"{seconds:.1f}", f"{setup:.1f}"])
    return write_markdown_table(["defense", "attack", "s per 1,000 images", "training s"], rows)


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
    stages = stage_table(results)
    warnings = [f"- {r.defense}: {w}" for r in results for w in r.warnings]
    (out_dir / f"{name}.md").write_text(
        f"Accuracy (%) on {images} eval images, ℓ∞ ε = {eps}.\n\n{markdown_table(results)}\n"
        + (f"AutoAttack, accuracy after each attack:\n\n{stages}\n" if stages else "")
        + ("Sanity checks:\n\n" + "\n".join(warnings) + "\n\n" if warnings else "")
        + f"Attack time on this machine:\n\n{timing_table(results)}")
    if len(results) == 1:
        (out_dir / "metrics.json").write_text(json.dumps(results[0].metrics(), indent=2))
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


def _bits(columns: dict[str, np.ndarray]) -> dict[str, str]:
    return {k: "".join("1" if c else "0" for c in v) for k, v in columns.items()}
