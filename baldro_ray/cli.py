"""The ``baldro-ray`` command line: thin wrappers that validate the configuration before anything runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from baldro_ray import console
from baldro_ray.config import ConfigError, dump_config, load_config
from baldro_ray.errors import UserError

VERBOSE_HELP = (
    "show Ray's, Ray Train's, Ray Data's, DeepSpeed's and transformers' own output (quiet by default)"
)
DEBUG_HELP = "show the traceback of an error instead of its one-line message"


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (see configs/); defaults apply when omitted")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. trainer.lr=2e-5"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (also used to check cluster entrypoints)."""
    parser = argparse.ArgumentParser(prog="baldro-ray", description=__doc__)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "objectives-demo",
        help="print the weights mean, BalDRO-G and BalDRO-DV (both signs) give one forget batch",
    )
    show = commands.add_parser(
        "config", help="validate a config with its overrides and print the resolved YAML"
    )
    _add_config_arguments(show)
    finetune = commands.add_parser(
        "finetune",
        help="generate the embedded benchmark and fine-tune (or reuse) its tiny target and retain models on Ray",
    )
    _add_config_arguments(finetune)
    unlearn = commands.add_parser("unlearn", help="run BalDRO unlearning on Ray Train (DDP or DeepSpeed)")
    _add_config_arguments(unlearn)
    unlearn.add_argument("--name", help="run name (folder under output_dir); default: method-dro-timestamp")
    quick = commands.add_parser(
        "quickstart",
        help="BalDRO vs its plain baseline on an embedded benchmark: fine-tune, unlearn, evaluate, compare",
    )
    _add_config_arguments(quick)
    quick.add_argument(
        "--method", help="forget loss (NPO, SimNPO, SatImp, GA, GradDiff); default: the preset's NPO"
    )
    quick.add_argument("--workers", type=int, help="Ray Train workers per run; default: the preset's 2")
    quick.add_argument(
        "--benchmark",
        choices=("tofu", "muse"),
        default="tofu",
        help="embedded benchmark whose preset runs when --config is not given: tofu (fictitious authors) or "
        "muse (fictitious news); default tofu",
    )
    sweep = commands.add_parser(
        "tune",
        help="Ray Tune sweep of unlearning runs (DV temperature, G ratio, lr, ...) against the combined objective",
    )
    sweep.add_argument("--config", help="sweep file or preset (presets/sweeps/): a run config plus 'sweep:'")
    sweep.add_argument(
        "overrides", nargs="*", metavar="key=value", help="run overrides, or sweep.<key>=value"
    )
    sweep.add_argument("--name", help="sweep folder under output_dir; default: <sweep>-<timestamp>")
    sweep.add_argument(
        "--restore", metavar="FOLDER", help="continue the sweep in FOLDER after its driver died"
    )
    evaluate = commands.add_parser(
        "eval",
        help="evaluate a model (folder or Hugging Face name) on the config's benchmark with Ray Data replicas",
    )
    _add_config_arguments(evaluate)
    evaluate.add_argument("--model", required=True, help="model folder (save_pretrained) or hub name")
    evaluate.add_argument(
        "--target",
        help="the model before unlearning, for the forgetting-balance report; default: model.name_or_path",
    )
    evaluate.add_argument("--out", help="report folder; default: <output_dir>/eval-<model folder name>")
    for command in commands.choices.values():  # also after the command; SUPPRESS keeps a flag given before it
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def _unlearn(config_path: str | None, overrides: Sequence[str], name: str | None) -> None:
    from baldro_ray.cluster import ensure_ray
    from baldro_ray.run_folder import BEST_MODEL_DIR, CONFIG_FILE, EPOCHS_DIR, PLOTS_DIR
    from baldro_ray.unlearn import resolve_run, run_unlearn

    config = load_config(config_path, overrides)
    run = resolve_run(config, name)
    ensure_ray()
    outcome = run_unlearn(run)
    summary, out = outcome.summary, outcome.output_dir
    metrics = summary.metrics
    print(
        f"done in {summary.seconds:.1f} s: loss {metrics.get('train/loss', float('nan')):.4f}, "
        f"forget {metrics.get('train/forget_loss', float('nan')):.4f}, "
        f"DRO ESS {metrics.get('train/dro_ess', float('nan')):.2f}\n"
        f"model:      {outcome.model_dir}\ntrajectory: {outcome.trajectory}\nconfig:     {out / CONFIG_FILE}"
    )
    if summary.best_epoch is not None:
        print(
            f"best epoch: {summary.best_epoch} (model in {out / BEST_MODEL_DIR}, reports in {out / EPOCHS_DIR}, "
            f"plots in {out / PLOTS_DIR})"
        )
    if summary.mlflow is not None:
        print(f"MLflow:     run {summary.mlflow['run_id']} in {summary.mlflow['tracking_uri']}")


def _evaluate(
    config_path: str | None, overrides: Sequence[str], model: str, target: str | None, out: str | None
) -> None:
    import json
    from pathlib import Path

    from baldro_ray.cluster import ensure_ray
    from baldro_ray.eval.evaluate import evaluate_and_report, plan_evaluation, references
    from baldro_ray.inputs import resolve_inputs
    from baldro_ray.unlearn import check_model

    config = load_config(config_path, overrides)
    check_model(model, "--model")
    inputs = resolve_inputs(config)
    plan = plan_evaluation(config, inputs.location, inputs.retain_model)
    ensure_ray()
    folder = Path(out or Path(config.output_dir) / f"eval-{Path(model).name}")
    (summary,) = evaluate_and_report(plan, [(model, folder)], references(plan, target or inputs.model_path))
    print(json.dumps(summary, indent=2))
    print(f"report: {folder}")


def _quickstart(
    config_path: str | None,
    overrides: Sequence[str],
    method: str | None,
    workers: int | None,
    benchmark: str,
) -> None:
    from baldro_ray.quickstart import TABLE_FILE, run_quickstart

    result = run_quickstart(config_path, overrides, method, workers, benchmark=benchmark)
    print(f"\n{result.table}\n\ntable: {result.folder / TABLE_FILE}")
    if result.tracking_uri:
        print(
            f"MLflow: mlflow ui --backend-store-uri {result.tracking_uri}   (parent run {result.parent_run_id})"
        )


def _tune(config_path: str | None, overrides: Sequence[str], name: str | None, restore: str | None) -> None:
    from baldro_ray.tune.space import load_sweep
    from baldro_ray.tune.sweep import restore_sweep, run_sweep

    if (config_path is None) == (restore is None):
        raise ConfigError("tune needs exactly one of --config SWEEP (a new sweep) or --restore FOLDER")
    if restore is not None and (overrides or name):
        raise ConfigError("--restore continues a sweep as it was recorded: no overrides or --name")
    sweep = None if config_path is None else load_sweep(config_path, overrides)
    outcome = run_sweep(sweep, name) if sweep is not None else restore_sweep(restore)
    print(f"\n{outcome.table}\n\nsweep folder: {outcome.folder}")
    if outcome.best_dir is not None:
        print(f"best trial {outcome.rows[0].trial_id}: model and config in {outcome.best_dir}")
    if outcome.pareto is not None:
        print(f"Pareto front ({len(outcome.front)} trials): {outcome.pareto}")
    if outcome.tracking_uri:
        print(f"MLflow: parent run {outcome.parent_run_id} in {outcome.tracking_uri}")


def _finetune(config_path: str | None, overrides: Sequence[str]) -> None:
    from baldro_ray.cluster import ensure_ray
    from baldro_ray.embedded import PREPARERS, memorisation_report, render_report

    config = load_config(config_path, overrides)
    if not config.data.embedded:
        raise ConfigError(
            "finetune prepares an embedded benchmark (data.source=synthetic or synthetic_muse); "
            f"got data.source={config.data.source!r}"
        )
    ensure_ray()
    assets = PREPARERS[config.data.source](config.embedded, config.data.forget_split)
    print(render_report(memorisation_report(assets, config.embedded.finetune.max_length)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``baldro-ray`` console script; returns the exit status."""
    parser = build_parser()
    # Overrides may follow options (``--name x trainer.lr=1e-3``), which argparse alone does not allow.
    args, extra = parser.parse_known_args(argv)
    unknown = [arg for arg in extra if "=" not in arg or arg.startswith("-")]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    console.configure(args.verbose)
    try:
        if args.command == "objectives-demo":
            from baldro_ray.objectives.demo import render_demo

            print(render_demo())
        elif args.command == "config":
            print(dump_config(load_config(args.config, args.overrides)), end="")
        elif args.command == "finetune":
            _finetune(args.config, args.overrides)
        elif args.command == "unlearn":
            _unlearn(args.config, args.overrides, args.name)
        elif args.command == "quickstart":
            _quickstart(args.config, args.overrides, args.method, args.workers, args.benchmark)
        elif args.command == "tune":
            _tune(args.config, args.overrides, args.name, args.restore)
        elif args.command == "eval":
            _evaluate(args.config, args.overrides, args.model, args.target, args.out)
    except UserError as err:
        if args.debug:
            raise
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"baldro-ray: error: {message or type(err).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
