"""The preflight of the real-generator path (stylerig_engine/preflight.py): train all with the offline detector
on a random StyleGAN2 -> resume -> serve, with the generator identity checked.

The default run uses a narrow random StyleGAN2 (random:64:512: the real architecture, 10 W+ layers, small
channels) so that it stays cheap; the real sizes (random:256, and random:1024 on a GPU) are `slow`, and
benchmarks/preflight.py times them.
"""

from __future__ import annotations

import json
import re

import pytest

from stylerig_engine.preflight import run_preflight

pytest.importorskip("mediapipe")


def check(report: dict, out, count: int, num_ws: int, res: int) -> None:
    manifest = json.loads((out / "corpus" / "manifest.json").read_text())
    assert manifest["config"]["landmarks"] == "preflight"
    assert manifest["generator"]["num_ws"] == num_ws and manifest["generator"]["img_resolution"] == res
    # Noise holds no face: the detector ran on every image and says how often it found none (MediaPipe may see a
    # face in the odd noise image: 1 of 8 at random:256); the stand-in is labelled.
    found = re.match(rf"preflight landmarks: MediaPipe found no face in (\d+) of {count} images", report["detector"])
    assert found and int(found.group(1)) >= count // 2, report["detector"]
    assert report["resumed"] == ["dfr", "rignet-pose", "rignet-expression", "rignet-illumination"]
    assert report["serve"]["frame_shape"] == [res, res, 4]
    assert report["serve"]["generator_sha256"] == manifest["generator"]["weights_sha256"]


def test_preflight_small_stylegan2(tmp_path):
    report = run_preflight("random:64:512", tmp_path, count=6, batch=3, steps=2, eval_count=3, threads=1)
    check(report, tmp_path, 6, num_ws=10, res=64)


@pytest.mark.slow
def test_preflight_random_256(tmp_path):
    report = run_preflight("random:256", tmp_path, count=8, batch=4, steps=2, eval_count=4, threads=1)
    check(report, tmp_path, 8, num_ws=14, res=256)


def test_train_all_without_an_offline_detector_stops_before_training(tmp_path, monkeypatch, capsys):
    from stylerig_engine import cli

    monkeypatch.setitem(__import__("sys").modules, "mediapipe", None)  # as if the extra were not installed
    rc = cli.main(["train", "all", "--generator", "random:64:512", "--count", "4", "--batch", "2", "--out",
                   str(tmp_path), "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "stylerig train all: error: --landmarks auto" in err and "stylerig[landmarks]" in err
    assert not (tmp_path / "dfr.safetensors").exists() and not (tmp_path / "corpus" / "manifest.json").exists()
