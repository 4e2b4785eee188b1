"""The orchestrator: loops over generations, runs each stage once, skips what is finished.

It never touches tensors: stages exchange image sets and checkpoints through the run directory
(see :mod:`runs`), which is what makes a killed chain resumable by re-running the same command.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from chain_of_diffusion.config import ChainConfig, diff_keys, fingerprint_dict, to_yaml
from chain_of_diffusion.launch import (
    check_launch,
    check_same_everywhere,
    check_shared_run_dir,
    env_info,
    process_group_kwargs,
)
from chain_of_diffusion.runs import (
    RunDir,
    RunDirError,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    read_json,
)

log = logging.getLogger("chain_of_diffusion")



@dataclass
class ChainResult:
    output_dir: Path
    metrics: list[dict] = field(default_factory=list)
    ran_stages: list[str] = field(default_factory=list)


def planned_stages(cfg: ChainConfig, run: Optional[RunDir] = None) -> list[tuple[str, bool]]:
    """Every stage of the chain in order, with whether it is already finished on disk."""
    from chain_of_diffusion.stages import REGISTRY

    return [(_label(stage, g), bool(run and run.is_done(g, stage.folder))) for stage, g in _schedule(cfg, REGISTRY)]


def _schedule(cfg: ChainConfig, registry) -> list[tuple]:
    """(stage, generation) in the order they run; generation None for the once-per-chain stages."""
    from chain_of_diffusion.stages.base import enabled

    registry = [s for s in registry if enabled(s, cfg)]
    before = [(s, None) for s in registry if s.when == "before"]
    per_generation = [(s, g) for g in range(cfg.generations) for s in registry if s.when == "per_generation"]
    return before + per_generation + [(s, None) for s in registry if s.when == "after"]


def _label(stage, generation: Optional[int]) -> str:
    return stage.name if generation is None else f"gen {generation} {stage.name}"


def _any_stage_finished(run: RunDir) -> bool:
    """Whether any stage's folder was committed in the run directory (under any config)."""
    from chain_of_diffusion.stages import REGISTRY

    if any((run.root / s.folder).exists() for s in REGISTRY if s.when != "per_generation"):
        return True
    per_generation = [s.folder for s in REGISTRY if s.when == "per_generation"]
    return any((gen / folder).exists() for gen in run.root.glob("gen_*") for folder in per_generation)


def _check_existing(run: RunDir, cfg: ChainConfig, say=None) -> None:
    """Refuse to mix two different configs in one run directory. Where no stage has finished (a
    first try stopped by bad input), the new config replaces the old, said in one line by ``say``."""
    saved = read_json(run.root / "fingerprint.json")
    if saved is None:
        return
    saved.pop("hub", None)  # runs made before hub left the fingerprint (config.fingerprint_dict)
    new = json.loads(json.dumps(fingerprint_dict(cfg)))
    # a key added to the package after the run was made counts as its default, so upgrading
    # the package does not strand runs made before
    defaults = json.loads(json.dumps(fingerprint_dict(ChainConfig())))
    _auto_split_as_saved(run, saved, new)
    diffs = sorted(diff_keys(_with_defaults(saved, defaults), new))
    if diffs and say is not None and not _any_stage_finished(run):
        say(f"{run.root}: no stage finished: the new config replaces the old (changed: {', '.join(diffs[:5])})")
        return
    if diffs:
        raise RunDirError(
            f"{run.root}: holds a run with a different config (changed: {', '.join(diffs[:5])}); "
            "use another output_dir or restore those values"
        )


def _auto_split_as_saved(run: RunDir, saved: dict, new: dict) -> None:
    """A run made when data.num_heldout/num_train were numbers (the defaults were 500 before ``auto``)
    is the same run under ``auto`` where auto splits its source as it was split: ``saved`` then says
    ``auto`` too."""
    from chain_of_diffusion.data.split import AUTO, split_sizes

    summary = read_json(run.real / "summary.json")
    old, now = saved.get("data", {}), new["data"]
    keys = [k for k in ("num_heldout", "num_train") if now[k] == AUTO and old.get(k, AUTO) != AUTO]
    if not keys or not summary:
        return
    try:
        sizes = split_sizes(summary["num_images"], now["num_heldout"], now["num_train"])
    except (KeyError, ValueError):
        return
    if sizes[:2] == (summary.get("heldout"), summary.get("train")):
        old.update(dict.fromkeys(keys, AUTO))


def _check_generations(run: RunDir, cfg: ChainConfig) -> None:
    """Refuse to change ``generations`` once it has shaped finished work.

    ``generations`` is left out of the fingerprint so a finished chain can be extended, but the
    ``linear_decay`` real-fraction schedule spreads its decay over ``generations``, and the fresh
    pool's offsets follow that schedule: with another total, the generations already mixed would
    not be the ones the new schedule describes.
    """
    from omegaconf import OmegaConf

    if not run.config_path.is_file():
        return
    before = OmegaConf.load(run.config_path).get("generations")
    if before is None or before == cfg.generations:
        return
    depends = cfg.mix.real_fraction_schedule == "linear_decay" and cfg.mix.real_fraction > 0
    mixed = [g for g in range(1, before) if run.is_done(g, "train_set")]
    if depends and mixed:
        raise RunDirError(
            f"{run.root}: mix.real_fraction_schedule=linear_decay spreads the real fraction over generations={before}, "
            f"and {_generations_text(mixed)} mixed with it; generations={cfg.generations} would change "
            "what they were mixed with (use another output_dir, or a schedule that does not depend on the total: constant, "
            "exponential_decay)"
        )


def _generations_text(gens: list[int]) -> str:
    return f"generation {gens[0]} was" if len(gens) == 1 else f"generations {gens[0]}-{gens[-1]} were"


def _with_defaults(saved: dict, defaults: dict) -> dict:
    out = dict(saved)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _with_defaults(out[key], value)
    return out


def metrics_table(rows: list[dict], keys: Optional[list[str]] = None) -> str:
    """A small fixed-width table of metrics per generation for the terminal."""
    from chain_of_diffusion.metrics.report import BOOKKEEPING, numeric_metrics

    if not rows:
        return "(no generation finished yet)"
    keys = keys or [k for k in numeric_metrics(rows) if k not in BOOKKEEPING]
    header = "gen  " + "  ".join(f"{k:>14s}" for k in keys)
    lines = [header]
    for row in rows:
        cells = []
        for k in keys:
            v = row.get(k)
            cells.append(f"{v:>14.4g}" if isinstance(v, (int, float)) else f"{'-':>14s}")
        lines.append(f"{row['generation']:>3d}  " + "  ".join(cells))
    return "\n".join(lines)


def collect_metrics(run: RunDir, generations: int) -> list[dict]:
    rows = []
    for g in range(generations):
        m = read_json(run.stage_path(g, "evaluation") / "metrics.json")
        if m is not None:
            rows.append(m)
    return rows


def write_derived(run: RunDir, cfg: ChainConfig) -> list[dict]:
    """Rebuild the files derived from finished stages: gen_XX/metrics.json, grids, metrics.jsonl,
    report.html. Idempotent, so a kill between a stage and this step is repaired on resume."""
    from chain_of_diffusion.metrics.report import write_report

    rows = collect_metrics(run, cfg.generations)
    reference = read_json(run.reference / "metrics.json", {})
    for row in rows:
        g = row["generation"]
        evaluation = run.stage_path(g, "evaluation")
        atomic_write_json(run.gen(g) / "metrics.json", row)
        if (evaluation / "grid.png").exists():
            shutil.copyfile(evaluation / "grid.png", run.gen(g) / "grid.png")
    lines = [json.dumps({**row, **{k: v for k, v in reference.items() if k.endswith("_reference")}},
                        sort_keys=True) for row in rows]
    atomic_write_text(run.metrics_path, "".join(line + "\n" for line in lines))
    write_report(run.root)
    return rows


def _log_to_tracker(run: RunDir, cfg: ChainConfig, rows: list[dict]) -> None:
    """Give metrics.tracker the generations whose evaluate stage committed and that it has not had."""
    if cfg.metrics.tracker == "none":
        return
    from chain_of_diffusion.metrics.tracking import log_pending

    grids = {row["generation"]: run.stage_path(row["generation"], "evaluation") / "grid.png" for row in rows}
    log_pending(cfg.metrics.tracker, run.root, rows, grids)


def run_chain(cfg: ChainConfig, accelerator=None, *, echo=print) -> ChainResult:
    """Run (or resume) the chain described by ``cfg``. Every process calls this."""
    from accelerate import Accelerator

    from chain_of_diffusion.stages import REGISTRY, StageContext
    from chain_of_diffusion.stages.base import check, enabled, on_start

    accelerator = accelerator or Accelerator(mixed_precision=cfg.train.mixed_precision,
                                             kwargs_handlers=[process_group_kwargs(cfg)])
    check_launch(accelerator, cfg)
    check_same_everywhere(accelerator, cfg)
    main = accelerator.is_main_process
    run = RunDir(cfg.output_dir)
    ctx = StageContext(cfg, run, accelerator)
    say = echo if main else (lambda *a, **k: None)
    if not check_output_dir(run.root):
        return _show_read_only(run, cfg, say)
    check_shared_run_dir(accelerator, run.root)
    if main:
        run.acquire_lock()
    try:
        if main:
            _check_existing(run, cfg, say)
            _check_generations(run, cfg)
            atomic_write_text(run.config_path, to_yaml(cfg))
            atomic_write_json(run.root / "fingerprint.json", fingerprint_dict(cfg))
            atomic_write_json(run.root / "env.json", env_info(accelerator))
            for stage in REGISTRY:  # e.g. push: a repo that holds another chain is refused here, before any work
                if enabled(stage, cfg) and (line := on_start(stage, ctx)):
                    say(line)
        accelerator.wait_for_everyone()
        plan = planned_stages(cfg, run)
        if all(done for _, done in plan):
            rows = write_derived(run, cfg) if main else []
            if main:
                _log_to_tracker(run, cfg, rows)
            say(f"nothing to do: all {cfg.generations} generations in {run.root} are finished")
            say(metrics_table(rows))
            return ChainResult(run.root, rows, [])
        done_count = sum(done for _, done in plan)
        if done_count:
            say(f"resuming {run.root}: {done_count} of {len(plan)} stages already finished")
        state = run.load_state()
        ran: list[str] = []
        for stage, g in _schedule(cfg, REGISTRY):
            if not run.is_done(g, stage.folder):
                ran += _run_with_pending(ctx, stage, g, state, say)
            check(stage, ctx)
            # the derived files (gen_XX/metrics.json, grid.png, report) follow the evaluate stage: the
            # stages after it (push) read them
            if main and stage.name == "evaluate":
                _log_to_tracker(run, cfg, write_derived(run, cfg))
        rows = write_derived(run, cfg) if main else []
        if main:
            state["finished"] = True
            run.save_state(state)
        say(f"\nrun directory: {run.root.resolve()}")
        say(f"report:        {(run.root / 'report.html').resolve()}")
        say(metrics_table(rows))
        return ChainResult(run.root, rows, ran)
    finally:
        if main:
            run.release_lock()


def _show_read_only(run: RunDir, cfg: ChainConfig, say) -> ChainResult:
    """A run directory that cannot be written: its table where the chain is finished, else the
    one-line refusal. Nothing is written (no lock, no log, no report)."""
    _check_existing(run, cfg)
    plan = planned_stages(cfg, run)
    left = sum(not done for _, done in plan)
    if left:
        raise RunDirError(
            f"output_dir {run.root}: no permission to write in it, and {left} of {len(plan)} stages are "
            "left to run; make it writable or choose another output_dir"
        )
    rows = collect_metrics(run, cfg.generations)
    say(f"nothing to do: all {cfg.generations} generations in {run.root} are finished (read-only: nothing written)")
    say(metrics_table(rows))
    return ChainResult(run.root, rows, [])


def _run_with_pending(ctx, stage, generation: Optional[int], state: dict, say) -> list[str]:
    """Run (stage, generation), first trying again, oldest first, the earlier generations this stage left
    pending (stages.base.StagePending). While one stays pending the later ones are recorded pending without
    being tried: one failed attempt per stage and generation, not one per pending generation. Every process
    decides from the folders alone, so all take the same path. Returns the labels of the stages run."""
    from chain_of_diffusion.stages.base import mark_pending

    run = ctx.run
    earlier = [h for h in range(generation) if not run.is_done(h, stage.folder)] if generation is not None else []
    todo = [*earlier, generation]
    for i, g in enumerate(todo):
        _run_stage(ctx, stage, g, state, say)
        if not run.is_done(g, stage.folder) and g is not None and g != generation:
            if ctx.accelerator.is_main_process:
                for later in todo[i + 1:]:
                    mark_pending(state, later, stage.name, f"waits for generation {g}")
                run.save_state(state)
                say(f"[gen {generation}/{ctx.cfg.generations - 1}] {stage.name} pending: waits for generation {g}")
            return [_label(stage, h) for h in todo[: i + 1]]
    return [_label(stage, h) for h in todo]


def _run_stage(ctx, stage, generation: Optional[int], state: dict, say) -> None:
    """Run one stage into a fresh temporary folder and commit it (every process calls this). A stage that
    raises StagePending (main process) leaves no folder: it is recorded pending and the chain goes on."""
    from chain_of_diffusion.stages.base import StagePending, after_commit, clear_pending, mark_pending

    run, accelerator, main = ctx.run, ctx.accelerator, ctx.accelerator.is_main_process
    cfg = ctx.cfg
    where = f"[gen {generation}/{cfg.generations - 1}] {stage.name}" if generation is not None else f"[{stage.name}]"
    started = time.time()
    say(f"{where} ...")
    if main:
        run.fresh_tmp(generation, stage.folder)
    accelerator.wait_for_everyone()
    tmp = run.tmp_stage_path(generation, stage.folder)
    work_started = time.perf_counter()
    try:
        summary = stage.run(ctx, generation, tmp) if main or stage.every_process else None
    except StagePending as pending:
        shutil.rmtree(tmp, ignore_errors=True)
        mark_pending(state, generation, stage.name, str(pending))
        run.save_state(state)
        log.info("%s pending: %s", where, pending)
        say(f"{where} pending: {pending}")
        accelerator.wait_for_everyone()
        return
    if main:
        if generation is not None:
            clear_pending(state, generation, stage.name)
        run.commit_stage(state, generation, stage.folder, tmp, name=stage.name)
        seconds = time.time() - started
        if generation is not None:
            state.setdefault("seconds", {}).setdefault(str(generation), {})[stage.name] = round(seconds, 2)
            run.save_state(state)
        after_commit(stage, ctx, generation)
        log.info("%s done in %.1fs: %s", where, seconds, _brief(summary))
        if isinstance(summary, dict) and summary.get("note"):  # what the user should know (data read, auto sizes)
            for line in summary["note"].splitlines():
                say(f"{where} {line}")
        if generation is not None:
            say(f"{where} done in {seconds:.0f}s")
    work_ended = time.perf_counter()
    accelerator.wait_for_everyone()
    if generation is not None:
        _record_timing(ctx, generation, stage.name, work_ended - work_started, time.perf_counter() - work_ended)


def _record_timing(ctx, generation: int, stage: str, work_s: float, wait_s: float) -> None:
    """``gen_XX/timing.json``: per stage, the seconds each process worked and then waited for the others at
    the stage's end (a main-process-only stage is all wait elsewhere), and the idle share of the processes'
    time: where a launch of many processes waits. Collected with one gather; the main process writes it."""
    from accelerate.utils import gather_object

    per_process = gather_object([(ctx.accelerator.process_index, round(work_s, 3), round(wait_s, 3))])
    if not ctx.accelerator.is_main_process:
        return
    per_process = sorted(per_process)
    work, wait = [w for _, w, _ in per_process], [w for _, _, w in per_process]
    path = ctx.run.gen(generation) / "timing.json"
    timing = read_json(path, {})
    timing[stage] = {"work_s": work, "wait_s": wait, "idle_share": round(sum(wait) / max(sum(work) + sum(wait), 1e-9), 4)}
    atomic_write_json(path, timing, indent=1, sort_keys=False)


def _brief(summary) -> dict:
    """The scalars of a stage's summary, for one log line."""
    if not isinstance(summary, dict):
        return summary
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) or v is None}
