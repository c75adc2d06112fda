"""Config loading: presets, overrides, and errors that name the key and the fix."""

import pytest

from lmcot.config import Config, ConfigError, identity, load_config, resolve_config_path


@pytest.mark.parametrize("preset", ["tiny", "paper", "qwen"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, Config)
    assert cfg.data.datasets, "every preset names at least one dataset"


def test_paper_preset_is_the_papers_pair():
    cfg = load_config("paper")
    assert cfg.small.name_or_path == "google/flan-t5-large"
    assert cfg.large.name_or_path == "google/flan-t5-xxl"
    assert [d.name for d in cfg.data.datasets] == ["hotpotqa", "2wiki"]


def test_overrides_reach_nested_fields_and_list_items():
    cfg = load_config("tiny", ["eval.limit=3", "data.datasets.1.limit=5", "distill.scaling.zero_stage=3",
                               "refine.reward_weights={task: 1.0, fluency: 0.5}"])
    assert cfg.eval.limit == 3
    assert cfg.data.datasets[1].limit == 5
    assert cfg.distill.scaling.zero_stage == 3
    assert cfg.refine.reward_weights == {"task": 1.0, "fluency": 0.5}


def test_exponent_without_a_dot_is_a_float():
    """YAML 1.1 reads ``2e-3`` as a string; a float field takes it as the number everyone means."""
    cfg = load_config("tiny", ["distill.learning_rate=2e-3", "generation.temperature=1E0"])
    assert cfg.distill.learning_rate == 0.002 and cfg.generation.temperature == 1.0
    with pytest.raises(ConfigError, match="distill.learning_rate: expected float"):
        load_config("tiny", ["distill.learning_rate=fast"])


def test_yaml_sections_merge_over_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("eval:\n  limit: 2\n")
    cfg = load_config(path)
    assert cfg.eval.limit == 2
    assert cfg.eval.method == Config().eval.method


@pytest.mark.parametrize(
    "override, expected",
    [
        ("eval.limt=3", "did you mean 'eval.limit'"),
        ("smal.name_or_path=x", "did you mean 'small'"),
        ("eval.limit=abc", "eval.limit: expected int"),
        ("eval.method=foo", "method='foo' is not one of"),
        ("data.datasets.7.limit=1", "does not address a config field"),
        ("eval.limit", "expected section.field=value"),
        ("small.family=encoder", "family='encoder'"),
    ],
)
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(ConfigError, match="tiny.yaml") as err:
        load_config("tiny", [override])
    assert expected in str(err.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("generation:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "bad.yaml" in message and "generation.temprature" in message and "generation.temperature" in message


def test_missing_file_points_at_presets(tmp_path):
    with pytest.raises(ConfigError, match="configs/tiny.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_preset_names_resolve_to_files():
    assert resolve_config_path("tiny").name == "tiny.yaml"


# Each stage's identity, asked of the stage itself: (a field of every section it reads, one
# override per section), and fields it must not depend on (sections it does not read, and
# run-only fields of those it does). A stage that stops reading a section, or starts hashing a
# run-only field, fails here.
STAGE_READS = {
    "rationales": ({"data": "data.context_max_tokens=200", "large": "large.max_input_tokens=400",
                    "generation": "generation.top_p=0.5", "rationales": "rationales.f1_threshold=0.5"},
                   ["seed=1", "small.max_input_tokens=400", "distill.learning_rate=0.1", "eval.limit=1",
                    "rationales.num_actors=1", "rationales.shard_rows=7", "large.ray_resource=large_lm"]),
    "distill": ({"seed": "seed=1", "small": "small.max_input_tokens=400", "distill": "distill.learning_rate=0.1"},
                ["eval.limit=1", "refine.beta=0.1", "search.num_samples=9", "distill.scaling.max_failures=0",
                 "distill.scaling.cpus_per_worker=2", "distill.scaling.checkpoints_to_keep=5",
                 "distill.scaling.gradient_checkpointing=true", "small.ray_resource=small_lm"]),
    "refine": ({"seed": "seed=1", "large": "large.max_input_tokens=400", "generation": "generation.top_p=0.5",
                "data": "data.context_max_tokens=200", "refine": "refine.beta=0.1"},
               ["eval.limit=1", "distill.learning_rate=0.1", "rationales.f1_threshold=0.5",
                "refine.judge_num_cpus=1", "refine.judge_num_gpus=1", "refine.judge_num_actors=3",
                "refine.judge_batch_size=4", "refine.judge_batch_wait_ms=0", "refine.judge_timeout_s=5",
                "refine.scaling.max_failures=0", "large.ray_resource=large_lm"]),
    "search": ({"seed": "seed=1", "small": "small.max_input_tokens=400", "large": "large.max_input_tokens=400",
                "data": "data.context_max_tokens=200", "generation": "generation.top_p=0.5",
                "refine": "refine.beta=0.1", "search": "search.num_samples=9"},
               ["eval.limit=1", "distill.learning_rate=0.1", "rationales.f1_threshold=0.5",
                "search.max_concurrent_trials=2", "search.trial_cpus=2", "refine.judge_num_actors=3"]),
    "eval": ({"data": "data.context_max_tokens=200", "large": "large.max_input_tokens=400",
              "generation": "generation.top_p=0.5", "eval": "eval.limit=1", "small": "small.max_input_tokens=400"},
             ["seed=1", "refine.beta=0.1", "distill.learning_rate=0.1", "rationales.f1_threshold=0.5",
              "eval.on_cluster=true", "eval.num_cpus=2", "large.ray_resource=large_lm"]),
}


@pytest.fixture(scope="module")
def stage_identities(tmp_path_factory):
    """stage -> config -> the identity the stage itself computes, in a run dir holding two kept
    rationales and a distilled model (the tiny small T5), which distill and refine read."""
    from lmcot.models.loading import resolve_model_path
    from lmcot.runs.rundir import RunDir
    from lmcot.stages import distill, evaluate, rationales, refine, search
    from lmcot.training.teacher import rationale_store

    run_dir = RunDir(tmp_path_factory.mktemp("identity") / "run")
    row = dict(dataset="hotpotqa", id="q1", sample=0, question="Who?", context="A: Ann.", rationale="Ann is A.",
               output="", teacher_answer="Ann", gold_answer="Ann", em=1.0, f1=1.0, kept=True, reason="",
               prompt_tokens=1, completion_tokens=1, teacher="t")
    with rationale_store(run_dir.rationales) as store:
        store.add([row, dict(row, id="q2")])
        store.flush()
    run_dir.distill.mkdir(parents=True)
    run_dir.distill_model.symlink_to(resolve_model_path("tiny:t5-small"), target_is_directory=True)
    return {
        "rationales": rationales.stage_identity,
        "distill": lambda cfg: distill.prepare(cfg, run_dir)["identity"],
        "refine": lambda cfg: refine.prepare(cfg, run_dir)["identity"],
        "search": lambda cfg: search.search_identity(cfg, run_dir),
        "eval": lambda cfg: evaluate.eval_identity(cfg, run_dir, evaluate.small_stage(cfg, run_dir), False),
    }


@pytest.mark.parametrize("stage", list(STAGE_READS))
def test_each_stage_identity_tracks_the_sections_it_reads_minus_run_only_fields(stage_identities, stage):
    reads, ignored = STAGE_READS[stage]
    stage_identity = stage_identities[stage]
    base = stage_identity(load_config("tiny"))
    for section, override in reads.items():
        assert stage_identity(load_config("tiny", [override])) != base, f"{stage} ignores {section} ({override})"
    assert stage_identity(load_config("tiny", ignored)) == base


def test_every_run_only_field_is_a_resource_retry_or_placement_setting():
    """Guards the list: a field that changes results must never be marked run-only."""
    import dataclasses

    def run_only(cls):
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get("fingerprint", True) is False]

    from lmcot.config import RefineConfig, ScalingConfig

    assert run_only(ScalingConfig) == ["cpus_per_worker", "gradient_checkpointing", "max_failures",
                                       "checkpoints_to_keep"]
    assert run_only(RefineConfig) == ["judge_num_actors", "judge_num_cpus", "judge_num_gpus", "judge_batch_size",
                                      "judge_batch_wait_ms", "judge_timeout_s"]


def test_config_round_trips_through_yaml(tmp_path):
    cfg = load_config("tiny", ["eval.limit=4"])
    path = tmp_path / "snap.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
