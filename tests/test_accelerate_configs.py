"""configs/accelerate/*.yaml as ``accelerate launch --config_file`` reads them, and the launches the chain
refuses before any work (FSDP or DeepSpeed where accelerate would not run them)."""

import pytest
from conftest import ACCELERATE_CONFIGS, ROOT, SHARED_ARGS, cli


def launch_env(name: str, monkeypatch) -> dict:
    """The environment ``accelerate launch --config_file configs/accelerate/<name>.yaml`` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(ACCELERATE_CONFIGS / f"{name}.yaml"), "chain.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:  # as launch_command does before the DeepSpeed launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    return env


def test_ddp_config_is_plain_data_parallel(monkeypatch):
    env = launch_env("ddp", monkeypatch)
    assert env.get("ACCELERATE_USE_FSDP", "false") == "false" and "ACCELERATE_USE_DEEPSPEED" not in env


def test_fsdp_config_shards_per_parameter_and_wraps_the_unets_blocks(monkeypatch, tiny_sd_pipeline):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from diffusers import UNet2DConditionModel

    env = launch_env("fsdp", monkeypatch)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    plugin = FullyShardedDataParallelPlugin()
    # FSDP2 shards parameter by parameter: frozen base and trained LoRA weights may share a block
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_pipeline / "unet")
    plugin.set_auto_wrap_policy(unet)
    # no class list in the file: accelerate wraps the blocks the UNet names in _no_split_modules
    assert set(plugin.transformer_cls_names_to_wrap) == set(unet._no_split_modules)
    assert "BasicTransformerBlock" in plugin.transformer_cls_names_to_wrap


def test_deepspeed_config_is_zero_stage_2_sized_by_the_chain(monkeypatch):
    env = launch_env("deepspeed_zero2", monkeypatch)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    # the chain fills these from train.batch_size, micro_batch_size and max_grad_norm (train._size_deepspeed)
    assert env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] == "auto" and env["ACCELERATE_GRADIENT_CLIPPING"] == "auto"
    assert env["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"] == "none"


@pytest.mark.parametrize("name, needs", [
    ("fsdp", "asks for FSDP but this launch runs on CPU"),
    ("deepspeed_zero2", "asks for DeepSpeed"),
])
def test_a_config_accelerate_would_not_run_here_stops_before_any_work(name, needs, monkeypatch, tmp_path):
    launch_env(name, monkeypatch)
    out = tmp_path / "run"
    proc = cli(*SHARED_ARGS, f"output_dir={out}")
    assert proc.returncode == 2 and needs in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


def test_what_the_chain_cannot_do_under_fsdp_or_deepspeed_is_named(monkeypatch, tmp_path):
    import chain_of_diffusion.launch as launch

    monkeypatch.setattr(launch, "shards_here", lambda: True)  # as on a GPU machine
    launch_env("fsdp", monkeypatch)
    proc = cli(*SHARED_ARGS, f"output_dir={tmp_path / 'run'}")  # the smoke chain is a full finetune
    assert proc.returncode == 2 and "train.mode=full under FSDP" in proc.stderr, proc.stderr
    proc = cli("--config", str(ROOT / "configs" / "scratch" / "flow_ra_reflow_digits.yaml"),
               f"output_dir={tmp_path / 'run'}", "train.mode=lora", "train.init=base", "mix.refresh_real_pairs_every=2")
    assert proc.returncode == 2 and "mix.refresh_real_pairs_every under FSDP" in proc.stderr, proc.stderr
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object() if name == "deepspeed" else None)
    proc = cli("--config", str(ROOT / "configs" / "tiny_sd_lora.yaml"), f"output_dir={tmp_path / 'run'}",
               "train.lora_text_encoder=true")
    assert proc.returncode == 2 and "DeepSpeed takes one per prepare()" in proc.stderr, proc.stderr
