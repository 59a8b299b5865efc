"""The evaluation report: per-route tables, a summary, plots and GIFs, for a reader of a paper or a review.

:func:`write_report` writes, for ``results`` (driver name -> EvalResult; "policy" first, then baselines):

    routes_<driver>.json / .csv     one record per route (seed, driving score, completion, outcome, infractions ...)
    summary.json                    the aggregated ``eval/`` metrics of every driver, with what they were computed on
    summary.md                      the summary table (one row per driver) and the infraction breakdown per km
    driving_score_per_route.png     every route's driving score, per driver, with the means
    infractions.png                 infractions per km of route driven, per kind and driver
    trajectories.png                the drivers' paths on the town map, for the first routes
    gifs/route_<seed>.gif           the policy driving the first routes (baselines: route_<seed>_<driver>.gif)

:func:`summary_table` is the markdown table the terminal prints. :func:`log_to_run` puts the same figures into
the training run's TensorBoard folder (and wandb).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from envs.api import INFRACTIONS
from envs.typed_config import from_dict
from grpo.checkpoint_eval import Evaluation
from grpo.evaluation import EvalResult
from grpo.pictures import write_gif

DRIVER_COLOURS = {"policy": "tab:orange", "expert": "tab:green", "random": "tab:purple"}  # policy: the GIFs' ego colour
OTHER_COLOURS = ("tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
ROUTE_COLOUR = "#2878ff"


def _colour(driver: str, index: int) -> str:
    return DRIVER_COLOURS.get(driver, OTHER_COLOURS[index % len(OTHER_COLOURS)])


# --- tables ----------------------------------------------------------------------------------------------------


def _with_ci(metrics: dict[str, float], name: str, scale: float = 1.0, digits: int = 1) -> str:
    value, ci = metrics.get(f"eval/{name}", float("nan")), metrics.get(f"eval/{name}_ci95", float("nan"))
    return f"{value * scale:.{digits}f} ± {ci * scale:.{digits}f}"


def summary_table(results: dict[str, EvalResult]) -> str:
    """One row per driver: driving score, route completion and infraction penalty (the score is their product
    per route), success rate (each ± the 95% CI over routes), infractions per km (all kinds; "n/a" when the
    suite drove too little for a rate, envs.metrics.MIN_KM_FOR_RATES), mean speed, jerk and return (the sum of
    the backend's rewards)."""
    lines = ["| driver | driving score | route completion (%) | infraction penalty | success rate (%) | "
             "infractions / km | mean speed (m/s) | jerk (m/s³) | return |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for driver, result in results.items():
        m = result.metrics
        lines.append(f"| {driver} | {_with_ci(m, 'driving_score')} | {_with_ci(m, 'route_completion')} | "
                     f"{_with_ci(m, 'infraction_penalty', digits=2)} | "
                     f"{_with_ci(m, 'success_rate', 100.0)} | {_fmt(m.get('eval/infractions_per_km'), 2)} | "
                     f"{_with_ci(m, 'mean_speed', digits=2)} | {_with_ci(m, 'jerk', digits=2)} | "
                     f"{_with_ci(m, 'return')} |")
    return "\n".join(lines)


def infraction_table(results: dict[str, EvalResult]) -> str:
    """Per driver and infraction kind: events per km of route driven (envs.metrics), and the count in brackets."""
    lines = ["| driver | km of route | " + " | ".join(INFRACTIONS) + " |",
             "|---|---:|" + "---:|" * len(INFRACTIONS)]
    for driver, result in results.items():
        counts = {name: sum(int(route[name]) for route in result.routes) for name in INFRACTIONS}
        cells = [f"{_fmt(result.metrics.get(f'eval/{name}_per_km'), 2)} ({counts[name]})" for name in INFRACTIONS]
        lines.append(f"| {driver} | {result.metrics.get('eval/km_driven', 0.0):.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


# --- files -------------------------------------------------------------------------------------------------------


def write_report(results: dict[str, EvalResult], out_dir: str | Path, *, context: dict[str, Any] | None = None,
                 title: str = "Driving evaluation") -> Path:
    """Write every file of the report (module docstring) into ``out_dir``; returns the path of summary.md.

    ``context`` (checkpoint, iteration, suite, env ...) goes into summary.json and the header of summary.md.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    context = dict(context or {})
    for driver, result in results.items():
        write_routes(result, out / f"routes_{driver}")
    (out / "summary.json").write_text(json.dumps(_json_safe(
        {**context, "drivers": {driver: result.metrics for driver, result in results.items()}}), indent=2) + "\n")
    pictures = plot_all(results, out)
    gifs = write_gifs(results, out / "gifs")
    (out / "summary.md").write_text(_markdown(results, context, title, pictures, gifs, out))
    return out / "summary.md"


def write_routes(result: EvalResult, stem: Path) -> None:
    """``<stem>.json`` (a list of route records) and ``<stem>.csv`` (one row per route)."""
    stem.with_suffix(".json").write_text(json.dumps(_json_safe(result.routes), indent=2) + "\n")
    columns = list(result.routes[0]) if result.routes else []
    with stem.with_suffix(".csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(result.routes)


def _json_safe(value: Any) -> Any:
    """Strict JSON: NaN and infinities (undefined per-km rates) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_safe(dataclasses.asdict(value))
    return value


def _markdown(results: dict[str, EvalResult], context: dict[str, Any], title: str, pictures: list[Path],
              gifs: list[Path], out: Path) -> str:
    lines = [f"# {title}", ""]
    for key in ("checkpoint", "iteration", "run_name", "routes", "env"):
        if key in context:
            lines.append(f"- **{key}**: {context[key]}")
    lines += ["", "Mean over routes ± the half-width of the 95% confidence interval over routes "
              "(1.96 · std / √n). Driving score = route completion × 0.5^pedestrian · 0.6^vehicle · "
              "0.65^static collisions · 0.7^red lights; success = route completed without any infraction; "
              "infractions / km = all infractions per km of route driven; jerk = mean |d³s/dt³| of the speed "
              "(m/s³); return = the sum of the environment's rewards (what GRPO maximises).", "",
              summary_table(results), "",
              "## Infractions per km of route driven (count)", "", infraction_table(results), ""]
    if pictures:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in pictures] + [""]
    if gifs:
        lines += ["## GIFs", ""] + [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in gifs] + [""]
    return "\n".join(lines)


def write_gifs(results: dict[str, EvalResult], gif_dir: Path) -> list[Path]:
    """Every kept route's frames as a GIF at twice real time, holding the last frame for a second: the
    policy's as route_<seed>.gif, other drivers' as route_<seed>_<driver>.gif."""
    paths = []
    for driver, result in results.items():
        for seed, frames in result.frames.items():
            name = f"route_{seed}.gif" if driver == "policy" else f"route_{seed}_{driver}.gif"
            fps = min(50, max(1, round(2.0 / result.frame_dt)))
            paths.append(write_gif(frames + [frames[-1]] * fps, gif_dir / name, fps=fps))
    return paths


# --- plots -------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_all(results: dict[str, EvalResult], out: Path) -> list[Path]:
    """The three PNGs of the report (trajectories only where the backend recorded maps)."""
    paths = [plot_driving_score_per_route(results, out / "driving_score_per_route.png"),
             plot_infractions(results, out / "infractions.png")]
    trajectories = plot_trajectories(results, out / "trajectories.png")
    return paths + ([trajectories] if trajectories is not None else [])


def plot_driving_score_per_route(results: dict[str, EvalResult], path: Path) -> Path:
    """Each route's driving score as a dot per driver (routes in suite order), and each driver's mean as a
    dashed line with its 95% band."""
    plt = _pyplot()
    num_routes = max(len(result.routes) for result in results.values())
    figure, axis = plt.subplots(figsize=(min(16.0, 6.0 + 0.12 * num_routes), 4.2))
    offsets = np.linspace(-0.2, 0.2, len(results)) if len(results) > 1 else [0.0]
    for index, ((driver, result), offset) in enumerate(zip(results.items(), offsets, strict=True)):
        colour = _colour(driver, index)
        scores = [route["driving_score"] for route in result.routes]
        mean, ci = result.metrics["eval/driving_score"], result.metrics.get("eval/driving_score_ci95", 0.0)
        axis.scatter(np.arange(len(scores)) + offset, scores, s=22, color=colour, alpha=0.85,
                     label=f"{driver}: {mean:.1f} ± {ci:.1f}", zorder=3)
        axis.axhline(mean, color=colour, linestyle="--", linewidth=1.2)
        axis.axhspan(mean - ci, mean + ci, color=colour, alpha=0.08)
    seeds = [route["seed"] for route in next(iter(results.values())).routes]
    step = max(1, len(seeds) // 16)
    axis.set_xticks(range(0, len(seeds), step), [str(seed) for seed in seeds[::step]])
    axis.set_xlabel("route (episode seed)")
    axis.set_ylabel("driving score")
    axis.set_ylim(-3, 103)
    axis.grid(alpha=0.3)
    axis.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), title="mean ± 95% CI")
    axis.set_title(f"Driving score per route ({num_routes} held-out routes)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_infractions(results: dict[str, EvalResult], path: Path) -> Path:
    """Grouped bars: infractions per km of route driven for every kind and driver, the count written above each bar."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / len(results)
    kinds = np.arange(len(INFRACTIONS))
    for index, (driver, result) in enumerate(results.items()):
        rates = [result.metrics.get(f"eval/{name}_per_km", float("nan")) for name in INFRACTIONS]
        rates = [0.0 if not math.isfinite(rate) else rate for rate in rates]
        counts = [sum(int(route[name]) for route in result.routes) for name in INFRACTIONS]
        x = kinds - 0.4 + width * (index + 0.5)
        km = result.metrics.get("eval/km_driven", 0.0)
        bars = axis.bar(x, rates, width, color=_colour(driver, index), label=f"{driver} ({km:.2f} km)")
        for bar, count in zip(bars, counts, strict=True):
            if count:
                axis.annotate(str(count), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                              va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    axis.set_xticks(kinds, [name.replace("_", "\n") for name in INFRACTIONS])
    axis.set_ylabel("events per km of route driven")
    axis.set_ylim(bottom=0)
    if not any(int(route[name]) for result in results.values() for route in result.routes for name in INFRACTIONS):
        axis.set_ylim(0, 1)
        axis.text(0.5, 0.5, "no infractions on any route", transform=axis.transAxes, ha="center", fontsize=12,
                  color="grey")
    axis.grid(axis="y", alpha=0.3)
    axis.legend()
    axis.set_title("Infractions per km of route driven (number above a bar: count over all routes)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_trajectories(results: dict[str, EvalResult], path: Path, max_routes: int = 4) -> Path | None:
    """The first routes with a map view: town, route (blue band, goal a blue dot), each driver's path from its
    start (circle) to its end (star: completed, cross: ended by an infraction, square: out of steps). None
    without maps (backends other than the built-in simulator)."""
    from matplotlib.lines import Line2D

    drivers = [(index, driver, result) for index, (driver, result) in enumerate(results.items())
               if result.trajectories]
    maps = next((result.maps for _, _, result in drivers if result.maps), {})
    seeds = list(maps)[:max_routes]
    if not seeds:
        return None
    plt = _pyplot()
    aspects = [(maps[s].extent[1] - maps[s].extent[0]) / (maps[s].extent[3] - maps[s].extent[2]) for s in seeds]
    columns = 1 if len(seeds) == 1 or float(np.median(aspects)) > 1.8 else 2
    rows = math.ceil(len(seeds) / columns)
    width = 12.0
    panel_height = float(np.clip(width / columns / max(aspects), 2.2, 6.5)) + 0.9  # map + two-line title
    figure, axes = plt.subplots(rows, columns, figsize=(width, panel_height * rows + 0.6), squeeze=False)
    for axis in axes.flat[len(seeds):]:
        axis.set_visible(False)
    for axis, seed in zip(axes.flat, seeds, strict=False):
        view = maps[seed]
        axis.imshow(view.image, extent=view.extent, origin="upper", interpolation="nearest")
        axis.plot(view.route[:, 0], view.route[:, 1], color=ROUTE_COLOUR, linewidth=6, alpha=0.35,
                  solid_capstyle="round")
        axis.plot(*view.route[-1], marker="o", markersize=10, color=ROUTE_COLOUR, markeredgecolor="white")
        scores = []
        for index, driver, result in drivers:
            route_index = next((i for i, route in enumerate(result.routes) if route["seed"] == seed), None)
            if route_index is None:
                continue
            route, xy = result.routes[route_index], result.trajectories[route_index]
            colour = _colour(driver, index)
            axis.plot(xy[:, 0], xy[:, 1], color=colour, linewidth=1.8)
            axis.plot(*xy[0], marker="o", markersize=5, color=colour, markeredgecolor="black")
            axis.plot(*xy[-1], marker=_END_MARKERS.get(route["outcome"], "X"), markersize=11, color=colour,
                      markeredgecolor="black")
            scores.append(f"{driver} {route['driving_score']:.0f} ({route['outcome'].replace('_', ' ')})")
        axis.set_xlim(view.extent[0], view.extent[1])
        axis.set_ylim(view.extent[2], view.extent[3])
        axis.set_aspect("equal")
        axis.set_title(f"route {seed}, town {view.town_seed}\ndriving score: " + " | ".join(scores), fontsize=9)
        axis.set_xlabel("x (m)", fontsize=8)
        axis.set_ylabel("y (m)", fontsize=8)
        axis.tick_params(labelsize=7)
    handles = [Line2D([], [], color=_colour(driver, index), linewidth=2, label=driver) for index, driver, _ in drivers]
    handles += [Line2D([], [], color=ROUTE_COLOUR, linewidth=6, alpha=0.35, label="route (dot: goal)"),
                Line2D([], [], linestyle="", marker="o", color="grey", label="start"),
                Line2D([], [], linestyle="", marker="*", markersize=10, color="grey", label="completed"),
                Line2D([], [], linestyle="", marker="X", markersize=8, color="grey", label="ended by an infraction"),
                Line2D([], [], linestyle="", marker="s", color="grey", label="out of steps")]
    figure.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.45 / figure.get_figheight()))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


_END_MARKERS = {"completed": "*", "step_limit": "s"}


# --- the training run's dashboard ------------------------------------------------------------------------------


def log_to_run(evaluation: Evaluation, report_dir: str | Path) -> list[str]:
    """Log the evaluation into the checkpoint's run: TensorBoard at ``<logger.log_dir>/<run_name>`` and, when
    the run used wandb, a wandb run ``<run_name>-eval`` (offline without an API key or network, as in training).

    Scalars go under ``evaluate/<driver>/<metric>`` (apart from the trainer's periodic ``eval/...``, which use
    other routes) at step = the checkpoint's iteration; the PNGs as images; on TensorBoard the tables as text.
    Returns the loggers' notices."""
    from PIL import Image

    from grpo.config import LoggerConfig
    from grpo.run_logger import RunLogger

    logger_config = from_dict(LoggerConfig, evaluation.train_config.get("logger", {}), "logger")
    results, step, run_name = evaluation.results, evaluation.iteration, evaluation.run_name
    scalars = {f"evaluate/{driver}/{name.removeprefix('eval/')}": value
               for driver, result in results.items() for name, value in result.metrics.items()
               if math.isfinite(value)}
    images = {f"evaluate/{p.stem}": np.asarray(Image.open(p).convert("RGB"))
              for p in sorted(Path(report_dir).glob("*.png"))}
    sinks = []
    if logger_config.tensorboard:
        no_wandb = dataclasses.replace(logger_config, wandb=dataclasses.replace(logger_config.wandb, mode="disabled"))
        sinks.append(RunLogger(no_wandb, run_name, evaluation.train_config))
    if logger_config.wandb.mode != "disabled":
        sinks.append(RunLogger(dataclasses.replace(logger_config, tensorboard=False), f"{run_name}-eval",
                               {**evaluation.train_config, "evaluate": evaluation.context()}))
    notices: list[str] = []
    for sink in sinks:
        notices += sink.notices
        try:
            sink.log(scalars, step)
            for name, image in images.items():
                sink.log_image(name, image, step, caption=name)
            if sink.tensorboard is not None:
                sink.tensorboard.add_text("evaluate/summary", summary_table(results), step)
                sink.tensorboard.add_text("evaluate/infractions", infraction_table(results), step)
            if sink.wandb_run is not None:
                notices += _log_gifs_to_wandb(sink.wandb_run, sorted(Path(report_dir).glob("gifs/*.gif")), step)
        finally:
            sink.close()
    if sinks:
        notices.append(f"logged to run {run_name!r} at iteration {step}")
    return notices


def _log_gifs_to_wandb(run, paths: list[Path], step: int) -> list[str]:
    """The GIFs as wandb videos; a failure (an old wandb, a missing codec) is a notice, never an error."""
    try:
        import wandb

        run.log({f"evaluate/gifs/{p.stem}": wandb.Video(str(p), format="gif") for p in paths}, step=step)
    except Exception as error:  # the report on disk is complete whatever wandb does
        return [f"wandb: GIFs not logged ({type(error).__name__}: {str(error)[:120]})"]
    return []
