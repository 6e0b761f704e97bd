"""The training configuration: presets, overrides, strict validation with suggestions, round trip."""

from __future__ import annotations

import pytest
import yaml

from xkmcast.errors import ConfigError
from xkmcast.models.kinds import KINDS
from xkmcast.train.config import (
    TrainConfig,
    apply_overrides,
    list_presets,
    load_config,
    run_dir,
    save_config,
)

EXPECTED_PRESETS = {
    "corrdiff-tiny-regression", "corrdiff-tiny-diffusion", "corrdiff-mini-regression", "corrdiff-mini-diffusion",
    "corrdiff-regression", "corrdiff-diffusion", "stormcast-regression", "stormcast-diffusion",
    "stormcast-tiny-regression", "stormcast-tiny-diffusion", "stormscope", "stormscope-tiny", "vit", "vit-tiny",
}


def test_every_preset_validates_and_tiny_ones_are_small():
    assert EXPECTED_PRESETS <= set(list_presets())
    for name in list_presets():
        recipe = name.endswith("-cpu")  # the recipes run on the user's data: data.source is theirs to give
        cfg = load_config(name, ["data.source=fine.nc"] if recipe else [])
        assert recipe == bool(cfg.training.stages)
        assert cfg.model.stage in KINDS[cfg.model.kind].stages
        if "tiny" in name:
            assert cfg.model.size == "tiny" and cfg.data.source == "synthetic" and cfg.training.duration <= 500
    # the kind's loss default is filled in: CorrDiff's residual loss vs EDM / StormCast
    assert load_config("corrdiff-tiny-regression").model.loss.P_mean == 0.0
    assert load_config("stormcast-tiny-regression").model.loss.P_mean == -1.2
    # diffusion presets extend their regression and name its bundle
    diff = load_config("corrdiff-mini-diffusion")
    assert diff.model.stage == "diffusion" and diff.model.regression_bundle.endswith("corrdiff-mini-regression/0/model")
    assert diff.data.output_vars == load_config("corrdiff-mini-regression").data.output_vars


def test_overrides_are_parsed_as_yaml_and_merged():
    nested = apply_overrides({}, ["training.lr=3.0e-4", "data.patch=[32, 32]", "training.resume=null", "a.b.c=3"])
    assert nested == {"training": {"lr": 3.0e-4, "resume": None}, "data": {"patch": [32, 32]}, "a": {"b": {"c": 3}}}
    # set, not merged: a mapping value replaces the old mapping; a dotted key below a scalar replaces it
    base = {"data": {"params": {"a": 1, "b": 2}}, "x": 5}
    assert apply_overrides(base, ["data.params={}", "data.params.c=3", "x.y=1"]) == {"data": {"params": {"c": 3}},
                                                                                     "x": {"y": 1}}
    cfg = load_config("corrdiff-tiny-regression", ["training.lr=1e-4", "data.patch=[16, 16]", "training.resume=null",
                                                   "training.time_budget=1.5h", "training.flops_budget=2e15"])
    assert cfg.training.lr == pytest.approx(1e-4) and cfg.data.patch == [16, 16] and cfg.training.resume is None
    assert cfg.training.time_budget == 5400.0 and cfg.training.flops_budget == 2e15
    assert cfg.data.input_vars == load_config("corrdiff-tiny-regression").data.input_vars  # untouched keys kept
    with pytest.raises(ConfigError, match="dotted.key=value"):
        apply_overrides({}, ["training.lr"])
    with pytest.raises(ConfigError, match="dotted.key=value"):
        apply_overrides({}, ["training..lr=1"])


@pytest.mark.parametrize(("override", "path", "suggestion"), [
    ("training.lrr=1", "training.lrr", "training.lr"),
    ("trainig.lr=1", "trainig", "training"),
    ("training.ema.halflife=3", "training.ema.halflife", "training.ema.halflife_samples"),
    ("model.los.P_std=1", "model.los", "model.loss"),
])
def test_unknown_key_names_its_path_and_the_nearest_valid_key(override, path, suggestion):
    with pytest.raises(ConfigError) as err:
        load_config("corrdiff-tiny-regression", [override])
    assert f"unknown key '{path}'" in str(err.value) and f"did you mean '{suggestion}'" in str(err.value)


def test_wrong_types_and_values_name_the_key():
    with pytest.raises(ConfigError, match=r"training\.batch_size.*found 'many'"):
        load_config("corrdiff-tiny-regression", ["training.batch_size=many"])
    with pytest.raises(ConfigError, match=r"training\.precision"):
        load_config("corrdiff-tiny-regression", ["training.precision=fp8"])
    with pytest.raises(ConfigError, match=r"batch_size_per_rank"):
        load_config("corrdiff-tiny-regression", ["training.batch_size_per_rank=64"])
    with pytest.raises(ConfigError, match="package.module:Class"):
        load_config("corrdiff-tiny-regression", ["data.dataset_class=not a class"])
    with pytest.raises(ConfigError, match="Did you mean 'corrdiff-tiny-regression'"):
        load_config("corrdif-tiny-regression")


def test_conditions_must_suit_the_kind_and_diffusion_needs_its_regression():
    with pytest.raises(ConfigError, match=r"\['state'\] not allowed for kind 'corrdiff'"):
        load_config("corrdiff-tiny-regression", ["model.regression_conditions=[state]"])
    with pytest.raises(ConfigError, match="has no diffusion stage"):
        load_config("vit-tiny", ["model.diffusion_conditions=[state]"])
    with pytest.raises(ConfigError, match="has no 'regression' stage"):
        load_config("stormscope-tiny", ["model.stage=regression"])
    with pytest.raises(ConfigError, match="needs model.regression_bundle"):
        load_config("corrdiff-tiny-diffusion", ["model.regression_bundle=null"])
    # a diffusion-only StormCast needs no regression bundle
    cfg = load_config("stormcast-tiny-diffusion", ["model.regression_bundle=null",
                                                   "model.diffusion_conditions=[state, background]"])
    assert cfg.model.diffusion_conditions == ["state", "background"]


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config("stormcast-tiny-regression", [f"training.outdir={tmp_path}", "training.run_id=7"])
    path = save_config(cfg, run_dir(cfg) / "config.yaml")
    assert path == tmp_path / "stormcast-tiny-regression" / "7" / "config.yaml"
    again = load_config(path)
    assert again == cfg
    assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_extends_chain_and_cycles(tmp_path):
    base = tmp_path / "base.yaml"
    child = tmp_path / "child.yaml"
    base.write_text("extends: corrdiff-tiny-regression\ntraining: {lr: 0.5, batch_size: 2}\n")
    child.write_text(f"extends: {base}\ntraining: {{lr: 0.25}}\n")
    cfg = load_config(child)
    assert cfg.training.lr == 0.25 and cfg.training.batch_size == 2 and cfg.model.kind == "corrdiff"
    base.write_text(f"extends: {child}\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(child)


def test_model_signature_tracks_the_settings_weights_depend_on():
    a = load_config("corrdiff-tiny-regression")
    assert a.model_signature() == load_config("corrdiff-tiny-regression", ["training.lr=1"]).model_signature()
    b = load_config("corrdiff-tiny-regression", ["model.network={model_channels: 32}", "data.output_vars=[t2m]"])
    differ = {k for k in a.model_signature() | b.model_signature()
              if a.model_signature().get(k) != b.model_signature().get(k)}
    assert differ == {"model.network.model_channels", "model.network", "data.output_vars"}
    assert isinstance(a, TrainConfig)


def test_scaled_configs_change_only_their_dimension():
    from xkmcast.train.config import read_raw, validate
    from xkmcast.train.scaling import scaled_config

    raw = read_raw("corrdiff-tiny-regression")
    base = validate(raw)
    width = validate(scaled_config(raw, "width", 2))
    assert width.model.network == {"model_channels": 32}  # tiny has 16 channels
    assert validate(scaled_config(raw, "depth", 3)).model.network == {"num_blocks": 3}
    batch = validate(scaled_config(raw, "batch", 0.5))
    assert batch.training.batch_size == 4 and batch.training.lr == pytest.approx(base.training.lr / 2)
    res = validate(scaled_config(raw, "resolution", 2))
    assert (res.data.params["nx"], res.data.params["ny"]) == (64, 64)
    assert validate(scaled_config(raw, "data", 0.5)).data.params["times"] == 24
    assert validate(scaled_config(raw, "precision", 1)).training.precision == "amp-bf16"
    vit = read_raw("vit-tiny")
    wide = validate(scaled_config(vit, "width", 2))
    from xkmcast.models import build_pipeline
    from xkmcast.models.specs import VIT_SIZES, spec_from_config

    doubled = 2 * VIT_SIZES["tiny"]["hidden_size"]
    assert wide.model.network["hidden_size"] == doubled  # a multiple of the heads
    net = build_pipeline(spec_from_config(wide.model, wide.data, (16, 16))).stages["regression"]
    assert net.patch_embed.proj.out_channels == doubled  # the size table's name reaches the ViT (its embed_dim)
    for kind in ("width", "depth", "batch", "resolution", "data", "precision"):
        scaled = validate(scaled_config(raw, kind, 2))
        assert scaled.model.kind == base.model.kind and scaled.data.output_vars == base.data.output_vars
    with pytest.raises(ConfigError, match="unknown scaling type"):
        scaled_config(raw, "colour", 2)


def test_unquoted_dates_in_time_windows_are_taken_as_their_iso_strings(tmp_path):
    """YAML reads ``2005-01-01`` as a date and ``2005-01-01 06:00:00`` as a datetime: the windows keep
    them as the ISO strings the user wrote (whole days stay partial strings, so that an end date takes
    its whole day); a string that is no date is refused naming the key, a YAML error names the override."""
    cfg = load_config("corrdiff-cpu", ["data.source=fine.nc", "data.train_times={start: 2005-01-01, end: 2005-08-31}",
                                       "data.valid_times=[{start: 2005-03-01 06:00:00, end: 2005-03-02}]"])
    assert (cfg.data.train_times.start, cfg.data.train_times.end) == ("2005-01-01", "2005-08-31")
    assert (cfg.data.valid_times[0].start, cfg.data.valid_times[0].end) == ("2005-03-01T06:00:00", "2005-03-02")
    path = tmp_path / "run.yaml"  # the same from a YAML file, and through a round trip
    path.write_text("extends: corrdiff-cpu\ndata:\n  source: fine.nc\n  train_times: {start: 2005-01-01T00:00:00Z}\n")
    cfg = load_config(path)
    assert cfg.data.train_times.start == "2005-01-01T00:00:00"
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml").data.train_times.start == "2005-01-01T00:00:00"
    with pytest.raises(ConfigError, match=r"data\.train_times\.TimeRange\.end: '2005-02-30' is not a date"):
        load_config("corrdiff-cpu", ["data.source=fine.nc", "data.train_times={start: 2005-01-01, end: 2005-02-30}"])
    bad = tmp_path / "bad.yaml"  # a file's timestamp that is no date: the same error, not a bare ValueError
    bad.write_text("extends: corrdiff-cpu\ndata:\n  source: fine.nc\n  train_times: {start: 2005-13-01}\n")
    with pytest.raises(ConfigError, match=r"data\.train_times\.TimeRange\.start: '2005-13-01' is not a date"):
        load_config(bad)
    # a range as text, as --times writes it or ISO 8601's interval; an empty end is open
    cfg = load_config("corrdiff-cpu", ["data.source=fine.nc", "data.train_times=2005-01/2005-08",
                                       "data.valid_times=[2005-09..2005-09-15T12:00, 2005-12..]"])
    assert (cfg.data.train_times.start, cfg.data.train_times.end) == ("2005-01", "2005-08")
    assert [(w.start, w.end) for w in cfg.data.valid_times] == [("2005-09", "2005-09-15T12:00"), ("2005-12", None)]
    with pytest.raises(ConfigError, match=r"TimeRange\.end: '2005-13' is not a date"):
        load_config("corrdiff-cpu", ["data.source=fine.nc", "data.train_times=2005-01..2005-13"])
    with pytest.raises(ConfigError, match="override data.patch is not valid YAML"):
        load_config("corrdiff-cpu", ["data.source=fine.nc", "data.patch=[32, 32"])
