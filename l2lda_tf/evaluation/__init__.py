"""Evaluation: the attack battery (AutoAttack included) over an eval set, for our runs or any
classifier, its sanity checks, the results tables and the diversity figure."""

from l2lda_tf.evaluation.autoattack import STAGES, AutoAttack, standard_attack
from l2lda_tf.evaluation.battery import (
    AUTOATTACK,
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
from l2lda_tf.evaluation.checks import is_randomized, sanity_warnings, zero_gradient_share
from l2lda_tf.evaluation.diversity import (
    diversity_figure,
    diversity_grid,
    diversity_on,
    noise_diversity,
    save_png,
)
from l2lda_tf.evaluation.external import Classifier, load_classifier
from l2lda_tf.evaluation.results import (
    Results,
    defense_label,
    load_results,
    markdown_table,
    write_results,
    write_summaries,
)
from l2lda_tf.evaluation.runs import (
    cache_key,
    evaluate_classifier,
    evaluate_or_reuse,
    evaluate_run,
    settings_from_config,
)

__all__ = [
    "AUTOATTACK", "DEFAULT_ATTACKS", "STAGES", "AttackSettings", "AutoAttack", "BatteryOutcome",
    "Classifier", "Results", "build_attack", "cache_key", "evaluate_classifier",
    "is_randomized", "load_classifier", "sanity_warnings", "standard_attack",
    "zero_gradient_share",
    "check_threat_model", "defense_label", "display_name", "diversity_figure", "diversity_grid",
    "diversity_on", "evaluate_or_reuse", "evaluate_run", "gradient_attack", "load_results",
    "markdown_table", "noise_diversity", "parse_attacks", "run_battery", "save_png",
    "settings_from_config", "transfer_attack", "write_results", "write_summaries",
]
