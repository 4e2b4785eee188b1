"""The Hub side of a chain: a model card that carries the chain's lineage, and one commit per generation.

:func:`push_generation` puts generation g of a run into the model repo ``hub.repo_id`` with
``HfApi.create_commit`` (whose commit POST is never retried by the client, so a lost answer cannot
become two commits): the generation's model folder, grid, ``metrics.json`` and the resolved
``config.yaml`` under ``gen_XX/``, the same model files at the repo root when g is the newest
generation there (so the branch ``gen-XX``, made at that commit, loads without a subfolder), the
metric curves under ``curves/`` and the card ``README.md``. It reads the remote first and sends only
files whose content differs, so pushing an unchanged generation again makes no commit.

The card's metadata holds the lineage under ``chain`` (with the chain's identity, a hash of the run's
fingerprint), which is how a push recognises a repo that holds another chain. The token is never
read here: ``huggingface_hub`` takes it from ``HF_TOKEN`` or the cached login, and errors are
reported by :func:`describe_error` (type, status and the first line of the message, never the
request).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import re
from pathlib import Path
from typing import Any, Optional

from chain_of_diffusion.config import ChainConfig, fingerprint_dict
from chain_of_diffusion.errors import ConfigError
from chain_of_diffusion.hub_files import folder_name, generation_files, model_files, revision_name, same_bytes
from chain_of_diffusion.models.continued import continued_from, parse_ref
from chain_of_diffusion.runs import RunDir, read_json

TAGS = ["text-to-image", "model-collapse", "chain-of-diffusion"]
HEADLINE_COUNT = 3  # metrics named in the commit message, the lineage table and the curves
CURVES = "curves"
# the folders of a full model at the root of a gen-XX branch (chain_of_diffusion.models.build.load_model reads them)
MODEL_PATTERNS = ["unet/*", "text_encoder/*", "tokenizer/*", "scheduler/*", "vae/*"]
_GEN_FOLDER = re.compile(r"^gen_(\d+)/")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class LineageConflict(ConfigError):
    """The repo's card holds the lineage of another chain (refused unless hub.overwrite)."""


# ---------------------------------------------------------------------------------------- environment

def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def has_token() -> bool:
    """Whether the client has a token (HF_TOKEN or the cached login); the token itself stays there."""
    from huggingface_hub import get_token

    return get_token() is not None


def push_errors() -> tuple[type[BaseException], ...]:
    """What a push that cannot reach the Hub, or that the Hub refuses, raises: the client's HTTP errors
    (4xx/5xx/429 after its own retries), its HTTP package's transport errors and OSError (connection
    errors, offline mode). Anything else is a bug and is not caught."""
    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [HfHubHTTPError, OSError, TimeoutError]
    for package in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(package).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def describe_error(err: BaseException) -> str:
    """One line about a failed request: the type, the status and the start of the message. Never the
    request (its headers carry the token); the token is also cut out of the message, should a server
    ever echo it."""
    from huggingface_hub import get_token

    status = getattr(getattr(err, "response", None), "status_code", None)
    message = (str(err).strip().splitlines() or [""])[0][:160]
    token = get_token()
    if token:
        message = message.replace(token, "***")
    return f"{type(err).__name__}" + (f" ({status})" if status else "") + (f": {message}" if message else "")


def make_api():
    from huggingface_hub import HfApi

    from chain_of_diffusion import __version__

    return HfApi(library_name="chain-of-diffusion", library_version=__version__)


# ---------------------------------------------------------------------------------------- lineage

def _changed(values: dict, defaults: dict) -> dict:
    out = {}
    for key, value in values.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            if inner := _changed(value, default):
                out[key] = inner
        elif value != default:
            out[key] = value
    return out


def chain_id(run: RunDir, cfg: ChainConfig) -> str:
    """The chain's identity: a hash of its fingerprint (the config that decides its results, seed included;
    not output_dir, generations or hub), over the values that differ from the defaults, so a key that a
    newer version of the package adds does not make the same chain another one. ``run`` is where the
    chain lives (the identity does not depend on it)."""
    changed = _changed(json.loads(json.dumps(fingerprint_dict(cfg))),
                       json.loads(json.dumps(fingerprint_dict(ChainConfig()))))
    return hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:16]


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def headline_keys(cfg: ChainConfig, rows: list[dict]) -> list[str]:
    """The first metrics of ``metrics.names`` that the rows carry, as written (fd_classifier is written
    as fd_<metrics.features>, saturation as saturation_mean)."""
    written = {"fd_classifier": f"fd_{cfg.metrics.features}", "saturation": "saturation_mean"}
    keys = [written.get(name, name) for name in cfg.metrics.names]
    present = [k for k in keys if any(_number(r.get(k)) is not None for r in rows)]
    return present[:HEADLINE_COUNT]


def _generations_text(gens: list[int]) -> str:
    if len(gens) == 1:
        return f"generation {gens[0]}"
    if gens == list(range(gens[0], gens[-1] + 1)):
        return f"generations {gens[0]}-{gens[-1]}"
    return "generations " + ", ".join(map(str, gens))


def trained_on(run: RunDir, generation: int, real_share: Optional[float]) -> str:
    """real / synthetic from generation g-1 / a mix, from the provenance of the generation's training set."""
    from chain_of_diffusion.data.imageset import METADATA, read_metadata

    folder = run.stage_path(generation, "train_set")
    synthetic: set[int] = set()
    real = 0
    for record in read_metadata(folder) if (folder / METADATA).is_file() else []:
        if record.get("source") == "synthetic" and isinstance(record.get("generation"), int):
            synthetic.add(record["generation"])
        else:
            real += 1
    if not synthetic:
        return "real"
    text = f"synthetic from {_generations_text(sorted(synthetic))}"
    if real:
        share = f"{real_share:.0%} " if _number(real_share) is not None else ""
        return f"mix: {share}real + {text}"
    return text


def _metrics_row(run: RunDir, generation: int) -> Optional[dict]:
    return read_json(run.gen(generation) / "metrics.json") or read_json(
        run.stage_path(generation, "evaluation") / "metrics.json")


def mitigations(cfg: ChainConfig) -> dict:
    s, m, sel = cfg.sample, cfg.mix, cfg.select
    return {
        "condition_drop": cfg.train.condition_drop,
        "guidance_scale": s.guidance_scale, "guidance_schedule": s.guidance_schedule, "guidance_end": s.guidance_end,
        "select_method": sel.method, "select_oversample": sel.oversample,
        "mix_policy": m.policy, "real_fraction": m.real_fraction, "real_fraction_schedule": m.real_fraction_schedule,
    }


def lineage(run: RunDir, cfg: ChainConfig, upto: int) -> list[dict]:
    """One entry per finished generation 0..upto: what it trained on, its real share and headline metrics."""
    rows = [r for g in range(upto + 1) if (r := _metrics_row(run, g)) is not None]
    keys = headline_keys(cfg, rows)
    out = []
    for row in rows:
        g = row["generation"]
        real_share = _number(row.get("real_share"))
        out.append({
            "generation": g, "trained_on": trained_on(run, g, real_share), "real_share": real_share,
            "folder": folder_name(g), "revision": revision_name(g) if cfg.hub.branch_per_generation else None,
            "metrics": {k: _number(row.get(k)) for k in keys},
        })
    return out


def _base_model(cfg: ChainConfig) -> Optional[str]:
    """model.pretrained where it is a Hub id (a local folder is not named on the Hub)."""
    pretrained = cfg.model.pretrained
    if parse_ref(pretrained):  # a generation of another chain (load_generation loads it, fused)
        return pretrained
    if not pretrained or Path(pretrained).expanduser().exists() or not _HUB_ID.match(pretrained):
        return None
    return pretrained


def base_license(base: Optional[str]) -> Optional[str]:
    """The ``license`` of the base's own model card where the base is a Hub repo that has one (a LoRA of it
    is bound by it); None where it cannot be read."""
    if not base:
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(base.split("@")[0]).data.to_dict().get("license")
    except Exception:  # no card, no access, offline: the card then names no license
        return None


def chain_metadata(run: RunDir, cfg: ChainConfig, upto: int) -> dict:
    """The ``chain`` block of the card's metadata: what a later run reads back."""
    return {
        "id": chain_id(run, cfg), "seed": cfg.seed, "generations": cfg.generations,
        "base_model": _base_model(cfg), "train_mode": cfg.train.mode, "train_init": cfg.train.init,
        "arch": None if cfg.model.pretrained else cfg.model.arch, "objective": cfg.model.objective,
        "data_source": cfg.data.source, "mitigations": mitigations(cfg), "lineage": lineage(run, cfg, upto),
        "continued_from": continued_from(cfg.model.pretrained),
    }


# ---------------------------------------------------------------------------------------- the card

def _cell(value: Any) -> str:
    return "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def _load_snippet(cfg: ChainConfig, repo_id: str, generation: int) -> str:
    where = (f'revision="{revision_name(generation)}"' if cfg.hub.branch_per_generation
             else f'subfolder="{folder_name(generation)}"')
    if cfg.train.mode == "lora" and parse_ref(cfg.model.pretrained):  # the base is another chain's generation
        return ("from chain_of_diffusion.models.pretrained import load_generation  # pip install chain-of-diffusion\n\n"
                f'model = load_generation("{repo_id}@{revision_name(generation)}")  # its base included, fused')
    if cfg.train.mode == "lora":
        base = _base_model(cfg) or "path/to/the/base/pipeline"
        return ("from diffusers import StableDiffusionPipeline\n\n"
                f'pipe = StableDiffusionPipeline.from_pretrained("{base}")\n'
                f'pipe.load_lora_weights("{repo_id}", {where}, weight_name="pytorch_lora_weights.safetensors")')
    if cfg.hub.branch_per_generation:
        return ("from huggingface_hub import snapshot_download\n"
                "from chain_of_diffusion.models.build import load_model  # pip install chain-of-diffusion\n\n"
                f'model = load_model(snapshot_download("{repo_id}", {where}, allow_patterns={MODEL_PATTERNS!r}))')
    return ("from diffusers import UNet2DConditionModel\n\n"
            f'unet = UNet2DConditionModel.from_pretrained("{repo_id}", subfolder="{folder_name(generation)}/unet")')


def curve_images(run: RunDir, cfg: ChainConfig, upto: int) -> dict[str, bytes]:
    """The headline metrics against generation, over generations 0..upto only (PNG bytes by metric), so
    a generation pushed again later carries the same pictures as its first push."""
    import tempfile

    from chain_of_diffusion.metrics.report import plot_metric_curves, read_metrics

    rows = [r for r in read_metrics(run.metrics_path) if isinstance(r.get("generation"), int) and r["generation"] <= upto]
    keys = headline_keys(cfg, rows)
    if not keys:
        return {}
    rows = [{k: v for k, v in r.items() if k == "generation" or k.removesuffix("_reference") in keys} for r in rows]
    with tempfile.TemporaryDirectory() as folder:
        images = {path.stem: path.read_bytes() for path in plot_metric_curves(rows, Path(folder))}
    return {k: images[k] for k in keys if k in images}


def card_text(run: RunDir, cfg: ChainConfig, repo_id: str, upto: int, curves: tuple | list = ()) -> str:
    """The README.md: metadata (with the ``chain`` block), the lineage table, the curves, how to load."""
    from huggingface_hub import ModelCardData

    chain = chain_metadata(run, cfg, upto)
    tags = (["lora"] if cfg.train.mode == "lora" else []) + TAGS
    data = ModelCardData(
        library_name="diffusers", tags=tags, pipeline_tag="text-to-image",
        base_model=chain["base_model"].split("@")[0] if chain["base_model"] else None,  # the Hub's field: a repo id
        license=base_license(chain["base_model"]),
        datasets=[cfg.data.path] if cfg.data.source == "hf" and cfg.data.path and _HUB_ID.match(cfg.data.path)
        else None, chain=chain,
    )
    rows = chain["lineage"]
    keys = list(rows[0]["metrics"]) if rows else []
    m = chain["mitigations"]
    base = (f"`{chain['base_model']}`" if chain["base_model"] else
            "a local pipeline" if cfg.model.pretrained else f"built from scratch (`model.arch: {cfg.model.arch}`)")
    training = (f"LoRA rank {cfg.train.lora_rank}" if cfg.train.mode == "lora" else "full") + \
        f", `train.init: {cfg.train.init}`, {cfg.train.steps} steps"
    lines = [
        f"# {repo_id.split('/')[-1]}: a chain of diffusion", "",
        "A self-consuming training chain (model collapse), made with chain-of-diffusion: generation 0 is "
        "trained on real data, each later generation on samples of the generations before it (with real data "
        "where the mix says so). Every "
        "generation is in its folder `gen_XX/` on `main`"
        + (", and at the root of its branch `gen-XX`" if cfg.hub.branch_per_generation else "")
        + "; the root of `main` holds the newest one.", "",
        f"- base: {base}; training: {training}; objective `{cfg.model.objective}`",
        *([f"- continues generation {chain['continued_from']['generation']} of the chain "
           f"`{chain['continued_from']['repo']}` (chain id `{chain['continued_from']['chain_id']}`): generation 0 "
           "here starts from that generation's model"] if chain["continued_from"] else []),
        f"- data: `{cfg.data.source}`",
        f"- mitigations: condition drop {m['condition_drop']}, guidance {m['guidance_scale']} "
        f"({m['guidance_schedule']}" + (f" to {m['guidance_end']}" if m["guidance_schedule"] != "constant" else "")
        + f"), selection `{m['select_method']}`, mix `{m['mix_policy']}` with real fraction {m['real_fraction']} "
        f"({m['real_fraction_schedule']})",
        f"- chain id `{chain['id']}`, seed {cfg.seed}; the lineage is also in this card's metadata (`chain`)", "",
        "## Lineage", "",
        "| generation | trained on | real share | " + " | ".join(keys) + (" | revision |" if keys else "revision |"),
        "|---" * (4 + len(keys)) + "|",
    ]
    for row in rows:
        cells = [str(row["generation"]), row["trained_on"], _cell(row["real_share"]),
                 *(_cell(row["metrics"].get(k)) for k in keys), f"`{row['revision'] or row['folder']}`"]
        lines.append("| " + " | ".join(cells) + " |")
    if curves:
        lines += ["", *(f"![{k} per generation]({CURVES}/{k}.png)" for k in curves)]
    newest = rows[-1]["generation"] if rows else 0
    lines += ["", "## Load a generation", "", "```python", _load_snippet(cfg, repo_id, newest), "```", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def remote_chain(api, repo_id: str, revision: Optional[str] = None) -> tuple[Optional[str], Optional[dict]]:
    """(head commit, the ``chain`` block of the repo's card); (None, None) where the repo does not exist."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        info = api.model_info(repo_id, revision=revision)
    except RepositoryNotFoundError:
        return None, None
    data = info.card_data.to_dict() if info.card_data is not None else {}
    chain = data.get("chain")
    return info.sha, chain if isinstance(chain, dict) else None


def check_lineage(cfg: ChainConfig, run: RunDir, remote: Optional[dict]) -> None:
    """Refuse a repo whose card holds another chain's lineage, unless hub.overwrite."""
    theirs = (remote or {}).get("id")
    ours = chain_id(run, cfg)
    if theirs and theirs != ours and not cfg.hub.overwrite:
        raise LineageConflict(
            f"config key 'hub.repo_id': {cfg.hub.repo_id} holds the lineage of another chain (chain id {theirs}, "
            f"this one is {ours}); push to another repo, or set hub.overwrite=true to replace its card")


# ---------------------------------------------------------------------------------------- the push

def commit_title(cfg: ChainConfig, row: Optional[dict], generation: int) -> str:
    keys = headline_keys(cfg, [row] if row else [])
    values = ", ".join(f"{k} {row[k]:.4g}" for k in keys)
    return f"gen {generation:02d}" + (f": {values}" if values else "")


def push_generation(run: RunDir, generation: int, cfg: ChainConfig, api) -> dict:
    """Put generation ``generation`` of the run into ``hub.repo_id`` (one commit; none where nothing changed)
    and, with ``hub.branch_per_generation``, point the branch gen-XX at that commit. Raises
    :class:`LineageConflict`, or the client's errors (:func:`push_errors`) where the Hub fails."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.hf_api import RepoFile

    repo_id = cfg.hub.repo_id
    api.create_repo(repo_id, private=cfg.hub.private, exist_ok=True)
    head, remote = remote_chain(api, repo_id)
    check_lineage(cfg, run, remote)
    tree = {e.path: e for e in api.list_repo_tree(repo_id, recursive=True, revision=head) if isinstance(e, RepoFile)}
    remote_gens = {int(m.group(1)) for p in tree if (m := _GEN_FOLDER.match(p))}
    newest = generation >= max(remote_gens, default=-1)
    upto = max(generation, *remote_gens) if remote_gens else generation

    local: dict[str, Path | bytes] = dict(generation_files(run, cfg, generation))
    root_files = model_files(run, generation) if newest else {}
    local.update(root_files)
    curves = curve_images(run, cfg, upto)
    local.update({f"{CURVES}/{key}.png": png for key, png in curves.items()})
    local["README.md"] = card_text(run, cfg, repo_id, upto, curves=list(curves)).encode()

    stale = _stale(tree, local, generation, newest)
    operations = [CommitOperationAdd(path, content) for path, content in sorted(local.items())
                  if not same_bytes(content, tree.get(path))]
    operations += [CommitOperationDelete(path) for path in sorted(stale)]
    row = _metrics_row(run, generation)
    committed = bool(operations)
    if committed:
        info = api.create_commit(
            repo_id, operations, commit_message=commit_title(cfg, row, generation), parent_commit=head,
            commit_description=f"Generation {generation} of chain {chain_id(run, cfg)}, trained on "
                               f"{trained_on(run, generation, _number((row or {}).get('real_share')))}.",
        )
        commit = info.oid
    else:
        commit = head
    branch = revision_name(generation) if cfg.hub.branch_per_generation else None
    if branch:
        commit = _point_branch(api, repo_id, branch, commit, moved=committed,
                               find=lambda: _commit_of_generation(api, repo_id, cfg, row, generation))
    result = {"repo_id": repo_id, "generation": generation, "commit": commit, "branch": branch,
              "new_commit": committed, "files_sent": sum(isinstance(o, CommitOperationAdd) for o in operations),
              "files_deleted": len(stale)}
    if cfg.hub.push_samples == "all":
        result["samples_repo"], result["samples_commit"] = push_sample_set(run, generation, cfg, api)
    return result


def samples_repo(cfg: ChainConfig) -> str:
    return f"{cfg.hub.repo_id}-samples"


def samples_card(cfg: ChainConfig, generations: list[int]) -> str:
    """The dataset card: one config per generation (``load_dataset(repo, "gen_03")``), each an imagefolder."""
    from huggingface_hub import DatasetCardData

    configs = [{"config_name": folder_name(g), "data_files": [{"split": "train", "path": f"{folder_name(g)}/*"}]}
               for g in generations]
    data = DatasetCardData(tags=TAGS, configs=configs)
    return (f"---\n{data.to_yaml()}\n---\n\n# Samples of the chain {cfg.hub.repo_id}\n\n"
            "Every generation's image set, one config each: `load_dataset(repo, \"gen_03\")` gives the images with "
            "their captions (`text`) and provenance (`seed`, `generation`, `source`).\n")


def push_sample_set(run: RunDir, generation: int, cfg: ChainConfig, api) -> tuple[str, Optional[str]]:
    """Put generation ``generation``'s samples (an imagefolder: images + metadata.jsonl) under ``gen_XX/`` of
    the dataset repo ``<repo_id>-samples``, one commit where anything changed; (repo, commit or None)."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.hf_api import RepoFile

    repo = samples_repo(cfg)
    api.create_repo(repo, repo_type="dataset", private=cfg.hub.private, exist_ok=True)
    tree = {e.path: e for e in api.list_repo_tree(repo, repo_type="dataset", recursive=True) if isinstance(e, RepoFile)}
    folder = run.stage_path(generation, "samples")
    local: dict[str, Path | bytes] = {f"{folder_name(generation)}/{p.name}": p for p in sorted(folder.iterdir())
                                      if p.is_file() and not p.name.startswith(".")}
    gens = sorted({int(m.group(1)) for p in [*tree, *local] if (m := _GEN_FOLDER.match(p))})
    local["README.md"] = samples_card(cfg, gens).encode()
    operations = [CommitOperationAdd(path, content) for path, content in sorted(local.items())
                  if not same_bytes(content, tree.get(path))]
    if not operations:
        return repo, None
    info = api.create_commit(repo, operations, repo_type="dataset",
                             commit_message=f"gen {generation:02d}: {len(local) - 1} files of samples")
    return repo, info.oid


def _stale(tree: dict, local: dict, generation: int, newest: bool) -> list[str]:
    """Remote files this push removes: those of gen_XX/ and curves/ that the generation no longer has, and
    (when it becomes the newest) the root copies of an older generation's model files."""
    own = (folder_name(generation) + "/", CURVES + "/")
    copies = {q.split("/", 1)[1] for q in tree if _GEN_FOLDER.match(q)} - {"grid.png", "metrics.json", "config.yaml"}
    return sorted(p for p in tree if p not in local and (
        p.startswith(own) or (newest and not _GEN_FOLDER.match(p) and p in copies)))


def _commit_of_generation(api, repo_id: str, cfg: ChainConfig, row: Optional[dict], generation: int) -> Optional[str]:
    """The newest commit on main that pushed this generation (for a branch whose creation was lost)."""
    title = commit_title(cfg, row, generation)
    for commit in api.list_repo_commits(repo_id):
        if commit.title == title:
            return commit.commit_id
    return None


def _point_branch(api, repo_id: str, branch: str, commit: str, *, moved: bool, find) -> str:
    """Point ``branch`` at the commit of this generation and return that commit. ``moved``: this push made
    ``commit`` (an existing branch elsewhere is moved to it); otherwise an existing branch stays, and a
    missing one (its creation lost with the answer) is made at the commit that ``find()`` finds on main,
    else at ``commit`` (the head)."""
    existing = {b.name: b.target_commit for b in api.list_repo_refs(repo_id).branches}
    if existing.get(branch) == commit:
        return commit
    if branch in existing:
        if not moved:
            return existing[branch]
        api.delete_branch(repo_id, branch=branch)
    elif not moved:
        commit = find() or commit
    api.create_branch(repo_id, branch=branch, revision=commit, exist_ok=True)
    return commit
