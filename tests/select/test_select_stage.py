"""The select stage end to end in the UNet feature space (the real entry point, one generation)."""

from conftest import ROOT, SMOKE, TINY_OVERRIDES, run_cli
from safetensors.torch import load_file

from chain_of_diffusion.data.imageset import read_metadata


def test_greedy_in_unet_features_caches_them_next_to_the_selection(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("--config", str(SMOKE), "--config", str(ROOT / "configs" / "mitigations" / "greedy_entropy.yaml"),
                   f"output_dir={out}", *TINY_OVERRIDES, "generations=1", "select.features=unet",
                   "select.latent_t=50", "metrics.names=[entropy]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    selected = read_metadata(out / "gen_00" / "selected")
    assert len(selected) == 48 and sorted(r["score"] for r in selected) == list(range(48))
    features = load_file(str(out / "gen_00" / "selected" / "features_unet_t50.safetensors"))
    assert len(features) == 96  # one per distinct sample image, keyed by content
    assert {v.shape for v in features.values()} == {next(iter(features.values())).shape}
