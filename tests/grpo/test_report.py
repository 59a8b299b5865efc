"""The report from small hand-built results: every file exists and parses; tables; the run's TensorBoard."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from envs.api import INFRACTIONS, MapView
from envs.factory import EnvConfig
from grpo.checkpoint_eval import Evaluation
from grpo.config import EvalConfig
from grpo.eval_metrics import aggregate
from grpo.evaluation import EvalResult
from grpo.report import infraction_table, log_to_run, summary_table, write_report


def route(seed: int, score: float, completion: float, distance_m: float, outcome: str, **events: int) -> dict:
    return {"seed": seed, "driving_score": score, "route_completion": completion,
            "infraction_penalty": score / max(completion, 1e-9), "success": outcome == "completed" and not events,
            "outcome": outcome, "route_progress_m": distance_m, "distance_m": distance_m + 1.0, "duration_s": 10.0,
            "steps": 100,
            "mean_speed": distance_m / 10.0, "jerk": 1.5, "return": completion / 10, **dict.fromkeys(INFRACTIONS, 0),
            **events}


def result(routes: list[dict], with_pictures: bool = False) -> EvalResult:
    trajectories = [np.stack([np.linspace(0, r["distance_m"], 11), np.zeros(11)], 1) for r in routes]
    out = EvalResult(aggregate(routes), routes, trajectories)
    if with_pictures:
        image = np.full((40, 200, 3), 60, dtype=np.uint8)
        route_line = np.stack([np.linspace(0, 150, 16), np.zeros(16)], 1)
        out.maps = {r["seed"]: MapView(image, (-20.0, 180.0, -20.0, 20.0), route_line, 1_000_000) for r in routes}
        out.frames = {routes[0]["seed"]: [np.full((32, 32, 3), c, dtype=np.uint8) for c in (0, 120, 240)]}
    return out


@pytest.fixture
def results() -> dict[str, EvalResult]:
    return {
        "policy": result([route(7, 48.0, 80.0, 120.0, "collision_vehicle", collision_vehicle=1),
                          route(8, 100.0, 100.0, 150.0, "completed")], with_pictures=True),
        "expert": result([route(7, 100.0, 100.0, 150.0, "completed"), route(8, 100.0, 100.0, 150.0, "completed")]),
        "random": result([route(7, 0.0, 0.0, 0.0, "step_limit"), route(8, 2.0, 2.0, 3.0, "off_road", off_road=1)]),
    }


def test_report_files_exist_and_parse(tmp_path, results):
    summary = write_report(results, tmp_path / "report", context={"checkpoint": "c.pt", "iteration": 9})
    out = summary.parent
    for driver, expected in results.items():
        assert json.loads((out / f"routes_{driver}.json").read_text()) == expected.routes
        rows = list(csv.DictReader((out / f"routes_{driver}.csv").open()))
        assert [int(row["seed"]) for row in rows] == [7, 8] and set(rows[0]) == set(expected.routes[0])
    data = json.loads((out / "summary.json").read_text())  # strict JSON: the random driver's rates stay finite
    assert data["iteration"] == 9 and data["drivers"]["policy"]["eval/driving_score"] == 74.0
    markdown = summary.read_text()
    assert summary_table(results) in markdown and "- **checkpoint**: c.pt" in markdown
    assert "![trajectories](trajectories.png)" in markdown and "![route_7](gifs/route_7.gif)" in markdown
    for name in ("driving_score_per_route", "infractions", "trajectories"):
        with Image.open(out / f"{name}.png") as image:
            assert image.size[0] > 500 and image.size[1] > 300
    with Image.open(out / "gifs" / "route_7.gif") as gif:
        assert gif.n_frames >= 3


def test_summary_table_has_a_row_per_driver_with_intervals(results):
    lines = summary_table(results).splitlines()
    assert lines[0].startswith("| driver | driving score | route completion (%) | infraction penalty | "
                               "success rate (%) |")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["policy", "expert", "random"]
    # policy: scores 48 and 100 -> 74 ± 1.96 x std(48, 100) / sqrt(2) = 74 ± 50.96; infraction penalties 0.6
    # (a vehicle collision) and 1 -> 0.8 ± 1.96 x 0.2828 / sqrt(2) = 0.8 ± 0.39
    assert "| policy | 74.0 ± 51.0 | 90.0 ± 19.6 | 0.80 ± 0.39 | 50.0 ± 98.0 |" in lines[2]
    assert "| 0.00 |" in lines[3]  # the expert: no infractions per km
    # random: one off-road in 3 m driven is no rate (below envs.metrics.MIN_KM_FOR_RATES), the count stays
    assert "| n/a |" in lines[4]
    assert "n/a (1)" in infraction_table(results).splitlines()[-1]


def test_nothing_driven_gives_finite_json(tmp_path):
    standing = {"random": result([route(1, 0.0, 0.0, 0.0, "blocked", blocked=1)])}
    summary = write_report(standing, tmp_path)
    metrics = json.loads((summary.parent / "summary.json").read_text())["drivers"]["random"]
    assert metrics["eval/blocked_per_km"] is None  # envs.metrics.per_km: not available when nothing was driven
    assert "NaN" not in (summary.parent / "summary.json").read_text()


def test_log_to_run_writes_the_runs_tensorboard(tmp_path, results):
    write_report(results, tmp_path / "report")
    logger = {"log_dir": str(tmp_path / "runs"), "tensorboard": True, "wandb": {"mode": "disabled"}}
    evaluation = Evaluation(results, "c.pt", 12, "run", EnvConfig(), EvalConfig(), {"logger": logger})
    notices = log_to_run(evaluation, tmp_path / "report")
    assert notices == ["logged to run 'run' at iteration 12"]
    accumulator = EventAccumulator(str(next((tmp_path / "runs" / "run").glob("events.out.tfevents.*"))),
                                   size_guidance={"images": 0})
    accumulator.Reload()
    assert accumulator.Scalars("evaluate/expert/driving_score")[0].step == 12
    assert "evaluate/trajectories" in accumulator.Tags()["images"]
