"""push: after a generation is evaluated, the main process puts it on the Hugging Face Hub (``hub.repo_id``).

Only with ``hub.repo_id`` set. The push never stops the chain: where the Hub cannot be reached or
refuses (network errors, 5xx and 429 after the client's own retries, any HTTP error), or the machine
is offline (``HF_HUB_OFFLINE=1``), the stage raises :class:`~chain_of_diffusion.stages.base.StagePending`:
``gen_XX/push/`` is not made, ``state.json`` lists the generation under ``"pending"`` with one line
saying why, and the chain goes on. The next push stage pushes the pending generations first (oldest
first), so does the next start of the chain, and ``python scripts/push.py RUN_DIR`` pushes them once the
chain is over. ``gen_XX/push/push.json`` records the commit of a generation that is on the Hub.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from chain_of_diffusion import hub
from chain_of_diffusion.config import ChainConfig
from chain_of_diffusion.runs import RunDir, atomic_write_json
from chain_of_diffusion.stages.base import StageContext, StagePending, clear_pending, mark_pending

RECORD = "push.json"


def push_into(run: RunDir, generation: int, cfg: ChainConfig, out: Path, api=None, *,
              conflict_pending: bool = True) -> dict:
    """Push one generation and record the result in ``out/push.json``; StagePending where it cannot be done
    now: offline, the Hub failing, and (``conflict_pending``; else the LineageConflict is raised) a repo
    that holds another chain."""
    if hub.is_offline():
        raise StagePending(f"HF_HUB_OFFLINE=1: not pushed to {cfg.hub.repo_id}")
    try:
        result = _within(cfg.hub.push_timeout_s, lambda: hub.push_generation(run, generation, cfg, api or hub.make_api()))
    except hub.LineageConflict as err:
        if not conflict_pending:
            raise
        raise StagePending(str(err)) from None
    except hub.push_errors() as err:
        raise StagePending(f"not pushed to {cfg.hub.repo_id}: {hub.describe_error(err)}") from None
    atomic_write_json(out / RECORD, result)
    return result


class _Push(threading.Thread):
    """One push on a daemon thread: the chain waits for it at most ``hub.push_timeout_s``."""

    def __init__(self, work: Callable[[], dict]):
        super().__init__(daemon=True, name="hub-push")
        self.work, self.result, self.error = work, None, None

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as err:  # handed to the waiting caller, raised there
            self.error = err


_running: Optional[_Push] = None  # a push that outlived its wait; the next one waits for it first


def _within(timeout_s: float, work: Callable[[], dict]) -> dict:
    """``work()`` (a push), waited for at most ``timeout_s`` seconds; StagePending past that. The late push
    goes on in the background; pushes are idempotent, so when the next push (or scripts/push.py) finds it
    on the Hub it records it without a new commit."""
    global _running
    started = time.monotonic()
    if _running is not None:
        _running.join(timeout_s)
        if _running.is_alive():
            raise StagePending(f"the previous push is still running after {timeout_s:g} s (hub.push_timeout_s)")
        _running = None
    push = _Push(work)
    push.start()
    push.join(max(0.0, timeout_s - (time.monotonic() - started)))
    if push.is_alive():
        _running = push
        raise StagePending(f"the push took longer than hub.push_timeout_s={timeout_s:g} s; it goes on in the "
                           "background and is recorded by the next push (or scripts/push.py)")
    if push.error is not None:
        raise push.error
    return push.result


class PushStage:
    name, folder = "push", "push"
    when = "per_generation"
    every_process = False  # the main process pushes; the others wait at the stage's barrier

    @staticmethod
    def enabled(cfg: ChainConfig) -> bool:
        return cfg.hub.repo_id is not None

    def on_start(self, ctx: StageContext) -> Optional[str]:
        """Offline: one line saying the pushes wait. Online, with generations left to push: a repo whose
        card holds another chain is refused before any work (a Hub that cannot be reached is left to the
        push stages)."""
        cfg, run = ctx.cfg, ctx.run
        if hub.is_offline():
            return (f"HF_HUB_OFFLINE=1: the pushes to {cfg.hub.repo_id} are left pending; "
                    f"push them later with: python scripts/push.py {run.root}")
        if all(run.is_done(g, self.folder) for g in range(cfg.generations)):
            return None
        try:
            _, remote = hub.remote_chain(hub.make_api(), cfg.hub.repo_id)
        except hub.push_errors():
            return None
        hub.check_lineage(cfg, run, remote)
        return None

    def run(self, ctx: StageContext, generation: Optional[int], out: Path) -> dict:
        return push_into(ctx.run, generation, ctx.cfg, out)


def push_pending(run: RunDir, cfg: ChainConfig, say: Callable[[str], None] = print) -> tuple[list[int], list[int]]:
    """Push every evaluated generation of a run whose push is not done, oldest first, committing each push
    folder as the chain would (``scripts/push.py``; the caller holds the run's lock). Stops at the first
    that stays pending. Returns (pushed, still pending) generations; a repo that holds another chain raises
    hub.LineageConflict (a ConfigError)."""
    state = run.load_state()
    todo = [g for g in range(cfg.generations)
            if run.is_done(g, "evaluation") and not run.is_done(g, PushStage.folder)]
    api = None if hub.is_offline() else hub.make_api()
    pushed: list[int] = []
    for i, g in enumerate(todo):
        tmp = run.fresh_tmp(g, PushStage.folder)
        try:
            result = push_into(run, g, cfg, tmp, api, conflict_pending=False)
        except hub.LineageConflict:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except StagePending as pending:
            shutil.rmtree(tmp, ignore_errors=True)
            for h in todo[i:]:
                mark_pending(state, h, PushStage.name, str(pending) if h == g else f"waits for generation {g}")
            run.save_state(state)
            say(f"gen {g}: pending: {pending}")
            return pushed, todo[i:]
        clear_pending(state, g, PushStage.name)
        run.commit_stage(state, g, PushStage.folder, tmp, name=PushStage.name)
        pushed.append(g)
        how = "new commit" if result["new_commit"] else "already there, no new commit"
        say(f"gen {g}: pushed to {result['repo_id']} at {result['commit'][:12]}"
            + (f", branch {result['branch']}" if result["branch"] else "") + f" ({how})")
    return pushed, []
