"""``textlm._commands``: the processes ``odernn compare`` and the seeds study run their trainings in,
forked from a server that imported the toolkit once. Each must behave as the console command does:
its output and exit code, the caller's directory and environment (a forkserver keeps its own),
signals, and a checkpoint when the caller stops."""

import json
import signal
import time

import pytest
import torch
from test_cli import run

from textlm._commands import Command


def _verse(folder):
    text = folder / "verse.txt"
    text.write_text("".join(f"{k} shall I compare thee to a summer's day?\n" for k in range(100)))
    return text


def _training(out, text, budget_steps):
    return ["--threads", "1", "train", "--text", str(text), "--hidden", "8", "--batch-size", "4", "--bptt", "16",
            "--max-tokens", str(64 * budget_steps), "--eval-tokens", "200", "--checkpoint-every", "1000",
            "--no-progress", "--json", "--out", str(out)]


@pytest.mark.parametrize("argv", [["tableau", "show", "heun", "--json"], ["tableau", "show", "nosuch"],
                                  ["tableau", "show"], ["--threads", "0", "tableau", "list"]])
def test_a_command_prints_and_exits_as_the_console_command(argv):
    with Command(argv) as command:
        out, err = command.communicate(timeout=120)
    assert (command.returncode, out, err) == run(*argv)


def test_a_command_works_in_the_callers_directory_and_environment(tmp_path, monkeypatch):
    with Command(["tableau", "list"]) as command:  # the server runs from here on, from this directory
        assert command.wait(120) == 0
    _verse(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ODERNN_DATA", str(tmp_path / "nowhere"))
    with Command(_training("run", "verse.txt", 2)) as command:  # relative paths: the caller's directory
        out, err = command.communicate(timeout=120)
    assert command.returncode == 0, err
    assert json.loads(out)["step"] == 2 and (tmp_path / "run" / "checkpoint.pt").is_file()
    with Command(["train", "--corpus", "tinyshakespeare", "--out", "other"]) as command:
        _, err = command.communicate(timeout=120)
    assert command.returncode == 2 and f"data root {tmp_path / 'nowhere'}," in err


def _started(command, metrics):
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and '"tokens_per_s"' in metrics.read_text()):
        assert command.poll() is None and time.monotonic() < deadline, command.communicate()
        time.sleep(0.02)


@pytest.mark.parametrize("fresh", [False, True])
def test_a_signal_stops_a_command_as_it_stops_the_console_command(tmp_path, fresh):
    """SIGINT: the training saves its checkpoint and exits 130; SIGKILL: the exit status is −9.
    ``fresh``: the same process runs ``python -m textlm.cli`` (a new interpreter)."""
    text = _verse(tmp_path)
    with Command(_training(tmp_path / "a", text, 10**6), fresh=fresh) as command:
        _started(command, tmp_path / "a" / "metrics.jsonl")
        running = open(f"/proc/{command.pid}/cmdline", "rb").read().split(b"\0")
        assert (running[1:3] == [b"-m", b"textlm.cli"]) == fresh, running
        command.send_signal(signal.SIGINT)
        _, err = command.communicate(timeout=120)
    assert command.returncode == 130 and "checkpoint saved" in err and "Traceback" not in err, err
    assert torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["position"]["step"] > 0
    if fresh:
        return
    with Command(_training(tmp_path / "b", text, 10**6)) as command:
        _started(command, tmp_path / "b" / "metrics.jsonl")
        command.kill()
        assert command.wait(120) == -signal.SIGKILL


def test_a_command_saves_its_run_when_its_caller_stops(tmp_path):
    """An exception in the caller (Ctrl-C that reached only it, or an error) while the command
    trains: the command is told, saves its checkpoint, and the caller's exception goes on."""
    with pytest.raises(KeyboardInterrupt):
        with Command(_training(tmp_path, _verse(tmp_path), 10**6)) as command:
            _started(command, tmp_path / "metrics.jsonl")
            raise KeyboardInterrupt
    assert command.returncode == 130
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["position"]["step"]
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert 0 < max(r["step"] for r in logged) <= saved < 1000  # saved on the stop: the periodic one is at 1000


UNGUARDED = """
import sys, time
print("top level", file=sys.stderr)  # a script without ``if __name__ == "__main__"``
from textlm._commands import Command
with Command(["tableau", "show", "heun", "--json"]) as command:
    out, err = command.communicate(timeout=120)
assert command.returncode == 0 and '"name": "heun"' in out, err
with Command(TRAINING) as command:  # killed after its stability check made a lock (tqdm's)
    while "check" not in open(METRICS).read() if __import__("os").path.exists(METRICS) else True:
        assert command.poll() is None, command.communicate()
        time.sleep(0.02)
    command.kill()
print("done", command.wait(), file=sys.stderr)
"""


@pytest.mark.slow
def test_a_command_runs_nothing_of_the_callers_script_and_leaves_nothing_behind(tmp_path):
    """Started from a script whose top level is unguarded: the script's top level runs once (a
    fork prepared by multiprocessing imports ``__main__`` again, and would run the script in each
    command), and killing a command that made a lock leaves no "leaked semaphore" warning."""
    import subprocess
    import sys
    out = tmp_path / "run"
    script = tmp_path / "script.py"
    script.write_text(f"TRAINING = {_training(out, _verse(tmp_path), 10**6) + ['--check-at', '0']!r}\n"
                      f"METRICS = {str(out / 'metrics.jsonl')!r}\n" + UNGUARDED)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("top level") == 1 and f"done {-signal.SIGKILL}" in done.stderr, done.stderr
    assert "leaked" not in done.stderr and "Traceback" not in done.stderr, done.stderr
