"""Microsoft Entra ID tokens for Azure OpenAI, in one place (the provider, the deployment
client and the gateway all sign in the same way).

`DefaultAzureCredential` (managed identity on Azure, `az login` elsewhere) fails only when a token
is asked for, so `token_provider` asks once up front: a caller can then decide to fall back to an
API key before it builds its client, and say why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"


def token_provider(
    scope: str = COGNITIVE_SERVICES_SCOPE, credential: Any = None
) -> tuple[Callable[[], str] | None, str]:
    """A bearer-token provider for `scope` that has already produced a token, or (None, why)."""
    from azure.identity import DefaultAzureCredential, get_bearer_token_provider

    try:
        credential = credential or DefaultAzureCredential(
            exclude_interactive_browser_credential=True
        )
        provider = get_bearer_token_provider(credential, scope)
        provider()
    except Exception as exc:  # azure-identity raises several unrelated types here
        first = str(exc).splitlines()[0] if str(exc) else ""
        return None, f"{type(exc).__name__}: {first}"
    return provider, ""
