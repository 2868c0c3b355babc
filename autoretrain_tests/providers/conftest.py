from pathlib import Path

import pytest

from autoretrain_tests.providers.tiny_models import cached_tool_model, cached_untrained_model


@pytest.fixture(scope="session")
def tool_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_tool_model(tmp_path_factory)


@pytest.fixture(scope="session")
def untrained_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_untrained_model(tmp_path_factory)
