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
