"""The command without a cluster: what a dry run lists, what is refused before any work (exit status 2, one
line saying why), and how the job is spread over a cluster's resources."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulk.cli import main
from bulk.pipeline import ClusterError, Resources, plan
from model.inference.options import PredictorOptions
from tests.bulk.helpers import write_images


def test_a_dry_run_lists_the_images_and_writes_nothing(
    tmp_path: Path, small_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = write_images(tmp_path / "photos", 3)
    out = tmp_path / "out"
    assert (
        main([str(tmp_path / "photos"), "--output", str(out), "--weights", str(small_weights), "--dry-run"])
        == 0
    )
    captured = capsys.readouterr()
    assert sorted(captured.out.split()) == sorted(str(p) for p in images)
    assert "a new job: 3 images to segment" in captured.err
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--actors", "0"], "--actors must be positive"),
        (["--gpus-per-actor", "-1"], "--gpus-per-actor cannot be negative"),
        (["--class-agnostic-nms", "1.5"], "--class-agnostic-nms takes an IoU in (0, 1]"),
        (["--weights", "/nonexistent/w.pth"], "weights file not found"),
        (["--device", "cuda:1"], "use --device cuda"),
    ],
)
def test_refused_before_any_work(
    tmp_path: Path, small_weights: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    write_images(tmp_path / "photos", 1)
    command = [str(tmp_path / "photos"), "--output", str(tmp_path / "out"), "--weights", str(small_weights)]
    assert main([*command, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("centermask-bulk: error:") and message in err, err
    assert not (tmp_path / "out").exists()


def test_missing_inputs_are_refused(
    tmp_path: Path, small_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = [str(tmp_path / "nothing"), "--output", str(tmp_path / "out"), "--weights", str(small_weights)]
    assert main(command) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "out" / "job.json").exists()


CPU = PredictorOptions(device="cpu")
AUTO = PredictorOptions(device="auto")
CUDA = PredictorOptions(device="cuda")


@pytest.mark.parametrize(
    ("options", "resources", "cluster", "expected"),
    [
        # A laptop: one actor per CPU beyond the one left for reading and writing, batches of one.
        (AUTO, Resources(), {"CPU": 2.0}, (1, 0.0, 1, 1)),
        (CPU, Resources(), {"CPU": 16.0, "GPU": 2.0}, (15, 0.0, 1, 1)),
        (CPU, Resources(cpus_per_actor=4), {"CPU": 16.0}, (3, 0.0, 4, 1)),
        # GPUs: one actor per GPU, or two with half a GPU each; batches of 8.
        (AUTO, Resources(), {"CPU": 16.0, "GPU": 2.0}, (2, 1.0, 1, 8)),
        (CUDA, Resources(gpus_per_actor=0.5), {"CPU": 16.0, "GPU": 2.0}, (4, 0.5, 1, 8)),
        (CUDA, Resources(actors=1, batch_size=16), {"CPU": 16.0, "GPU": 2.0}, (1, 1.0, 1, 16)),
    ],
)
def test_the_plan_follows_the_clusters_resources(
    options: PredictorOptions,
    resources: Resources,
    cluster: dict[str, float],
    expected: tuple[int, float, int, int],
) -> None:
    assert plan(options, resources, cluster) == expected


@pytest.mark.parametrize(
    ("options", "resources", "cluster", "message"),
    [
        (CUDA, Resources(), {"CPU": 8.0}, "the Ray cluster has none"),
        (PredictorOptions(device="cuda:1"), Resources(), {"CPU": 8.0, "GPU": 2.0}, "use --device cuda"),
        (CPU, Resources(gpus_per_actor=1), {"CPU": 8.0, "GPU": 1.0}, "would not use them"),
        (AUTO, Resources(gpus_per_actor=2), {"CPU": 8.0, "GPU": 1.0}, "has 1 GPUs"),
        (AUTO, Resources(cpus_per_actor=4), {"CPU": 2.0}, "has 2 CPUs"),
    ],
)
def test_plans_the_cluster_cannot_run_are_refused(
    options: PredictorOptions, resources: Resources, cluster: dict[str, float], message: str
) -> None:
    with pytest.raises(ClusterError, match=message):
        plan(options, resources, cluster)
