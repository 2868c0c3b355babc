import pytest

from autoretrain.settings import SettingsError, load_settings


def write(tmp_path, text):
    path = tmp_path / "autoretrain.yaml"
    path.write_text(text)
    return path


def test_layers_override_default_then_provider_then_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTORETRAIN_CONFIG", raising=False)
    path = write(
        tmp_path,
        """
provider: azure
environment: production
providers:
  azure: {kind: azure_openai, azure_endpoint: "https://x.openai.azure.com"}
gates:
  default: {min_score: 0.9, max_recoveries: 3}
  providers: {azure: {min_score: 0.95}}
  environments: {production: {max_recoveries: 0}}
""",
    )
    gates = load_settings(path).promotion_gates()
    assert gates.min_score == 0.95 and gates.max_recoveries == 0 and gates.max_escalations == 0


@pytest.mark.parametrize(
    "text, where",
    [
        ("gates:\n  min_score: 0.5\n", "gates: unknown keys ['min_score']"),
        ("gates:\n  environments:\n    prod: {min_scor: 1}\n", "gates.environments.prod"),
        ("lifts:\n  default: {min_lift: nope}\n", "lifts.default"),
        ("selfplay: {temprature: 0.5}\n", "selfplay.temprature"),
    ],
)
def test_bad_configuration_fails_at_load_saying_where(tmp_path, monkeypatch, text, where):
    monkeypatch.delenv("AUTORETRAIN_CONFIG", raising=False)
    with pytest.raises(SettingsError, match=where.replace("[", r"\[").replace("]", r"\]")):
        load_settings(write(tmp_path, text))


def test_a_named_config_file_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORETRAIN_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings()


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTORETRAIN_CONFIG", raising=False)
    monkeypatch.setenv("AUTORETRAIN_HOME", str(tmp_path / "elsewhere"))
    settings = load_settings(write(tmp_path, "home: /tmp/not-this\n"))
    assert settings.paths.root == (tmp_path / "elsewhere").resolve()
    assert settings.paths.landing == settings.paths.root / "landing" / "runs"


@pytest.mark.parametrize(
    "text, message",
    [
        # The two that let any candidate through (issue 21), and one that quarantined everything.
        ("lifts:\n  default: {min_lift: -1}\n", "lifts.default.min_lift = -1: "),
        ("lifts:\n  default: {significance: 5}\n", "lifts.default.significance = 5: "),
        ("lifts:\n  default: {significance: 0}\n", "lifts.default.significance = 0: "),
        ("lifts:\n  environments: {prod: {canary_margin: 2}}\n", "environments.prod.canary_margin"),
        ("ingest: {max_record_bytes: -1}\n", "ingest.max_record_bytes = -1: "),
        ("ingest: {max_quarantine_rate: 1.5}\n", "ingest.max_quarantine_rate = 1.5: "),
        ("selfplay: {canary_share: -0.1}\n", "selfplay.canary_share = -0.1: "),
        ("selfplay: {runs_per_iteration: 0}\n", "selfplay.runs_per_iteration = 0: "),
        ("selfplay: {category_weights: {arithmetic: -1}}\n", "category_weights.arithmetic = -1"),
        ("gates:\n  default: {max_runtime_s: -5}\n", "gates.default.max_runtime_s = -5: "),
        ("gates:\n  default: {min_score: 1.2}\n", "gates.default.min_score = 1.2: "),
        ("gates:\n  default: []\n", "gates.default = []: expected a mapping"),
        ("dataset: {eval_ratio: 1}\n", "dataset.eval_ratio = 1: "),
        ("dataset: {max_tool_output_chars: 0}\n", "dataset.max_tool_output_chars = 0: "),
        ("dataset: {extra_secret_patterns: ['(open']}\n", "extra_secret_patterns[0] = '(open'"),
        ("training: {learning_rate: .nan}\n", "training.learning_rate = nan: "),
        ("training: {batch_size: 0}\n", "training.batch_size = 0: "),
        ("evaluation: {bootstrap_samples: -1}\n", "evaluation.bootstrap_samples = -1: "),
        ("providers: {local: {kind: local, timeout_s: 0}}\n", "providers.local.timeout_s = 0: "),
        ("pricing: {'*': {input_per_mtok: -1}}\n", "pricing.*.input_per_mtok = -1: "),
        ("lifts:\n  default: {max_latency_ratio: .inf}\n", "max_latency_ratio = inf: "),
    ],
)
def test_values_out_of_range_fail_at_load_naming_setting_file_and_value(
    tmp_path, monkeypatch, text, message
):
    monkeypatch.delenv("AUTORETRAIN_CONFIG", raising=False)
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


def test_every_bad_value_is_reported_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTORETRAIN_CONFIG", raising=False)
    path = write(
        tmp_path,
        "lifts:\n  default: {min_lift: -1}\ningest: {max_record_bytes: -1}\n"
        "selfplay: {canary_share: 2}\n",
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    for name in ("lifts.default.min_lift", "ingest.max_record_bytes", "selfplay.canary_share"):
        assert name in str(caught.value)


def test_values_at_the_edges_of_their_ranges_load(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTORETRAIN_CONFIG", raising=False)
    path = write(
        tmp_path,
        "lifts:\n  default: {min_lift: 0, significance: 0.5}\n"
        "selfplay: {canary_share: 1, temperature: 0}\ndataset: {eval_ratio: 0}\n"
        "gates:\n  default: {min_score: 0, max_recoveries: 0}\n",
    )
    settings = load_settings(path)
    assert settings.evaluation_lifts().significance == 0.5
    assert settings.selfplay.canary_share == 1


def test_an_undefined_provider_names_the_profiles_that_exist(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTORETRAIN_CONFIG", raising=False)
    path = write(tmp_path, "providers:\n  lmstudio: {kind: openai_compatible}\n  local: {}\n")
    monkeypatch.setenv("AUTORETRAIN_PROVIDER", "nope")
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    text = str(caught.value)
    assert "provider = 'nope'" in text and "['lmstudio', 'local']" in text
    assert "$AUTORETRAIN_PROVIDER" in text  # the value came from the environment, not the file
