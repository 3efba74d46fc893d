"""The worker environment's planning and bookkeeping (metricgold_blender/worker_env.py) without Blender: device and
index choice per platform, pip's output, the status file's states, the atomic swap and the clean-up of leftovers.

The module is loaded from its file on its own, as the set-up process runs it (no bpy, no package around it). The
real set-up, in Blender, is tests/test_worker_setup.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("worker_env_standalone", REPO_ROOT / "metricgold_blender" / "worker_env.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


we = _load()


def test_runs_as_a_script_with_only_the_standard_library(tmp_path):
    # -I: no site-packages, no PYTHONPATH; bpy or anything of the add-on would fail to import
    out = subprocess.run([sys.executable, "-I", str(REPO_ROOT / "metricgold_blender" / "worker_env.py")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "usage: python -I worker_env.py run PLAN.json" in out.stderr


@pytest.mark.parametrize("choice, system, machine, nvidia, expected", [
    ("AUTO", "Linux", "x86_64", True, "cuda"),
    ("AUTO", "Linux", "x86_64", False, "cpu"),
    ("AUTO", "Windows", "AMD64", True, "cuda"),
    ("AUTO", "Windows", "AMD64", False, "cpu"),
    ("AUTO", "Darwin", "arm64", False, "mps"),
    ("AUTO", "Darwin", "x86_64", False, "cpu"),
    ("CUDA", "Linux", "x86_64", False, "cuda"),  # the user's choice wins (a driver may come later)
    ("CPU", "Windows", "AMD64", True, "cpu"),
    ("cpu", "Linux", "x86_64", True, "cpu"),
])
def test_device_choice(choice, system, machine, nvidia, expected):
    assert we.resolve_device(choice, system, machine, nvidia) == expected


def test_device_choice_errors():
    with pytest.raises(ValueError, match="not available on macOS"):
        we.resolve_device("CUDA", "Darwin", "arm64", False)
    with pytest.raises(ValueError, match="device must be one of AUTO, CUDA, CPU, got 'ROCM'"):
        we.resolve_device("rocm", "Linux", "x86_64", False)


def test_torch_index_and_requirement_per_platform_and_overrides():
    assert we.torch_index_url("cuda", "Windows", {}) == "https://download.pytorch.org/whl/cu128"
    assert we.torch_index_url("cpu", "Linux", {}) == "https://download.pytorch.org/whl/cpu"
    assert we.torch_index_url("cuda", "Linux", {}) is None  # PyPI's Linux torch is the CUDA build
    assert we.torch_index_url("mps", "Darwin", {}) is None
    assert we.torch_index_url("cpu", "Windows", {}) is None
    assert we.torch_index_url("cpu", "Linux", {we.TORCH_INDEX_VAR: ""}) is None  # set but empty: default index
    assert we.torch_index_url("cuda", "Windows", {we.TORCH_INDEX_VAR: "https://x/simple"}) == "https://x/simple"
    assert we.torch_requirement({}) == "torch torchvision"  # together, from one index: matching builds
    assert we.torch_requirement({we.TORCH_REQUIREMENT_VAR: " torch==2.13.0 "}) == "torch==2.13.0"
    assert we.torch_requirement({we.TORCH_REQUIREMENT_VAR: "torch==2.14.1  torchvision==0.29.1"}).split() == [
        "torch==2.14.1", "torchvision==0.29.1"]
    assert we.engine_extras({}) == "backends" and we.engine_extras({we.ENGINE_EXTRAS_VAR: ""}) == ""
    assert we.with_extras("/z/metricgold-0.1.0-py3-none-any.whl", "backends") == (
        "/z/metricgold-0.1.0-py3-none-any.whl[backends]")
    assert we.with_extras("/z/w.whl", "") == "/z/w.whl"
    assert we.extra_pip_args({we.PIP_ARGS_VAR: "--proxy http://p:3128 --timeout 60"}) == [
        "--proxy", "http://p:3128", "--timeout", "60"]


def test_plan_round_trips_and_builds_pip_commands(tmp_path):
    plan = we.make_plan(tmp_path, "auto", engine_source=tmp_path / "metricgold-0.1.0-py3-none-any.whl",
                        engine_version="0.1.0", client_path=tmp_path / "_vendor", base_python="/bl/python3.11",
                        environ={we.PIP_ARGS_VAR: "--no-cache-dir"}, system="Windows", machine="AMD64", nvidia=True)
    assert plan.device == "cuda" and plan.device_choice == "AUTO" and plan.torch_index_url == we.TORCH_CUDA_INDEX
    assert we.SetupPlan.from_json(plan.to_json()) == plan
    argv = we.pip_install_argv("py", ["torch"], plan=plan, index_url=plan.torch_index_url)
    assert argv == ["py", "-m", "pip", "install", "--no-warn-script-location", "--progress-bar", "raw",
                    "--index-url", we.TORCH_CUDA_INDEX, "--no-cache-dir", "torch"]
    assert we.pip_install_argv("py", ["w.whl"], plan=plan, no_deps=True, raw_progress=False)[-2:] == [
        "--no-cache-dir", "w.whl"]
    assert "--no-deps" in we.pip_install_argv("py", ["w.whl"], plan=plan, no_deps=True)
    assert we.env_python(tmp_path, windows=True) == tmp_path / "Scripts/python.exe"
    assert we.env_python(tmp_path, windows=False) == tmp_path / "bin/python"


def test_child_environment_drops_blenders_python_variables():
    env = we.child_environ({"PYTHONHOME": "/blender/python", "PYTHONPATH": "/x", "PATH": "/bin", "PIP_USER": "1"})
    assert "PYTHONHOME" not in env and "PYTHONPATH" not in env and "PIP_USER" not in env
    assert env["PATH"] == "/bin" and env["PYTHONNOUSERSITE"] == "1" and env["PIP_NO_INPUT"] == "1"


def test_step_fractions_are_monotonic_and_end_at_one():
    assert sum(s.weight for s in we.STEPS) == pytest.approx(1.0)
    points = [we.step_fraction(s.id, w) for s in we.STEPS for w in (0.0, 0.5, 1.0)]
    assert points == sorted(points) and points[0] == 0.0 and points[-1] == pytest.approx(1.0)
    assert we.step_fraction("torch", 0.5) == pytest.approx(0.08 + 0.25)


def test_pip_output_gives_progress_message_and_error():
    w = we.PipWatcher()
    lines = ["Looking in indexes: https://pypi.org/simple", "Collecting torch==2.9.0",
             "  Downloading https://files/torch-2.9.0-cp311-cp311-manylinux_2_28_x86_64.whl (899.7 MB)",
             "Progress 0 of 899700000", "Progress 449850000 of 899700000"]
    for line in lines:
        w.feed(line)
    assert w.message == "Downloading torch-2.9.0-cp311-cp311-manylinux_2_28_x86_64.whl (450 of 900 MB)"
    assert w.fraction == pytest.approx(0.1 + 0.75 * 0.5)
    w.feed("Installing collected packages: mpmath, sympy, torch")
    assert w.fraction == 0.9 and w.message == "Installing mpmath, sympy, torch"
    w.feed("ERROR: Could not find a version that satisfies the requirement torch==9.9")
    w.feed("ERROR: No matching distribution found for torch==9.9")
    assert w.last_error == "Could not find a version that satisfies the requirement torch==9.9"
    w.feed("Progress 10 of 5")  # never backwards
    assert w.fraction == 0.9


def _status(env, **fields):
    env.setup_dir.mkdir(parents=True, exist_ok=True)
    data = {"state": "running", "pid": os.getpid(), "updated": time.time(), "step": "torch",
            "step_label": "Installing PyTorch (CPU)", "fraction": 0.3, "message": "Downloading torch"}
    data.update(fields)
    env.status_path.write_text(json.dumps(data))


def _fake_env(env, engine="0.1.0"):
    python = env.python
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text("")
    (env.env_dir / we.MARKER_NAME).write_text(json.dumps({
        "engine_version": engine, "torch_version": "2.13.0+cpu", "device": "cpu", "device_choice": "CPU",
        "python": str(python), "size_bytes": 1_300_000_000}))


def test_states_from_the_status_file(tmp_path):
    env = we.WorkerEnvironment(tmp_path)
    assert env.status().phase == "none" and env.status().env is None
    _status(env)  # a live pid, fresh heartbeat
    s = env.status()
    assert s.phase == "running" and s.step == "torch" and s.fraction == 0.3 and env.running()
    _status(env, updated=time.time() - 3600)  # a heartbeat an hour old: that process is not ours any more
    assert env.status().phase == "failed" and not env.running()
    _status(env, pid=2**22 + 12345)  # no such process
    assert "stopped before it finished" in env.status().error
    _fake_env(env)
    _status(env, state="failed", error="Installing PyTorch failed: no space left on device")
    s = env.status()
    assert s.phase == "failed" and s.env.torch_version == "2.13.0+cpu" and "no space" in s.error
    _status(env, state="cancelled")
    s = env.status()
    assert s.phase == "ready" and "cancelled" in s.message
    assert not s.outdated("0.1.0") and s.outdated("0.2.0")
    env.python.unlink()  # the Blender whose Python made the venv was removed
    s = env.status()
    assert s.phase == "none" and "Python is gone" in s.problem


def test_poll_marks_a_dead_setup_failed_and_removes_its_folder(tmp_path):
    env = we.WorkerEnvironment(tmp_path)
    dead = 2**22 + 4321
    tmp = tmp_path / f"{we.TMP_PREFIX}{dead}"
    (tmp / "lib").mkdir(parents=True)
    _status(env, pid=dead, tmp_dir=str(tmp))
    s = env.poll()
    assert s.phase == "failed" and "stopped before it finished" in s.error
    assert env.wait_cleanup(30) and not tmp.exists()
    assert json.loads(env.status_path.read_text())["state"] == "failed"


def test_a_setup_killed_between_the_swaps_two_renames_gets_the_previous_env_back(tmp_path):
    env = we.WorkerEnvironment(tmp_path)
    _fake_env(env)
    dead = 2**22 + 999
    os.replace(env.env_dir, tmp_path / f"{we.OLD_PREFIX}{dead}")  # first rename done, then killed
    _status(env, pid=dead, step="finish", tmp_dir=str(tmp_path / f"{we.TMP_PREFIX}{dead}"))
    s = env.poll()
    assert s.phase == "failed" and s.env is not None and s.env.torch_version == "2.13.0+cpu"
    assert env.wait_cleanup(30) and sorted(p.name for p in tmp_path.iterdir()) == ["worker_env", "worker_setup"]


def test_clean_leftovers_keeps_the_running_setup_and_restores_a_half_swapped_env(tmp_path):
    env = we.WorkerEnvironment(tmp_path)
    live = tmp_path / f"{we.TMP_PREFIX}{os.getpid()}"
    _status(env, tmp_dir=str(live))  # this process plays the running set-up
    for name in (f"{we.TMP_PREFIX}1", f"{we.TRASH_PREFIX}7-0", live.name):
        (tmp_path / name / "x").mkdir(parents=True)
    old = tmp_path / f"{we.OLD_PREFIX}55"
    old.mkdir()
    (old / "marker").write_text("previous")
    removed = env.clean_leftovers()
    assert env.wait_cleanup(30)
    assert sorted(removed) == [f"{we.TMP_PREFIX}1", f"{we.TRASH_PREFIX}7-0"]
    assert live.is_dir()
    # a crash between the swap's two renames: the previous environment is put back
    assert (env.env_dir / "marker").read_text() == "previous" and not old.exists()


def test_swap_replaces_the_old_env_only_once_the_new_one_is_in_place(tmp_path):
    final, new = tmp_path / "worker_env", tmp_path / "worker_env.tmp-1"
    final.mkdir()
    (final / "v").write_text("old")
    new.mkdir()
    (new / "v").write_text("new")
    calls = []

    def failing_replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if Path(src) == new:
            raise OSError("disk gone")
        os.replace(src, dst)

    with pytest.raises(OSError, match="disk gone"):
        we.swap_into_place(new, final, replace=failing_replace)
    assert (final / "v").read_text() == "old" and (new / "v").read_text() == "new"  # old put back
    assert calls[0][1].startswith(we.OLD_PREFIX)
    old = we.swap_into_place(new, final)
    assert (final / "v").read_text() == "new" and (old / "v").read_text() == "old"  # the caller deletes it
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["worker_env", old.name])
    assert old.name.startswith(we.OLD_PREFIX)
    # a crash now would leave it: the next attempt deletes it (the environment in place stays)
    env = we.WorkerEnvironment(tmp_path)
    assert env.clean_leftovers() == [old.name] and env.wait_cleanup(30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker_env"] and (final / "v").read_text() == "new"


def test_retarget_scripts_names_the_final_folder(tmp_path):
    tmp, final = tmp_path / "worker_env.tmp-9", tmp_path / "worker_env"
    (tmp / "bin").mkdir(parents=True)
    (tmp / "bin" / "pip").write_text(f"#!{tmp}/bin/python\nimport pip\n")
    (tmp / "bin" / "blob").write_bytes(b"\0" + str(tmp).encode())  # binary files are left alone
    (tmp / "pyvenv.cfg").write_text(f"home = /usr/bin\ncommand = /usr/bin/python -m venv {tmp}\n")
    we._retarget_scripts(tmp, final, windows=False)
    assert (tmp / "bin" / "pip").read_text().splitlines()[0] == f"#!{final}/bin/python"
    assert (tmp / "bin" / "blob").read_bytes() == b"\0" + str(tmp).encode()
    assert str(final) in (tmp / "pyvenv.cfg").read_text()


def test_cancel_stops_the_process_group_within_two_seconds(tmp_path):
    # A stand-in set-up process with a child that ignores nothing: the whole group must go, fast.
    env = we.WorkerEnvironment(tmp_path)
    tmp = tmp_path / f"{we.TMP_PREFIX}x"
    tmp.mkdir()
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    env._proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    _status(env, pid=env._proc.pid, tmp_dir=str(tmp))
    time.sleep(0.3)
    pid = env._proc.pid
    seconds = env.cancel()
    assert seconds is not None and seconds < 2.0
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert env.wait_cleanup(30) and not tmp.exists()
    assert json.loads(env.status_path.read_text())["state"] == "cancelled"
    assert env.cancel() is None  # nothing runs now
