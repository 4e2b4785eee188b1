"""``model.pretrained: namespace/name@gen-03``: a generation of a chain pushed to the Hub (issue 13) as the
base of a new chain, to continue it or to start a branch of it.

The generation's files are read from ``gen_03/`` on the repo's ``main`` (there whether or not the chain
pushed a branch per generation), with the card's machine-readable lineage (its ``chain`` block). A fully
trained generation is a model folder and loads as it is; a LoRA generation is fused into its chain's base
(``chain.base_model``, loaded as any ``model.pretrained``), so the new chain's LoRAs start from it
(:func:`chain_of_diffusion.models.pretrained.load_generation`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from chain_of_diffusion.errors import ModelLoadError

_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)@gen-(?P<generation>\d+)$")
CARD = "README.md"


def parse_ref(name: Optional[str]) -> Optional[tuple[str, int]]:
    """(repo id, generation) of ``namespace/name@gen-XX``; None for any other model.pretrained."""
    match = _REF.match(name or "")
    return (match["repo"], int(match["generation"])) if match else None


def fetch_generation(name: str) -> tuple[Path, dict]:
    """(local folder of the generation's files, the card's ``chain`` block), downloaded where missing
    and the Hub is reachable; a one-line ModelLoadError naming what is missing."""
    from huggingface_hub import ModelCard, constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo, generation = parse_ref(name)
    folder = f"gen_{generation:02d}"
    try:
        root = Path(snapshot_download(repo, allow_patterns=[f"{folder}/*", CARD], local_files_only=constants.HF_HUB_OFFLINE))
    except RepositoryNotFoundError:
        raise ModelLoadError(f"model.pretrained: {name}: no repo {repo} on the Hub (or no access to it)") from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"model.pretrained: {name}: {repo} is not in the Hugging Face cache and this machine is "
                             "offline (HF_HUB_OFFLINE=1); run once with the Hub reachable") from None
    except HfHubHTTPError as err:
        raise ModelLoadError(f"model.pretrained: {name}: {str(err).splitlines()[0]}") from None
    chain = {}
    if (root / CARD).is_file():
        chain = ModelCard.load(root / CARD).data.to_dict().get("chain") or {}
    if not chain:
        raise ModelLoadError(f"model.pretrained: {name}: {repo} has no chain lineage in its model card "
                             "(not a chain pushed by chain-of-diffusion)")
    pushed = sorted(entry["generation"] for entry in chain.get("lineage", []))
    if generation not in pushed or not (root / folder).is_dir():
        have = ", ".join(f"gen-{g:02d}" for g in pushed) or "none"
        raise ModelLoadError(f"model.pretrained: {name}: {repo} has no generation {generation} (pushed: {have})")
    return root / folder, chain


def continued_from(name: Optional[str]) -> Optional[dict]:
    """What the lineage card says a chain continues (``repo``, ``generation``, ``chain_id``), or None."""
    ref = parse_ref(name)
    if ref is None:
        return None
    try:
        _, chain = fetch_generation(name)
    except ModelLoadError:
        chain = {}
    return {"repo": ref[0], "generation": ref[1], "chain_id": chain.get("id")}
