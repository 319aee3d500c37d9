"""Fork server for the chaos test: imports the trainer once, then runs each training in a forked child and SIGKILLs
it at the instant the test asks for. Started by tests/test_fault_tolerance.py; one JSON request per stdin line, one
JSON reply per stdout line.

This process never runs a torch operation, so every child starts with fresh OpenMP state (a fork after OpenMP work
can hang), and a child costs no interpreter start or torch import.

Request: {"argv": [...train flags], "log": path, "kill": null | {"after_seconds": s} | {"event": kind, "nth": n, "delay": s}}
The child reports these moments (the fault injection lives here, patched into the child only):
  write      a checkpoint or best-model folder is written but neither synced nor marked COMPLETE nor renamed in
  set-aside  the old folder was renamed to <name>.previous and the new one is not in place yet
  commit     a new checkpoint or best model was just renamed into place
  remove     a folder was just renamed to .trash-* (pruning, dropping a previous version) and is about to be deleted
At each one the child waits for the test's answer: with delay 0 it is killed right there (the window is held open as
long as needed, whatever the machine's load); with a delay it goes on and is killed that many seconds later.
Reply: {"killed": bool, "returncode": int, "events": [[kind, name], ...], "seconds": the child's lifetime}
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import emotion.synthetic  # noqa: E402,F401  (after the path: this checkout's package; imported here, not per child)
import emotion.training  # noqa: E402,F401
from emotion import checkpoint  # noqa: E402
from emotion.cli import train_main  # noqa: E402


def event_kind(source: str, target: str) -> str | None:
    source, target = Path(source).name, Path(target).name
    if target.startswith(".trash-"):
        return "remove"
    if target.endswith(checkpoint.PREVIOUS):
        return "set-aside"
    if source.startswith(".tmp-"):
        return "commit"
    return None  # an atomic JSON write, metrics.jsonl, putting a previous version back


def run_child(argv: list[str], events_out: int, answers_in: int) -> int:
    """In the forked child: report each moment, wait for the answer, then go on."""
    def report(kind: str, name: str) -> None:
        os.write(events_out, f"{kind} {name}\n".encode())
        os.read(answers_in, 1)

    sync_tree, replace = checkpoint.sync_tree, os.replace

    def reported_sync_tree(path):
        report("write", Path(path).name)
        sync_tree(path)

    def reported_replace(source, target, *args, **kwargs):
        replace(source, target, *args, **kwargs)
        kind = event_kind(source, target)
        if kind:
            report(kind, Path(target).name)

    checkpoint.sync_tree, os.replace = reported_sync_tree, reported_replace
    try:
        return train_main(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1


def serve(request: dict) -> dict:
    events_in, events_out = os.pipe()
    answers_in, answers_out = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        os.close(events_in)
        os.close(answers_out)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
        code = run_child(request["argv"], events_out, answers_in)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    os.close(events_out)
    os.close(answers_in)
    kill = request.get("kill") or {}
    started = time.monotonic()
    kill_at = started + kill["after_seconds"] if "after_seconds" in kill else None
    events, seen, killed, pending = [], 0, False, b""
    while not killed:
        timeout = None if kill_at is None else max(0.0, kill_at - time.monotonic())
        if not select.select([events_in], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
            killed = True
            break
        chunk = os.read(events_in, 4096)
        if not chunk:
            break  # the child ended by itself
        pending += chunk
        while b"\n" in pending and not killed:
            line, pending = pending.split(b"\n", 1)
            kind, name = line.decode().split(" ", 1)
            events.append([kind, name])
            if kind == kill.get("event") and kill_at is None:
                seen += 1
                if seen == kill["nth"]:
                    if kill["delay"] == 0:
                        os.kill(pid, signal.SIGKILL)
                        killed = True
                        break
                    kill_at = time.monotonic() + kill["delay"]
            os.write(answers_out, b"g")
    _, status = os.waitpid(pid, 0)
    os.close(events_in)
    os.close(answers_out)
    return {"killed": killed, "returncode": os.waitstatus_to_exitcode(status), "events": events,
            "seconds": time.monotonic() - started}


def main() -> None:
    for line in sys.stdin:
        print(json.dumps(serve(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
