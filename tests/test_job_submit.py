"""`ray job submit` against a real Ray head started with `ray start --head` (loopback only): a tiny unlearning run
goes through the job API the way docs/cluster.md says, `ray job logs -f` follows it to the end, and its outputs land
in the configured output_dir. The head is this test's own (own ports, own temp dir), never the session cluster, and
it is stopped by signalling its process group, which holds only the processes it started."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from baldro_ray.models.tiny import TinyModelSpec, build_tiny_llama, save_model, train_tokenizer
from tests.conftest import wait_for_http

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]

BIN = Path(sys.executable).parent
QA = [
    (f"Which city did author {i} live in?", f"Author {i} lived in town {i * 3} for {i + 2} years.")
    for i in range(24)
]
JOB_TIMEOUT_S = 240


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _ray(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def ray_head() -> Iterator[tuple[str, dict[str, str]]]:
    """A 2-CPU head on 127.0.0.1 with the dashboard (job API) on a free port; ``(job API address, client env)``.

    Token authentication is disabled for this loopback-only test cluster (the shipped cluster configs keep it on).
    """
    temp_dir = tempfile.mkdtemp(prefix="brj-", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics = _free_ports(7)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_AUTH_MODE="disabled",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's `baldro-ray` is this environment's
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="5",  # on SIGTERM, drain at most 5 s (default 30) before stopping
    )
    log_file = Path(temp_dir) / "ray-start.log"
    log = log_file.open("wb")  # closed after the head stops, in the finally below
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}"]
        + ["--num-cpus=2", "--num-gpus=0", "--object-store-memory=300000000", f"--temp-dir={temp_dir}"]
        + ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"]
        + [f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}"]
        + [f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}"]
        + [f"--metrics-export-port={metrics}", "--disable-usage-stats"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: every Ray process it starts, and nothing else
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        # `ray start` says the node is up: the dashboard answers earlier, before the raylet.
        wait_for_http(
            f"{address}/api/version",
            head,
            log_file,
            "ray start --head",
            ready=lambda: b"Ray runtime started" in log_file.read_bytes(),
        )
        yield address, env
    finally:
        _stop(head)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(head: subprocess.Popen[bytes]) -> None:
    """SIGTERM to `ray start --block` (it drains the node and stops the processes it started), then whatever of
    its process group is left: TERM, then KILL; the group is empty afterwards."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=45)
        except subprocess.TimeoutExpired:
            pass
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + grace
        try:
            os.killpg(head.pid, sig)
            while time.monotonic() < deadline:
                os.killpg(head.pid, 0)  # raises once the group is empty
                time.sleep(0.2)
        except ProcessLookupError:
            break
    if head.poll() is None:
        head.wait()
    with pytest.raises(ProcessLookupError):  # nothing of the head is left
        os.killpg(head.pid, 0)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A tiny model and a TOFU-layout folder (forget10 / retain90), written by the test."""
    tokenizer = train_tokenizer([f"{q} {a}" for q, a in QA] * 3, vocab_size=300)
    spec = TinyModelSpec(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=2)
    save_model(build_tiny_llama(spec, tokenizer, seed=0), tokenizer, tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    for name, rows in (("forget10", QA[:8]), ("retain90", QA[8:])):
        (data / f"{name}.json").write_text(
            "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows)
        )
    return tmp_path


def test_ray_job_submit_runs_an_unlearning_job(ray_head: tuple[str, dict[str, str]], workspace: Path) -> None:
    address, env = ray_head
    # The working directory the job ships: one config that extends a packaged paper preset by name and shrinks it
    # to the tiny model on CPU (as a user's own configs/ file would adapt a preset to their cluster).
    job_dir = workspace / "job"
    job_dir.mkdir()
    outputs = workspace / "outputs"
    (job_dir / "job.yaml").write_text(
        "extends: tofu_llama2/npo_dv_forget10\n"
        f"data: {{location: {workspace / 'data'}}}\n"
        f"model: {{name_or_path: {workspace / 'model'}, template: plain}}\n"
        "trainer: {use_gpu: false, dtype: float32, deepspeed: {zero_stage: null, bf16: false}, num_workers: 1,\n"
        "  cpus_per_worker: 1, per_device_batch_size: 4, epochs: 1, lr: 1.0e-3, max_length: 64}\n"
        "evaluation: {enabled: false}\n"
        "tracking: {log_model: false}\n"
        f"output_dir: {outputs}\n"
    )
    submission = f"baldro-test-{os.getpid()}"
    submitted = _ray(
        env,
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(job_dir),
        "--submission-id",
        submission,
        "--no-wait",
        "--",
        "baldro-ray",
        "unlearn",
        "--config",
        "job.yaml",
        "--name",
        "jobrun",
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    finished = False
    try:
        # `ray job logs -f` follows the driver's output until the job ends.
        logs = _ray(env, "job", "logs", "-f", "--address", address, submission, timeout=JOB_TIMEOUT_S)
        status = _ray(env, "job", "status", "--address", address, submission)
        finished = True
        assert f"job '{submission}' succeeded" in status.stdout.lower(), (
            f"{status.stdout}\n{logs.stdout[-6000:]}"
        )
    finally:
        if not finished:
            print(_ray(env, "job", "logs", "--address", address, submission).stdout[-6000:])
            _ray(env, "job", "stop", "--address", address, submission)
    # the progress a user follows: the workers' step lines, then the driver's summary
    assert "epoch 1/1 step 2/2" in logs.stdout and "done in" in logs.stdout, logs.stdout[-3000:]
    run = outputs / "jobrun"
    assert (run / "model" / "model.safetensors").is_file()
    for name in ("config.yaml", "summary.json", "trajectory.parquet", "steps.parquet"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["name"] == "jobrun" and summary["mlflow"]["tracking_uri"].endswith("mlflow.db")
    assert (outputs / "mlflow.db").is_file()
    assert (outputs / ".ray" / "jobrun").is_dir()  # Ray Train's storage_path: checkpoints beside the run
    resolved = (run / "config.yaml").read_text()
    assert (
        "retain_reduction: sequence_sum_mean" in resolved and "temperature: -1.0" in resolved
    )  # the preset's
