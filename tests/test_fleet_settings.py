"""The fleet config (each fault named by its key), the lock that lets one controller act, and the atomic write that
lets the replicas see the old routing file or the new one, never half of it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.fleet.controller import load_source
from gateway.fleet.lock import FileLock
from gateway.fleet.publication import RoutingFile
from gateway.fleet.settings import load_fleet_settings, parse_fleet_settings


def test_the_fleet_config_resolves_paths_and_defaults_the_lock_beside_the_output(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("source: gateway.yaml\noutput: live/gateway.yaml\nprometheus: {url: 'http://prom:9090/'}\n")
    settings = load_fleet_settings(path)
    assert settings.source == tmp_path / "gateway.yaml" and settings.output == tmp_path / "live" / "gateway.yaml"
    assert settings.lock == tmp_path / "live" / "gateway.yaml.lock"
    assert settings.prometheus.url == "http://prom:9090" and settings.tick == 1.0
    assert load_fleet_settings(path, prometheus_url="http://other:9090").prometheus.url == "http://other:9090"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"output": "b.yaml", "prometheus": {"url": "http://p"}}, "source: is required"),
        ({"source": "a.yaml", "output": "a.yaml", "prometheus": {"url": "http://p"}}, "output: is the source itself"),
        ({"source": "a.yaml", "output": "b.yaml"}, r"prometheus\.url: is required \(or give --prometheus URL\)"),
        ({"source": "a.yaml", "output": "b.yaml", "prometheus": {"url": "prom:9090"}}, "must be an http"),
        ({"source": "a.yaml", "output": "b.yaml", "prometheus": {"url": "http://p", "selector": {"model": "x"}}},
         r"prometheus\.selector\.model: the controller's queries set this label"),
        ({"source": "a.yaml", "output": "b.yaml", "prometheus": {"url": "http://p", "selector": {"job": 3}}},
         r"prometheus\.selector\.job: must be a non-empty string"),
        ({"source": "a.yaml", "output": "b.yaml", "prometheus": {"url": "http://p"}, "tick": "soon"},
         r"tick: must be a duration"),
        ({"source": "a.yaml", "output": "b.yaml", "prometheus": {"url": "http://p"}, "lease": 1}, "lease: unknown key"),
    ],
)  # fmt: skip
def test_a_bad_fleet_config_is_refused_naming_the_key(document: object, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_fleet_settings(document, base_dir=tmp_path)


def test_only_one_holder_has_the_lock_and_a_dead_holder_frees_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml.lock"
    first, second = FileLock(path), FileLock(path)
    assert first.acquire() and first.acquire()  # held, and taking it again is a no-op
    assert not second.acquire()
    assert f"pid {os.getpid()}" in second.holder()
    first.release()
    assert second.acquire()
    second.release()
    # Another process holds it until it dies, however it dies: no stale lock, no lease to wait out.
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from gateway.fleet.lock import FileLock
        assert FileLock(Path({str(path)!r})).acquire()
        print("held", flush=True)
        sys.stdin.read()
    """)
    other = FileLock(path)
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert not other.acquire()
        holder.kill()
    assert other.acquire()
    other.release()


def test_the_routing_file_is_replaced_whole_and_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    routing = RoutingFile(tmp_path / "gateway.yaml")
    assert routing.read() is None
    routing.write(b"first")
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    routing.write(b"second")
    assert routing.read() == b"second" and len(synced) == 2  # the new file's bytes, then its folder's entry
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml"]  # no temporary file left behind

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        routing.write(b"third")
    assert routing.read() == b"second"  # a failed write leaves the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml"]


def test_the_example_fleet_config_and_its_source_load() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "fleet" / "fleet.yaml"
    settings = load_fleet_settings(example)
    source = load_source(settings.source, output=settings.output)
    rollout = source.features.rollout["breast_cancer"]
    assert rollout is not None and rollout.gates.max_prediction_shift_js is None
