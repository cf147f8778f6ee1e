"""Evaluation: the attack battery over an eval set, the results tables and the diversity figure."""

from l2lda_tf.evaluation.battery import (
    DEFAULT_ATTACKS,
    AttackSettings,
    BatteryOutcome,
    build_attack,
    check_threat_model,
    display_name,
    gradient_attack,
    parse_attacks,
    run_battery,
    transfer_attack,
)
from l2lda_tf.evaluation.diversity import (
    diversity_figure,
    diversity_grid,
    diversity_on,
    noise_diversity,
    save_png,
)
from l2lda_tf.evaluation.results import (
    Results,
    defense_label,
    load_results,
    markdown_table,
    write_results,
    write_summaries,
)
from l2lda_tf.evaluation.runs import evaluate_or_reuse, evaluate_run, settings_from_config

__all__ = [
    "DEFAULT_ATTACKS", "AttackSettings", "BatteryOutcome", "Results", "build_attack",
    "check_threat_model", "defense_label", "display_name", "diversity_figure", "diversity_grid",
    "diversity_on", "evaluate_or_reuse", "evaluate_run", "gradient_attack", "load_results",
    "markdown_table", "noise_diversity", "parse_attacks", "run_battery", "save_png",
    "settings_from_config", "transfer_attack", "write_results", "write_summaries",
]
