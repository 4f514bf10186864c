"""Shared fixtures: one local Ray cluster for the whole session (Ray start-up costs seconds)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TOFU_DIR = REPO_ROOT.parent / "shared" / "data" / "tofu"

# Row counts from ../shared/data/tofu/PROVENANCE.md.
TOFU_ROWS = {
    "full": 4000,
    "forget01": 40,
    "forget05": 200,
    "forget10": 400,
    "retain99": 3960,
    "retain95": 3800,
    "retain90": 3600,
    "holdout01": 40,
    "holdout05": 200,
    "holdout10": 400,
    "forget01_perturbed": 40,
    "forget05_perturbed": 200,
    "forget10_perturbed": 400,
    "retain_perturbed": 400,
    "real_authors": 100,
    "real_authors_perturbed": 100,
    "world_facts": 117,
    "world_facts_perturbed": 117,
}


# A reduced embedded benchmark: fine-tunes in seconds, still memorises its forget authors.
EMBEDDED_TINY = [
    "embedded.benchmark.num_authors=10",
    "embedded.benchmark.qa_per_author=6",
    "embedded.benchmark.num_world_facts=4",
    "embedded.benchmark.num_real_authors=4",
    "embedded.vocab_size=400",
    "embedded.tiny_model.hidden_size=32",
    "embedded.tiny_model.intermediate_size=64",
    "embedded.finetune.epochs=25",
    "embedded.finetune.per_device_batch_size=8",
    "embedded.finetune.lr=1e-2",
    "embedded.finetune.max_length=64",
]


# A reduced embedded MUSE-format benchmark: 8 forget articles (4 hard), fine-tuned in seconds.
EMBEDDED_MUSE_TINY = [
    "embedded.muse.num_forget_articles=8",
    "embedded.muse.num_retain1_articles=8",
    "embedded.muse.num_retain2_articles=6",
    "embedded.muse.num_holdout_articles=8",
    "embedded.muse.facts_per_article=4",
    "embedded.muse.qa_per_article=2",
    "embedded.muse.num_icl_examples=1",
    "embedded.muse.verbmem_prefix_words=8",
    "embedded.vocab_size=400",
    "embedded.tiny_model.hidden_size=32",
    "embedded.tiny_model.intermediate_size=64",
    "embedded.finetune.epochs=30",
    "embedded.finetune.per_device_batch_size=8",
    "embedded.finetune.lr=1e-2",
    "embedded.finetune.max_length=64",
    "trainer.max_length=64",
]


@pytest.fixture
def cli_console(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """For tests that call ``cli.main`` in-process: it configures the console of its process (progress bars on,
    the verbosity in the environment); later tests of the session expect library defaults, restored here."""
    from baldro_ray import console

    monkeypatch.setattr(console, "_live", console.live())
    saved = os.environ.copy()
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def embedded_tiny(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Any]:
    """``(overrides, EmbeddedAssets)`` of the reduced embedded benchmark, prepared once per session in a fresh
    cache (so its first preparation trains every model)."""
    from baldro_ray.config import load_config
    from baldro_ray.embedded import prepare_embedded

    overrides = [*EMBEDDED_TINY, f"embedded.cache_dir={tmp_path_factory.mktemp('embedded-cache')}"]
    assets = prepare_embedded(load_config(overrides=overrides).embedded, "forget10", log=lambda _: None)
    return overrides, assets


@pytest.fixture(scope="session")
def embedded_muse_tiny(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Any]:
    """``(overrides of embedded_muse_npo_dv, EmbeddedAssets)`` of the reduced embedded MUSE-format benchmark,
    prepared once per session in a fresh cache."""
    from baldro_ray.config import load_config
    from baldro_ray.embedded import prepare_embedded_muse

    overrides = [*EMBEDDED_MUSE_TINY, f"embedded.cache_dir={tmp_path_factory.mktemp('muse-cache')}"]
    config = load_config("embedded_muse_npo_dv", overrides)
    assets = prepare_embedded_muse(config.embedded, config.data.forget_split, log=lambda _: None)
    return overrides, assets


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A 2-CPU local Ray cluster shared by every test that asks for it (Train reports every 0.2 s)."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def wait_for_http(
    url: str,
    process: subprocess.Popen[bytes],
    log: Path,
    what: str,
    ready: Callable[[], bool] = lambda: True,
    timeout: float = 120,
) -> None:
    """Until ``ready()`` holds and ``url`` answers 200; fails with the end of ``log`` if ``process`` exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on a free local port (sqlite backend, proxied artifacts), shared by the session;
    its URI."""
    tmp_path = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ]
        + ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
        + ["--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so its uvicorn workers stop with it
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", server, tmp_path / "server.log", "mlflow server")
        yield uri
    finally:
        with_group = server.poll() is None
        if with_group:
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
