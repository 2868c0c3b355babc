"""Azure OpenAI chat deployments (one deployment name per slot: primary, canary).

Authentication prefers Microsoft Entra ID: `DefaultAzureCredential` (managed identity on Azure,
the developer's `az login` elsewhere) through `get_bearer_token_provider`. An API key is the
fallback, read from the environment variable the profile names (`api_key_env`) only when Entra ID
yields no token. The key is handed to the client and nowhere else: not to logs, notes, errors or
`repr` (a test holds us to it).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from autoretrain.azure_identity import COGNITIVE_SERVICES_SCOPE, token_provider
from autoretrain.providers.base import ProviderError
from autoretrain.providers.openai_compatible import OpenAICompatibleChatModel

log = logging.getLogger(__name__)


class AzureOpenAIChatModel(OpenAICompatibleChatModel):
    def __init__(
        self,
        deployment: str,
        azure_endpoint: str,
        api_version: str = "2024-10-21",
        api_key_env: str | None = None,
        credential: Any = None,
        use_entra_id: bool = True,
        **kwargs: Any,
    ):
        super().__init__(
            model=deployment, base_url=azure_endpoint, api_key_env=api_key_env, **kwargs
        )
        self.deployment = deployment
        self.azure_endpoint = azure_endpoint
        self.api_version = api_version
        self.credential = credential
        self.use_entra_id = use_entra_id
        self.auth_method: str | None = None  # "entra_id" or "api_key", once the client exists

    @property
    def endpoint(self) -> str:
        return f"{self.azure_endpoint} (deployment {self.deployment})"

    def _make_client(self) -> Any:
        import openai

        common = {
            "azure_endpoint": self.azure_endpoint,
            "api_version": self.api_version,
            "timeout": self.timeout_s,
            "max_retries": 0,  # ours, recorded per run
        }
        entra_problem = "disabled in the profile"
        if self.use_entra_id:
            provider, entra_problem = self._entra_token_provider()
            if provider is not None:
                self.auth_method = "entra_id"
                log.info("%s: authenticating with Microsoft Entra ID", self.name)
                return openai.AzureOpenAI(azure_ad_token_provider=provider, **common)
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if not key:
            where = (
                f"environment variable {self.api_key_env} is not set"
                if self.api_key_env
                else "no api_key_env in the profile"
            )
            raise ProviderError(
                f"{self.name}: no credential for {self.azure_endpoint}: Entra ID: "
                f"{entra_problem}; API key: {where}. Sign in (az login / managed identity) or "
                f"export the key variable."
            )
        self.auth_method = "api_key"
        log.info(
            "%s: Entra ID unavailable (%s); authenticating with the key from %s",
            self.name,
            entra_problem,
            self.api_key_env,
        )
        return openai.AzureOpenAI(api_key=key, **common)

    def _entra_token_provider(self) -> tuple[Any, str]:
        """A bearer-token provider that has already produced one token, or why there is none
        (the fallback to a key has to be decided before the client is built)."""
        return token_provider(COGNITIVE_SERVICES_SCOPE, self.credential)
