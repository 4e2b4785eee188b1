import pytest

from chain_of_diffusion.config import ChainConfig, ConfigError, load_config, to_yaml


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_from_scratch_digits_chain():
    cfg = load_config()
    assert isinstance(cfg, ChainConfig)
    assert (cfg.generations, cfg.data.source, cfg.data.resolution, cfg.mix.policy) == (4, "digits", 16, "replace")


def test_files_merge_left_to_right_and_overrides_last(tmp_path):
    a = write(tmp_path, "a.yaml", "generations: 3\ntrain: {steps: 10, lr: 0.5}\n")
    b = write(tmp_path, "b.yaml", "train: {steps: 20}\nsample: {guidance_scale: 4.0}\n")
    cfg = load_config([a, b], ["train.steps=30"])
    assert cfg.generations == 3  # only in a
    assert cfg.train.lr == 0.5  # a, untouched by b
    assert cfg.sample.guidance_scale == 4.0  # b
    assert cfg.train.steps == 30  # override beats both files
    assert load_config([b, a]).train.steps == 10  # order matters


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    bad = write(tmp_path, "bad.yaml", "train: {stpes: 5}\n")
    with pytest.raises(ConfigError) as err:
        load_config([bad])
    msg = str(err.value)
    assert "train.stpes" in msg and "train.steps" in msg and str(bad) in msg
    assert "\n" not in msg


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="unknown config key 'sample.guidance'"):
        load_config([], ["sample.guidance=3"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="train.steps") as err:
        load_config([], ["train.steps=many"])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override, key",
    [("generations=0", "generations"), ("generations=-2", "generations"), ("train.lr=0", "train.lr"),
     ("train.condition_drop=1.5", "train.condition_drop"), ("mix.policy=keep", "mix.policy"),
     ("data.source=mnist", "data.source"), ("metrics.names=[fid_bogus]", "metrics.names"),
     ("select.alpha=1.5", "select.alpha"), ("train.optimizer=sgd", "train.optimizer"),
         ("train.snr_gamma=-1", "train.snr_gamma"), ("train.lora_dropout=1.0", "train.lora_dropout"),
         ("train.lora_target_modules=[]", "train.lora_target_modules"),
         ("train.validation_every=10", "train.validation_prompts"),
         ("sample.captions=/no/such/captions.txt", "sample.captions")],
)
def test_out_of_range_values(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config([], [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "nope.yaml"])
    broken = write(tmp_path, "broken.yaml", "train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([broken])


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    from conftest import cli

    broken = write(tmp_path, "broken.yaml", "generations: 2\ntrain: {steps: [1, 2\nsample: {steps: 3}\n")
    proc = cli("--config", str(broken), f"output_dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    # line 3, column 7 (1-based, as editors count): where the unclosed list runs into the next key
    assert lines[0].startswith(f"chain.py: error: {broken}:3:7: not valid YAML: did not find expected ',' or ']'")
    assert "line 2, column 16" in lines[0]  # where that list started
    assert not (tmp_path / "run").exists()


def test_yaml_round_trip(tmp_path):
    cfg = load_config([], ["train.steps=7", "mix.real_fraction=0.25"])
    saved = write(tmp_path, "config.yaml", to_yaml(cfg))
    assert load_config([saved]) == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [(["train.mode=lora"], "use base or previous"),
     (["model.pretrained=some/model"], "would ignore model.pretrained")],
)
def test_lora_and_pretrained_need_a_base(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], overrides)
    load_config([], [*overrides, "train.init=base"])  # the same with a base is fine


def test_classifier_features_without_labels_is_refused_before_any_work(tmp_path):
    # it used to stop in the reference stage, after the real data was read and written
    with pytest.raises(ConfigError, match="'metrics.features'.*needs class labels.*metrics.features=pixels"):
        load_config([], ["data.source=imagefolder", f"data.path={tmp_path}"])
    assert load_config([], ["data.source=imagefolder", f"data.path={tmp_path}", "data.label_column=kind"])
    assert load_config([], ["data.source=imagefolder", f"data.path={tmp_path}", "metrics.features=pixels"])
