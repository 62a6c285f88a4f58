"""Soak test of resumable training (not run in CI): interrupt a short run many times, compare.

    nice -n 10 python experiments/soak.py --interruptions 20 --steps 200 --every 10 \
        --out experiments/results/soak.json

1. Trains a tiny synthetic config once without interruption (the reference).
2. Starts the same command in a second workdir and interrupts it `--interruptions` times at
   random moments, with SIGKILL or SIGTERM (chosen at random), restarting it after each. A
   moment is a random time in the start-up (15% of attempts) or within a random training step,
   read from the progress bar and drawn so that each attempt advances about 1/(interruptions
   left) of the remaining steps. Every other SIGKILL is aimed at a checkpoint save in progress
   (0-50 ms after orbax's temporary step directory appears): the case that could leave a
   partial newest checkpoint.
3. Lets the last attempt finish and compares the final parameters and batch statistics with the
   reference: bitwise, and the largest absolute difference.

Writes a JSON record (every attempt: signal, delay, whether a save was in progress, exit code,
the step it resumed from, checkpoints set aside) and exits 1 when the parameters differ.

`--target save` (the save-window soak): every interruption is a SIGKILL timed to land inside a
checkpoint write. Each attempt picks a save 1-2 intervals past the newest complete checkpoint,
waits for orbax's temporary directory of that step to appear and kills 0-`--window` seconds
later; the kill counts as inside the write when afterwards the step's temporary directory is
there and its final directory is not. The next attempt must remove the unfinished save, resume
from the newest complete step (the one before the killed save: at most one interval lost) and,
at the end, match the uninterrupted run bitwise with the same final metrics line.

    nice -n 10 python experiments/soak.py --target save --interruptions 30 --steps 90 \
        --every 3 --out experiments/results/soak_save.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from soak_process import (
    REMOVED,
    REPO,
    TMP_MARK,
    Output,
    command,
    compare,
    environment,
    final_line,
    output_completed,
    resume_facts,
    save_started_since,
    start_training,
    steps_on_disk,
    wait_until,
)

STARTUP_SHARE = 0.15  # attempts killed at a random moment of the start-up (restore, compile)


def run_reference(workdir: str, args, env: dict) -> dict:
    """Trains uninterrupted; times the steps and a warm start-up."""
    start = time.time()
    process = start_training(workdir, args, env)
    reader, first = Output(process), None
    while process.poll() is None:
        if first is None and steps_on_disk(workdir):
            first = time.time() - start
        time.sleep(0.05)
    total = time.time() - start
    output = reader.join()
    if process.returncode != 0:
        raise SystemExit(f"reference run failed (exit {process.returncode}):\n{output[-3000:]}")
    step_s = (total - first) / max(args.steps - args.every, 1)
    # The first run compiled everything; time a warm start (cache hit, restore, final
    # evaluation) by rerunning the finished run, for the delays of the restarts.
    warm = time.time()
    subprocess.run(command(workdir, args), env=env, cwd=REPO, capture_output=True, check=True)
    return dict(
        seconds=round(total, 1),
        step_s=round(step_s, 3),
        startup_s=round(time.time() - warm, 1),
        final_line=final_line(output),
    )


def interrupt_once(
    workdir: str, args, env: dict, rng: random.Random, left: int, timing: dict, aim_at_save: bool
) -> dict:
    """Starts the command, interrupts it at a random moment; returns the attempt record.

    The moment: with probability STARTUP_SHARE a random time within the start-up; otherwise a
    random time within a random target step, drawn so that the attempt advances about
    1/(interruptions left) of the remaining steps; `aim_at_save` (SIGKILL only) then waits for
    the next save to begin and kills 0-50 ms into it.
    """
    done = (steps_on_disk(workdir) or [0])[-1]
    kill = signal.SIGKILL if rng.random() < 0.5 else signal.SIGTERM
    in_startup = rng.random() < STARTUP_SHARE
    target = done + rng.randint(1, max(1, 2 * (args.steps - done) // (left + 1)))
    start = time.time()
    process = start_training(workdir, args, env)
    output = Output(process)
    if in_startup:
        wait_until(process, lambda: time.time() - start > rng.uniform(0, timing["startup_s"]))
    else:
        wait_until(process, lambda: output.step >= target)
        time.sleep(rng.uniform(0, timing["step_s"]))
    aimed = kill == signal.SIGKILL and aim_at_save and not in_startup
    if aimed:
        wait_until(process, lambda: save_started_since(workdir, start))
        time.sleep(rng.uniform(0, 0.05))
    record = dict(
        signal=kill.name,
        moment="start-up" if in_startup else f"step {output.step}",
        delay_s=round(time.time() - start, 2),
        aimed_at_save=aimed,
        save_in_progress=save_started_since(workdir, start),
        steps_before=steps_on_disk(workdir),
    )
    if process.poll() is None:
        process.send_signal(kill)
    process.wait()
    text = output.join()
    record.update(
        returncode=process.returncode,
        interrupted=not output_completed(text),
        **resume_facts(text),
        steps_after=steps_on_disk(workdir),
    )
    return record


def interrupt_in_save(workdir: str, args, env: dict, rng: random.Random) -> dict:
    """Starts the command and SIGKILLs it `uniform(0, args.window)` s after the save of a step
    1-2 intervals past the newest complete checkpoint begins; returns the attempt record."""
    done = (steps_on_disk(workdir) or [0])[-1]
    target = done + args.every * rng.randint(1, 2)
    target = min(target - target % args.every, args.steps - args.every)
    start = time.time()
    process = start_training(workdir, args, env)
    output = Output(process)
    directory = os.path.join(workdir, "checkpoints")
    # This attempt's save of `target`: when the previous kill left one, only a temporary
    # directory that appears after the trainer logged its removal.
    pattern = os.path.join(directory, f"{target}{TMP_MARK}*")
    stale = bool(glob.glob(pattern))
    this_save = lambda: (not stale or REMOVED.search(output.text)) and glob.glob(pattern)  # noqa

    wait_until(process, this_save)
    time.sleep(rng.uniform(0, args.window))
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()
    text = output.join()
    in_write = bool(this_save()) and target not in steps_on_disk(workdir)
    return dict(
        signal="SIGKILL",
        moment=f"save of step {target}",
        target_step=target,
        newest_complete_before=done,
        delay_s=round(time.time() - start, 2),
        inside_write=in_write,
        save_in_progress=in_write,
        returncode=process.returncode,
        interrupted=not output_completed(text),
        **resume_facts(text),
        removed_unfinished=bool(REMOVED.search(text)),
        steps_after=steps_on_disk(workdir),
    )


def check_save_soak(attempts: list, every: int) -> dict:
    """Every restart resumed from the newest complete step (the killed save's step minus one
    interval at most lost) and removed the unfinished save it found."""
    problems = []
    for before, after in zip(attempts, attempts[1:], strict=False):
        newest = (before["steps_after"] or [None])[-1]
        if after["resumed_from"] is None and not after["inside_write"]:
            continue  # killed during its start-up, before it could say where it resumed
        if after["resumed_from"] != newest:
            problems.append(f"resumed from {after['resumed_from']}, newest complete {newest}")
        if before["inside_write"] and before["target_step"] - (newest or 0) > every:
            problems.append(f"kill at save {before['target_step']} lost more than one interval")
        if before["inside_write"] and not after["removed_unfinished"]:
            problems.append(f"the unfinished save of {before['target_step']} was not removed")
    return dict(
        kills_inside_write=sum(a["inside_write"] for a in attempts),
        kills=len(attempts),
        problems=problems,
    )


def summarise(attempts: list) -> dict:
    """Counts per signal, SIGKILLs that hit a save in progress, checkpoints set aside."""
    kills = [a for a in attempts if a["interrupted"] and a["signal"] == "SIGKILL"]
    return dict(
        sigkill=len(kills),
        sigterm=sum(a["interrupted"] and a["signal"] == "SIGTERM" for a in attempts),
        sigkill_during_save=sum(a["save_in_progress"] for a in kills),
        resumed=sum(a["resumed_from"] is not None for a in attempts),
        checkpoints_set_aside=sum(len(a["set_aside"]) for a in attempts),
        attempts_with_errors=sum(bool(a["errors"]) for a in attempts),
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interruptions", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=10, help="checkpoint interval (steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--target",
        choices=("random", "save"),
        default="random",
        help="'save': every kill lands inside a checkpoint write",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=0.15,
        help="--target save: kill 0..window s after the save begins",
    )
    parser.add_argument("--workdir", default="/tmp/dnl_jax_soak", help="deleted and re-created")
    parser.add_argument(
        "--cache",
        default="/tmp/dnl_jax_soak_cache",
        help="persistent compilation cache (kept between soaks)",
    )
    parser.add_argument("--out", default=os.path.join(REPO, "experiments/results/soak.json"))
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    rng = random.Random(args.seed)
    shutil.rmtree(args.workdir, ignore_errors=True)
    env = environment(args.cache)
    reference_dir, soak_dir = (os.path.join(args.workdir, name) for name in ("reference", "soak"))
    began = time.time()
    timing = run_reference(reference_dir, args, env)
    print(f"reference: {timing}", flush=True)
    attempts = run_attempts(soak_dir, args, env, rng, timing)
    final = subprocess.run(
        command(soak_dir, args),
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # the logs too (resume facts)
    result = soak_record(args, timing, attempts, final, reference_dir, soak_dir)
    result["seconds"], result["load_average"] = round(time.time() - began, 1), os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as file:
        json.dump(result, file, indent=2)
    shown = ("interruptions", "summary", "final_line", "comparison", "set_aside_dirs", "seconds")
    print(json.dumps({k: result[k] for k in shown}, indent=2))
    return 0 if passed(result, args) else 1


def soak_record(args, timing: dict, attempts: list, final, reference_dir: str, soak_dir: str):
    """The JSON record: the reference, every attempt, the final run and the comparison."""
    unrestorable = os.path.join(soak_dir, "checkpoints-unrestorable")
    last = dict(  # the final run, as one more attempt for the save-window check
        resumed_from=resume_facts(final.stdout)["resumed_from"],
        inside_write=False,
        target_step=None,
        removed_unfinished=bool(REMOVED.search(final.stdout)),
        steps_after=[],
    )
    return dict(
        command=" ".join(command("WORKDIR", args)),
        args=vars(args),
        reference=timing,
        interruptions=sum(a["interrupted"] for a in attempts),
        summary=summarise(attempts),
        attempts=attempts,
        final_returncode=final.returncode,
        final_line=final_line(final.stdout),
        set_aside_dirs=sorted(os.listdir(unrestorable)) if os.path.isdir(unrestorable) else [],
        comparison=compare(reference_dir, soak_dir, args.steps) if final.returncode == 0 else None,
        final_line_equal=final_line(final.stdout) == timing["final_line"],
        save_window=check_save_soak([*attempts, last], args.every)
        if args.target == "save"
        else None,
    )


def passed(result: dict, args) -> bool:
    """Bitwise-equal parameters and the same final line; every interruption made (random), or
    every save-window kill inside a write and no problem at the restarts (save)."""
    ok = (result["comparison"] or {}).get("bitwise_equal", False) and result["final_line_equal"]
    if args.target == "save":
        window = result["save_window"]
        return ok and not window["problems"] and window["kills_inside_write"] >= args.interruptions
    return ok and result["interruptions"] == args.interruptions


def run_attempts(soak_dir: str, args, env: dict, rng: random.Random, timing: dict) -> list:
    """The interrupted attempts: random moments, or (--target save) until `interruptions` kills
    landed inside a checkpoint write (at most 3x as many attempts)."""
    attempts, kills = [], 0
    if args.target == "save":
        while (
            sum(a["inside_write"] for a in attempts) < args.interruptions
            and len(attempts) < 3 * args.interruptions
            and (steps_on_disk(soak_dir) or [0])[-1] < args.steps - 2 * args.every
        ):
            attempts.append(interrupt_in_save(soak_dir, args, env, rng))
            print(f"attempt {len(attempts)}: {attempts[-1]}", flush=True)
        return attempts
    while sum(a["interrupted"] for a in attempts) < args.interruptions:
        left = args.interruptions - sum(a["interrupted"] for a in attempts)
        record = interrupt_once(soak_dir, args, env, rng, left, timing, aim_at_save=kills % 2 == 1)
        kills += record["signal"] == "SIGKILL"
        attempts.append(record)
        print(f"attempt {len(attempts)}: {record}", flush=True)
        if not record["interrupted"]:
            break  # the run completed before the signal: no more interruptions possible
    return attempts


if __name__ == "__main__":
    sys.exit(main())
