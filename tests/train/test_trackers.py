"""train.callbacks (user callbacks by import path) and train.trackers (W&B offline, MLflow with a
local store): what they receive, and one-line errors for bad entries (train/trackers.py)."""
import json

import pytest

from helpers import run_cli as cli

STEPS = ["--set", "train.steps=20", "--set", "train.eval_every=10", "--quiet"]


def records(out_dir):
    run = next(p for p in out_dir.iterdir() if p.is_dir() and (p / "metrics.jsonl").exists())
    return run, [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_user_callback_sees_every_step_and_the_evaluations(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_hooks.py").write_text(
        "SEEN = []\n"
        "class Recorder:\n"
        "    def on_step_end(self, s):\n"
        "        SEEN.append((s.step, s.extra.get('last_eval', {}).get('step'), s.engine is not None))\n"
        "class OnlyEnd:\n"
        "    def on_end(self, s):\n"
        "        SEEN.append(('end', s.step))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = cli(["train", "--out-dir", str(tmp_path / "runs"), *STEPS, "--set",
                          'train.callbacks=["my_hooks:Recorder", "my_hooks:OnlyEnd"]'], capsys)
    assert code == 0, err
    import my_hooks
    assert [x[0] for x in my_hooks.SEEN[:-1]] == list(range(1, 21)) and my_hooks.SEEN[-1] == ("end", 20)
    assert my_hooks.SEEN[9][1] == 10 and my_hooks.SEEN[19][1] == 20 and all(x[2] for x in my_hooks.SEEN[:-1])


@pytest.mark.parametrize("entry, message", [
    ("no_such_module_xyz:Hook", "cannot import 'no_such_module_xyz'"),
    ("sparsetrain:NoSuchHook", "'sparsetrain' has no 'NoSuchHook'"),
    ("just_a_name", "must look like 'package.module:Name'"),
    ("sparsetrain.config:RunConfig", "has none of the hooks"),
])
def test_bad_callback_entries_are_one_line_errors(tmp_path, capsys, entry, message):
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--set", f"train.callbacks={entry}"], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not any(tmp_path.iterdir())  # refused before anything ran


def test_unknown_tracker_is_a_one_line_error(tmp_path, capsys):
    code, out, err = cli(["train", "--out-dir", str(tmp_path), "--set", "train.trackers=neptune"], capsys)
    assert code == 2 and err.count("\n") == 1 and "unknown tracker 'neptune'" in err


def test_wandb_offline_receives_metrics_density_and_flops(tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb", reason="the 'trackers' extra is not installed (pip install 'sparsetrain[trackers]')")
    for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                 "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(k, v)
    code, out, err = cli(["train", "--out-dir", str(tmp_path / "runs"), *STEPS, "--set", "train.trackers=wandb"],
                         capsys)
    assert code == 0, err
    run, recs = records(tmp_path / "runs")
    logs = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    history = wandb_history(logs[0].read_bytes())
    assert [step for step, _ in history] == [r["step"] for r in recs] == [10, 20]
    for (step, logged), rec in zip(history, recs):
        assert logged["test_accuracy"] == pytest.approx(rec["test_accuracy"])
        for name, density in rec["layer_density"].items():
            assert logged[f"layer_density/{name}"] == pytest.approx(density)
        assert logged["flops/train_flops"] > 0 and 0 < logged["flops/inference_flops_ratio"] < 1


def wandb_history(raw: bytes):
    """(step, {key: value}) of the history records of an offline W&B run file: a 7-byte header,
    then LevelDB-style log records (crc32, length, type; 32 KiB blocks) holding protobuf Records."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    assert raw[:4] == b":W&B"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        buf = data if kind in (1, 2) else buf + data  # FULL/FIRST start a record, MIDDLE/LAST extend it
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            if record.WhichOneof("record_type") == "history":
                items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                out.append((record.history.step.num, items))
    return out


def test_mlflow_local_store_receives_every_record(tmp_path, capsys, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="the 'trackers' extra is not installed "
                                 "(pip install 'sparsetrain[trackers]')")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this opt-in to a file store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    code, out, err = cli(["train", "--out-dir", str(tmp_path / "runs"), *STEPS, "--set", "train.trackers=mlflow"],
                         capsys)
    assert code == 0, err
    run, recs = records(tmp_path / "runs")
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert found.info.run_name == run.name and found.data.params["sparsity.method"] == "rigl"
    history = client.get_metric_history(found.info.run_id, "test_accuracy")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["test_accuracy"])) for r in recs]
    name = next(iter(recs[-1]["layer_density"]))
    assert [m.step for m in client.get_metric_history(found.info.run_id, f"layer_density/{name}")] == [10, 20]
    flops = client.get_metric_history(found.info.run_id, "flops/train_flops")
    assert len(flops) == 2 and 0 < flops[0].value < flops[1].value
