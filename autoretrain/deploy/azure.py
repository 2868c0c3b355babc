"""Azure OpenAI deployments through the Azure management (ARM) API, and their keep-alive.

A deployment is what an Azure OpenAI client calls by name; the model behind it is chosen by
the management API, not the inference endpoint:

    PUT https://management.azure.com/subscriptions/{sub}/resourceGroups/{rg}/providers/
        Microsoft.CognitiveServices/accounts/{account}/deployments/{name}?api-version=2023-05-01
    {"sku": {"name": "standard", "capacity": N},
     "properties": {"model": {"format": "OpenAI", "name": "<fine_tuned_model>", "version": "1"}}}

answers 201 (created) with `properties.provisioningState` Creating; we then GET the deployment
until that state is Succeeded (or Failed/Canceled). A deployment's model is fixed when it is
created: Azure refuses a PUT naming another model with `CannotChangeDeploymentModel`. So every
model version gets a deployment of its own, named from the version (`deployment_name`), and a
slot (primary, canary) is a name resolved outside Azure (`deploy/slot_config.py`), never a
deployment re-pointed at another model.

SKUs: `standard` / `globalstandard` bill fine-tuned deployments by the hour while deployed;
`developertier` (for evaluating a candidate) bills tokens only, has no SLA and lives a fixed 24
hours. A fine-tuned deployment without calls for 15 days is deleted by Azure (the model survives):
`keep_alive` sends one tiny chat request per deployment; schedule it (docs/azure.md). A version
whose deployment is gone is simply deployed again (`ensure`).

The management API takes only Microsoft Entra ID tokens (scope `https://management.azure.com/.default`):
`DefaultAzureCredential` (managed identity on Azure, `az login` elsewhere) unless a credential is
given.

Run as a command: `python -m autoretrain.deploy.azure keep-alive [--deployment NAME] [--json]`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

from autoretrain.azure_identity import COGNITIVE_SERVICES_SCOPE, token_provider
from autoretrain.training.backend import Backoff

log = logging.getLogger(__name__)

ARM_ENDPOINT = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"
ARM_API_VERSION = "2023-05-01"
TERMINAL_STATES = ("Succeeded", "Failed", "Canceled")
IDLE_DELETION_DAYS = 15
DEVELOPER_SKU = "developertier"
DEVELOPER_LIFETIME_HOURS = 24
MAX_DEPLOYMENT_NAME = 64

_HINTS = {
    "InsufficientQuota": "free quota on the account or lower the profile's deployment_capacity",
    "DeploymentModelNotSupported": "check the fine-tuned model id and that the account's region "
    "can deploy it",
    "InvalidResourceProperties": "check deployment_sku and deployment_capacity in the profile",
    "AuthenticationFailed": "sign in (az login / managed identity) for the management API",
    "AuthorizationFailed": "the identity needs the Cognitive Services Contributor role on the account",
    "ResourceNotFound": "check azure_subscription_id, azure_resource_group and azure_account",
    "ResourceGroupNotFound": "check azure_resource_group",
    "CannotChangeDeploymentModel": "a deployment's model is fixed when it is created: deploy "
    "the model under a deployment of its own (autoretrain names one per version) and move the "
    "slot to it",
}


class DeploymentError(RuntimeError):
    """A deployment could not be created, updated or read; the message says what, where and
    what to do."""


def azure_openai_client(profile: Any, credential: Any = None, use_entra_id: bool = True) -> Any:
    """An `openai.AzureOpenAI` client for a profile: Entra ID first, then the key from
    `api_key_env`. The key goes to the client and nowhere else."""
    import openai

    if not profile.azure_endpoint:
        raise DeploymentError(
            "the azure_openai profile has no azure_endpoint; set it to "
            "https://<resource>.openai.azure.com"
        )
    common = {
        "azure_endpoint": profile.azure_endpoint,
        "api_version": profile.api_version,
        "timeout": profile.timeout_s,
        "max_retries": profile.max_retries,
    }
    problem = "disabled"
    if use_entra_id:
        provider, problem = token_provider(COGNITIVE_SERVICES_SCOPE, credential)
        if provider is not None:
            return openai.AzureOpenAI(azure_ad_token_provider=provider, **common)
    key = os.environ.get(profile.api_key_env) if profile.api_key_env else None
    if not key:
        where = f"{profile.api_key_env} is not set" if profile.api_key_env else "no api_key_env"
        raise DeploymentError(
            f"no credential for {profile.azure_endpoint}: Entra ID: {problem}; API key: {where}. "
            "Sign in (az login / managed identity) or export the key variable"
        )
    return openai.AzureOpenAI(api_key=key, **common)


@dataclass
class Deployment:
    name: str
    model: str | None
    model_version: str | None
    sku: str | None
    capacity: int | None
    state: str | None
    created_at: str | None = None  # ARM systemData.createdAt (ISO 8601), when the service says

    @property
    def developer(self) -> bool:
        return (self.sku or "").lower() == DEVELOPER_SKU

    @classmethod
    def from_resource(cls, resource: dict[str, Any]) -> Deployment:
        props = resource.get("properties") or {}
        model = props.get("model") or {}
        sku = resource.get("sku") or {}
        return cls(
            name=resource.get("name", ""),
            model=model.get("name"),
            model_version=model.get("version"),
            sku=sku.get("name"),
            capacity=sku.get("capacity"),
            state=props.get("provisioningState"),
            created_at=(resource.get("systemData") or {}).get("createdAt"),
        )


def deployment_name(version_id: str, *, prefix: str = "autoretrain", tier: str = "") -> str:
    """The deployment of one model version: stable (the same version always gets the same
    name) and a valid Azure resource name (lower-case letters, digits and '-', at most 64
    characters). A version id that is not already such a name gets a short hash of itself, so
    two ids that clean up to the same text still get different deployments. A `tier` (`dev`
    for a Developer-tier deployment) ends the name: a version may have one of each at once."""
    # "--" never occurs in a cleaned stem (runs of other characters collapse to one "-"), so
    # a tier suffix cannot collide with another version's plain name.
    suffix = f"--{re.sub(r'[^a-z0-9]+', '-', tier.lower()).strip('-')}" if tier else ""
    wanted = f"{prefix}-{version_id}" if prefix else version_id
    stem = re.sub(r"[^a-z0-9]+", "-", wanted.lower()).strip("-")
    room = MAX_DEPLOYMENT_NAME - len(suffix)
    if stem != wanted or len(stem) > room:
        digest = hashlib.sha256(version_id.encode()).hexdigest()[:8]
        stem = f"{stem[: room - len(digest) - 1]}".strip("-")
        stem = f"{stem}-{digest}" if stem else f"d{digest}"
    return stem + suffix


class AzureDeployments:
    """Create, update and read the deployments of one Azure OpenAI account."""

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        account: str,
        token: Callable[[], str],
        *,
        endpoint: str = ARM_ENDPOINT,
        api_version: str = ARM_API_VERSION,
        backoff: Backoff | None = None,
        timeout_s: float = 1800.0,
        request_timeout_s: float = 60.0,
        max_retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.account = account
        self._token = token
        self.endpoint = endpoint.rstrip("/")
        self.api_version = api_version
        self.backoff = backoff or Backoff(initial_s=5.0, max_s=30.0)
        self.timeout_s = timeout_s
        self.request_timeout_s = request_timeout_s
        self.max_retries = max_retries
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def from_profile(
        cls, profile: Any, *, credential: Any = None, **kwargs: Any
    ) -> AzureDeployments:
        missing = [
            f
            for f in ("azure_subscription_id", "azure_resource_group", "azure_account")
            if not getattr(profile, f)
        ]
        if missing:
            raise DeploymentError(
                f"the profile needs {', '.join(missing)} to manage deployments (the management "
                "API names the account by subscription, resource group and account name)"
            )
        provider, problem = token_provider(ARM_SCOPE, credential)
        if provider is None:
            raise DeploymentError(
                f"no Microsoft Entra ID token for the Azure management API ({problem}); it takes "
                "no API keys: sign in with az login or use a managed identity"
            )
        return cls(
            profile.azure_subscription_id,
            profile.azure_resource_group,
            profile.azure_account,
            provider,
            endpoint=profile.management_endpoint,
            **kwargs,
        )

    def url(self, name: str) -> str:
        return (
            f"{self.endpoint}/subscriptions/{quote(self.subscription_id)}"
            f"/resourceGroups/{quote(self.resource_group)}"
            f"/providers/Microsoft.CognitiveServices/accounts/{quote(self.account)}"
            f"/deployments/{quote(name)}?api-version={self.api_version}"
        )

    def get(self, name: str) -> Deployment | None:
        status, body = self._request("GET", name)
        if status == 404:
            return None
        if status != 200:
            raise self._error("read", name, status, body)
        return Deployment.from_resource(body)

    def create(
        self,
        name: str,
        model: str,
        *,
        capacity: int = 1,
        sku: str = "standard",
        model_version: str = "1",
        wait: bool = True,
        timeout_s: float | None = None,
    ) -> Deployment:
        """Create deployment `name` serving `model` and, by default, wait until it serves. A PUT
        on an existing deployment may only change its capacity: Azure refuses another model
        (`CannotChangeDeploymentModel`). Raises DeploymentError with the service's code and
        message on any failure."""
        body = {
            "sku": {"name": sku, "capacity": capacity},
            "properties": {"model": {"format": "OpenAI", "name": model, "version": model_version}},
        }
        log.info(
            "deployment %s: create %s for %s (%s x%d)", self.account, name, model, sku, capacity
        )
        status, resource = self._request("PUT", name, body)
        if status not in (200, 201):
            raise self._error(f"create (for {model})", name, status, resource)
        if not wait:
            return Deployment.from_resource(resource)
        return self.wait_until_ready(name, timeout_s=timeout_s)

    def ensure(
        self,
        name: str,
        model: str,
        *,
        capacity: int = 1,
        sku: str = "standard",
        model_version: str = "1",
        timeout_s: float | None = None,
    ) -> tuple[Deployment, str]:
        """Deployment `name` serving `model`, ready; and what it took: "existing" (it already
        served, nothing was sent), "waited" (it was still provisioning), "created" (it did not
        exist: never made, deleted by hand, expired or deleted by Azure after 15 idle days), or
        "recreated" (it had Failed: deleted, then created again). A deployment of that name
        serving another model or on another SKU is an error, never changed."""
        current = self.get(name)
        if current is not None and (current.model, current.model_version) != (model, model_version):
            raise DeploymentError(
                f"deployment {name!r} on account {self.account} serves {current.model} "
                f"(version {current.model_version}), not {model}: Azure cannot change a "
                "deployment's model. Something else created a deployment under this name; "
                "delete it or change the profile's deployment_prefix"
            )
        if current is not None and (current.sku or "").lower() != sku.lower():
            raise DeploymentError(
                f"deployment {name!r} on account {self.account} is a {current.sku} deployment, "
                f"not {sku}; delete it (it will be created again) or change the profile's SKU"
            )
        if current is not None:
            if current.state == "Succeeded":
                return current, "existing"
            if current.state not in TERMINAL_STATES:
                return self.wait_until_ready(name, timeout_s=timeout_s), "waited"
            # Failed or Canceled: Azure will not retry it
            log.warning(
                "deployment %s ended %s; deleting and creating it again", name, current.state
            )
            self.delete(name)
        created = self.create(
            name,
            model,
            capacity=capacity,
            sku=sku,
            model_version=model_version,
            timeout_s=timeout_s,
        )
        return created, "created" if current is None else "recreated"

    def delete(self, name: str) -> bool:
        """Delete deployment `name`; False when there was none. The model survives: deploying
        it again takes minutes, not a retrain."""
        status, body = self._request("DELETE", name)
        if status == 202:  # accepted, still deleting: a create of the same name must wait
            deadline = self._clock() + self.timeout_s
            delays = self.backoff.delays()
            while self.get(name) is not None:
                if self._clock() >= deadline:
                    raise DeploymentError(
                        f"deployment {name!r} on account {self.account} still exists "
                        f"{self.timeout_s:g} s after its deletion was accepted; check the portal"
                    )
                self._sleep(next(delays))
        if status in (200, 202, 204):
            log.info("deployment %s: deleted %s", self.account, name)
            return status != 204
        if status == 404:
            return False
        raise self._error("delete", name, status, body)

    def wait_until_ready(self, name: str, *, timeout_s: float | None = None) -> Deployment:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = self._clock() + timeout_s
        delays = self.backoff.delays()
        while True:
            deployment = self.get(name)
            if deployment is None:
                raise DeploymentError(
                    f"deployment {name!r} on account {self.account} disappeared while it was "
                    "being provisioned; run the promotion again"
                )
            if deployment.state == "Succeeded":
                log.info("deployment %s serves %s", name, deployment.model)
                return deployment
            if deployment.state in TERMINAL_STATES:
                raise DeploymentError(
                    f"deployment {name!r} on account {self.account} ended {deployment.state} "
                    f"for model {deployment.model}; see the account's activity log in the Azure "
                    "portal, then run the promotion again"
                )
            if self._clock() >= deadline:
                raise DeploymentError(
                    f"deployment {name!r} on account {self.account} still {deployment.state} "
                    f"after {timeout_s:g} s; check the portal and retry"
                )
            self._sleep(max(0.0, min(next(delays), deadline - self._clock())))

    # ------------------------------------------------------------ HTTP

    def _request(self, method: str, name: str, body: dict | None = None) -> tuple[int, dict]:
        url = self.url(name)
        data = json.dumps(body).encode() if body is not None else None
        delays = self.backoff.delays()
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, data=data, method=method)
            request.add_header("Authorization", f"Bearer {self._token()}")
            if data is not None:
                request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=self.request_timeout_s) as response:
                    return response.status, _json(response.read())
            except urllib.error.HTTPError as exc:
                status, payload = exc.code, _json(exc.read())
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if status not in (429, 500, 502, 503, 504) or attempt == self.max_retries:
                    return status, payload
                problem = f"HTTP {status}"
            except (urllib.error.URLError, OSError) as exc:
                if attempt == self.max_retries:
                    raise DeploymentError(
                        f"cannot reach the Azure management API at {self.endpoint} to {method} "
                        f"deployment {name!r}: {exc}; check the network and management_endpoint"
                    ) from exc
                problem, retry_after = str(exc), None
            delay = next(delays)
            if retry_after and retry_after.isdigit():
                delay = min(float(retry_after), self.backoff.max_s)
            log.warning("%s deployment %s: %s; retrying in %.1f s", method, name, problem, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _error(self, action: str, name: str, status: int, body: dict) -> DeploymentError:
        error = body.get("error") if isinstance(body, dict) else None
        code = (error or {}).get("code") or f"HTTP {status}"
        message = (error or {}).get("message") or "no message"
        hint = _HINTS.get(code) or {
            401: _HINTS["AuthenticationFailed"],
            403: _HINTS["AuthorizationFailed"],
            404: _HINTS["ResourceNotFound"],
        }.get(status, "see the message; retry once it is fixed")
        return DeploymentError(
            f"could not {action} deployment {name!r} on Azure OpenAI account {self.account} "
            f"(resource group {self.resource_group}): HTTP {status} {code}: {message}. {hint}"
        )


def _json(raw: bytes) -> dict:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {"error": {"message": raw[:500].decode("utf-8", "replace")}}
    return value if isinstance(value, dict) else {"value": value}


# ------------------------------------------------------------ keep-alive


@dataclass
class KeepAliveResult:
    deployment: str
    ok: bool
    detail: str
    latency_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def keep_alive(
    client: Any, deployments: list[str], *, prompt: str = "ping"
) -> list[KeepAliveResult]:
    """One one-token chat request per deployment, so none sits idle long enough for Azure to
    delete it. Failures are reported, not raised: one missing deployment must not stop the rest."""
    import openai

    results = []
    for name in dict.fromkeys(deployments):
        started = time.monotonic()
        try:
            response = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": prompt}], max_tokens=1
            )
            ok, detail = True, f"answered by {response.model}"
        except openai.OpenAIError as exc:
            status = getattr(exc, "status_code", None)
            ok = False
            detail = f"HTTP {status}: {getattr(exc, 'message', exc)}" if status else str(exc)
        result = KeepAliveResult(name, ok, detail, round(time.monotonic() - started, 3))
        (log.info if ok else log.error)("keep-alive %s: %s", name, detail)
        results.append(result)
    return results


def slot_deployments(profile: Any, written: dict[str, str] | None = None) -> list[str]:
    """The deployment names a profile's slots resolve to, in slot-name order: the slot file's
    entries (`written`, what promotions wrote) over the profile's `slots`."""
    merged = {**profile.slots, **(written or {})}
    return list(dict.fromkeys(v for _, v in sorted(merged.items()) if v))
