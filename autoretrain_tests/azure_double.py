"""A loopback HTTP double of the Azure OpenAI / OpenAI fine-tuning API and the Azure management
(ARM) deployment API: services no one can run locally.

It follows the documented request and response shapes, and only those the project uses:

- Files (Azure `POST {endpoint}/openai/files?api-version=...`, OpenAI `POST /v1/files`):
  multipart form with `purpose=fine-tune` and `file`; `GET .../files/{id}` reports the status,
  `pending` (Azure) or `uploaded` (OpenAI), then `processed` or `error` with `status_details`.
- Fine-tuning jobs: `POST .../fine_tuning/jobs` (model, training_file, validation_file, suffix,
  seed, hyperparameters), `GET .../fine_tuning/jobs/{id}`, `GET .../fine_tuning/jobs/{id}/events`
  (newest first, `after` and `limit`), `POST .../fine_tuning/jobs/{id}/cancel`. Each GET of a job
  advances it one step: validating_files -> queued -> running -> succeeded | failed | cancelled.
- Chat completions on a deployment (`POST /openai/deployments/{name}/chat/completions`): a
  fixed short answer (the keep-alive only needs one), or, with `chat_upstream` set, the answer of
  an OpenAI-compatible server (e.g. `autoretrain serve`) asked for the deployment's model: a
  fine-tuned model then answers as what it was trained to be.
- With `trainer` set, a job really trains: `trainer(fine_tuned_model, base_model, train_bytes,
  validation_bytes)` runs in the background and returns the tokens it trained on; the job stays
  `running` until it returns (or `failed` with its error), as a real job takes its time.
- ARM: `PUT` / `GET` / `DELETE` on `/subscriptions/{sub}/resourceGroups/{rg}/providers/
  Microsoft.CognitiveServices/accounts/{account}/deployments/{name}?api-version=...` with body
  `{"sku": {"name", "capacity"}, "properties": {"model": {"format", "name", "version"}}}`, a
  bearer token required. As Azure does:
  - a deployment's model is fixed when it is created: a PUT naming another model on an existing
    deployment answers 400 `CannotChangeDeploymentModel` ("The model of deployment cannot be
    changed."); a PUT with the same model (a capacity change) is accepted;
  - a new deployment is `Creating`, an updated one `Accepted`; each GET advances it to
    `Succeeded` (or `Failed`, with `deployment_outcome`), `polls_per_status` GETs per state;
  - `DELETE` answers 200 (204 when there is nothing to delete); a GET of a deleted deployment
    answers 404 `DeploymentNotFound`;
  - a `DeveloperTier` deployment (SKU names are case-insensitive) lives 24 hours from creation,
    then is gone; any other fine-tuned deployment is deleted after 15 days without a chat call.
    Time is `clock` (seconds, `time.time` by default): a test moves it forward.

Switches on the instance choose the fault: `job_outcome`, `file_status`, `deployment_error`,
`deployment_outcome`, `arm_unavailable`. Every request is recorded in `requests` for the tests to
inspect.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from autoretrain_tests.loopback import LoopbackServer

TERMINAL_JOB = {"succeeded", "failed", "cancelled"}
DEVELOPER_SKU = "developertier"
DEVELOPER_LIFETIME_S = 24 * 3600
IDLE_DELETION_S = 15 * 24 * 3600
# Azure resource names of deployments: letters, digits, '_', '.', '-', up to 64 characters.
_DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$")
_ARM = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.CognitiveServices/accounts/(?P<account>[^/]+)/deployments/(?P<name>[^/]+)$"
)


class AzureDouble(LoopbackServer):
    handler_attribute = "double"
    noun = "double"

    def __init__(
        self,
        *,
        api_key: str = "double-key",
        token: str = "double-token",
        polls_per_status: int = 1,
        file_polls: int = 1,
    ):
        self.api_key = api_key
        self.token = token
        self.polls_per_status = polls_per_status  # GETs a job or deployment stays in a state
        self.file_polls = file_polls  # GETs an uploaded file stays unprocessed
        # Switches: what the next jobs, files and deployments do.
        self.job_outcome: str = "succeeded"  # or "failed", "cancelled" (cancelled by the service)
        self.file_status: str = "processed"  # or "error"
        self.deployment_error: tuple[int, str, str] | None = None  # (HTTP status, code, message)
        self.deployment_outcome: str = "Succeeded"  # or "Failed"
        self.arm_unavailable: int = 0  # the next N management calls answer 503 (then it recovers)
        self.known_models: set[str] = set()  # models a deployment may name
        self.chat_upstream: str | None = None  # an OpenAI-compatible .../v1 serving the models
        self.trainer: Any = None  # (fine_tuned_model, base, train, validation) -> tokens trained
        self.trainings: dict[str, dict[str, Any]] = {}  # job id -> {"thread", "tokens", "error"}
        self.clock: Any = time.time  # now, in seconds: lifetimes and idle deletion follow it
        # State.
        self.files: dict[str, dict[str, Any]] = {}
        self.file_contents: dict[str, bytes] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.deleted: list[tuple[str, str]] = []  # (name, why): "DELETE", "lifetime", "idle"
        self._created: dict[str, float] = {}
        self._last_call: dict[str, float] = {}
        self.chat_calls: dict[str, int] = {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._polls: dict[str, int] = {}

    # ------------------------------------------------------------ lifecycle (LoopbackServer)

    @property
    def url(self) -> str:
        return self.base_url

    def requests_to(self, method: str, path_part: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and path_part in r["path"]]

    # ------------------------------------------------------------ files

    def upload(self, fields: dict[str, str], files: dict[str, tuple[str, bytes]], azure: bool):
        purpose = fields.get("purpose")
        if purpose != "fine-tune":
            return 400, _error("invalidPayload", f"purpose must be 'fine-tune', not {purpose!r}")
        if "file" not in files:
            return 400, _error("invalidPayload", "the form has no 'file' part")
        filename, content = files["file"]
        file_id = f"file-{uuid.uuid4().hex}"
        record = {
            "object": "file",
            "id": file_id,
            "purpose": purpose,
            "filename": filename,
            "bytes": len(content),
            "created_at": int(time.time()),
            "status": "pending" if azure else "uploaded",
            "status_details": None,
        }
        with self._lock:
            self.files[file_id] = record
            self.file_contents[file_id] = content
            self._polls[file_id] = 0
        return 201, record

    def get_file(self, file_id: str):
        with self._lock:
            record = self.files.get(file_id)
            if record is None:
                return 404, _error("fileNotFound", f"File with id '{file_id}' not found.")
            if record["status"] not in ("processed", "error"):
                self._polls[file_id] += 1
                if self._polls[file_id] > self.file_polls:
                    record["status"] = self.file_status
                    if self.file_status == "error":
                        record["status_details"] = (
                            "The file is not valid JSONL: line 3 is not a JSON object."
                        )
            return 200, dict(record)

    # ------------------------------------------------------------ jobs

    def create_job(self, body: dict[str, Any]):
        model, training_file = body.get("model"), body.get("training_file")
        if not model or not training_file:
            return 400, _error("invalidPayload", "model and training_file are required")
        for key in ("training_file", "validation_file"):
            file_id = body.get(key)
            if file_id is None:
                continue
            record = self.files.get(file_id)
            if record is None or record["status"] != "processed":
                return 400, _error(
                    "invalidPayload",
                    "The specified file reference must point to a completed file import.",
                )
        job_id = f"ftjob-{uuid.uuid4().hex}"
        hyper = {"n_epochs": -1, "batch_size": -1, "learning_rate_multiplier": 1}
        hyper.update(body.get("hyperparameters") or {})
        job = {
            "object": "fine_tuning.job",
            "id": job_id,
            "model": model,
            "created_at": int(time.time()),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": "",
            "result_files": [],
            "status": "validating_files",
            "validation_file": body.get("validation_file"),
            "training_file": training_file,
            "hyperparameters": hyper,
            "trained_tokens": None,
            "error": None,
            "seed": body.get("seed", 42),
            "suffix": body.get("suffix"),
        }
        with self._lock:
            self.jobs[job_id] = job
            self.events[job_id] = []
            self._polls[job_id] = 0
            self._event(job_id, f"Job enqueued. Validating training file: {training_file}")
            if self.trainer is not None:
                self._start_training(job)
        return 200, dict(job)

    def _start_training(self, job: dict[str, Any]) -> None:
        """Train in the background (call with the lock held): the job succeeds when it is done."""
        job_id = job["id"]
        name = _fine_tuned_name(job)
        train = _without_bom(self.file_contents[job["training_file"]])
        validation = job.get("validation_file")
        validation_bytes = _without_bom(self.file_contents[validation]) if validation else None
        record: dict[str, Any] = {"tokens": None, "error": None}

        def run() -> None:
            try:
                record["tokens"] = int(self.trainer(name, job["model"], train, validation_bytes))
            except Exception as exc:  # the job fails with it, as a service's would
                record["error"] = f"{type(exc).__name__}: {exc}"

        record["thread"] = threading.Thread(target=run, name=f"train-{job_id}", daemon=True)
        self.trainings[job_id] = record
        record["thread"].start()

    def get_job(self, job_id: str):
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return 404, _error("notFound", f"Job with id '{job_id}' not found.")
            if job["status"] not in TERMINAL_JOB:
                self._polls[job_id] += 1
                if self._polls[job_id] > self.polls_per_status:
                    self._polls[job_id] = 0
                    self._advance(job)
            return 200, dict(job)

    def _advance(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        if job["status"] == "validating_files":
            job["status"] = "queued"
            self._event(job_id, "Training file validated. Job queued.")
        elif job["status"] == "queued":
            job["status"] = "running"
            self._event(job_id, "Fine-tuning job started.")
            self._event(
                job_id,
                "Step 1/2: training loss=1.2345",
                type_="metrics",
                data={"step": 1, "train_loss": 1.2345, "total_steps": 2},
            )
        elif job["status"] == "running":
            training = self.trainings.get(job_id)
            if training is not None and training["thread"].is_alive():
                return  # still training
            outcome = self.job_outcome
            if training is not None and training["error"]:
                outcome = "failed"
            job["finished_at"] = int(time.time())
            if outcome == "succeeded":
                job["status"] = "succeeded"
                job["fine_tuned_model"] = _fine_tuned_name(job)
                job["trained_tokens"] = training["tokens"] if training else 4321
                job["result_files"] = [f"file-{uuid.uuid4().hex}"]
                self.known_models.add(job["fine_tuned_model"])
                self._event(
                    job_id,
                    "Step 2/2: training loss=0.5678",
                    type_="metrics",
                    data={"step": 2, "train_loss": 0.5678, "total_steps": 2},
                )
                self._event(job_id, "The job has successfully completed")
            elif outcome == "failed":
                job["status"] = "failed"
                job["error"] = {
                    "code": "invalid_training_file",
                    "message": "The job failed due to an invalid training file: "
                    "line 7 has two consecutive assistant messages.",
                    "param": "training_file",
                }
                if training is not None and training["error"]:
                    job["error"] = {"code": "internal_error", "message": training["error"]}
                self._event(job_id, "The job failed: invalid training file", level="error")
            else:
                job["status"] = "cancelled"
                self._event(job_id, "The job was cancelled by the service operator", level="warn")

    def cancel_job(self, job_id: str):
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return 404, _error("notFound", f"Job with id '{job_id}' not found.")
            if job["status"] in TERMINAL_JOB:
                return 400, _error(
                    "invalidRequest", f"Job {job_id} has already {job['status']}; cannot cancel."
                )
            job["status"] = "cancelled"
            job["finished_at"] = int(time.time())
            self._event(job_id, "Job cancelled at the user's request", level="warn")
            return 200, dict(job)

    def list_events(self, job_id: str, query: dict[str, str]):
        with self._lock:
            if job_id not in self.jobs:
                return 404, _error("notFound", f"Job with id '{job_id}' not found.")
            newest_first = list(reversed(self.events[job_id]))
        if "after" in query:
            ids = [e["id"] for e in newest_first]
            start = ids.index(query["after"]) + 1 if query["after"] in ids else len(ids)
            newest_first = newest_first[start:]
        limit = int(query.get("limit", 20))
        page = newest_first[:limit]
        return 200, {"object": "list", "data": page, "has_more": len(newest_first) > limit}

    def _event(self, job_id: str, message: str, *, level: str = "info", type_="message", data=None):
        events = self.events[job_id]
        events.append(
            {
                "object": "fine_tuning.job.event",
                "id": f"ftevent-{len(events):04d}-{uuid.uuid4().hex[:8]}",
                "created_at": int(time.time()),
                "level": level,
                "message": message,
                "type": type_,
                "data": data or {},
            }
        )

    # ------------------------------------------------------------ chat (keep-alive)

    def chat(self, deployment: str, body: dict[str, Any]):
        with self._lock:
            self._sweep()
            found = self.deployments.get(deployment)
            ready = found and found["properties"]["provisioningState"] == "Succeeded"
            if not ready:
                return 404, _error(
                    "DeploymentNotFound",
                    "The API deployment for this resource does not exist. If you created the "
                    "deployment within the last 5 minutes, please wait a moment and try again.",
                )
            self.chat_calls[deployment] = self.chat_calls.get(deployment, 0) + 1
            self._last_call[deployment] = self.clock()
            model = found["properties"]["model"]["name"]
        if self.chat_upstream:
            import httpx

            answer = httpx.post(
                f"{self.chat_upstream.rstrip('/')}/chat/completions",
                json={**body, "model": model},
                timeout=300,
            )
            return answer.status_code, answer.json()
        return 200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }

    # ------------------------------------------------------------ ARM deployments

    def _sweep(self) -> None:
        """Remove what Azure would have removed by now (call with the lock held)."""
        now = self.clock()
        for name, resource in list(self.deployments.items()):
            if resource["sku"]["name"].lower() == DEVELOPER_SKU:
                if now - self._created[name] >= DEVELOPER_LIFETIME_S:
                    self._remove(name, "lifetime")
            elif now - self._last_call.get(name, self._created[name]) >= IDLE_DELETION_S:
                self._remove(name, "idle")

    def _remove(self, name: str, why: str) -> None:
        del self.deployments[name]
        self._created.pop(name, None)
        self._last_call.pop(name, None)
        self.deleted.append((name, why))

    def put_deployment(self, match: re.Match, body: dict[str, Any]):
        if self.deployment_error:
            status, code, message = self.deployment_error
            return status, _error(code, message)
        name = match["name"]
        if not _DEPLOYMENT_NAME.match(name):
            return 400, _error(
                "InvalidResourceName",
                f"Resource name '{name}' is invalid. The name can contain only letters, digits, "
                "'_', '.' and '-', and be 2 to 64 characters long.",
            )
        sku = body.get("sku") or {}
        model = ((body.get("properties") or {}).get("model")) or {}
        capacity = sku.get("capacity")
        if not sku.get("name") or not isinstance(capacity, int) or capacity < 1:
            return 400, _error("InvalidResourceProperties", "sku.name and sku.capacity >= 1")
        if model.get("format") != "OpenAI" or not model.get("name") or not model.get("version"):
            return 400, _error(
                "InvalidResourceProperties", "properties.model needs format, name and version"
            )
        with self._lock:
            self._sweep()
            existing = self.deployments.get(name)
            if existing is not None:
                before = existing["properties"]["model"]
                if (before["name"], before["version"]) != (model["name"], model["version"]):
                    return 400, _error(
                        "CannotChangeDeploymentModel", "The model of deployment cannot be changed."
                    )
                if existing["sku"]["name"].lower() != sku["name"].lower():
                    return 400, _error(
                        "InvalidResourceProperties",
                        f"The sku of deployment '{name}' cannot be changed from "
                        f"{existing['sku']['name']} to {sku['name']}.",
                    )
            if model["name"] not in self.known_models:
                return 400, _error(
                    "DeploymentModelNotSupported",
                    f"The model '{model['name']}' of format OpenAI and version "
                    f"'{model['version']}' is not supported.",
                )
            now = self.clock()
            created = self._created.get(name, now) if existing else now
            resource = {
                "id": match.string,
                "name": name,
                "type": "Microsoft.CognitiveServices/accounts/deployments",
                "sku": {"name": sku["name"], "capacity": capacity},
                "properties": {
                    "model": {
                        "format": "OpenAI",
                        "name": model["name"],
                        "version": model["version"],
                    },
                    "provisioningState": "Accepted" if existing else "Creating",
                },
                "systemData": {
                    "createdAt": _iso(created),
                    "lastModifiedAt": _iso(now),
                },
            }
            self.deployments[name] = resource
            self._created[name] = created
            self._polls[f"deployment:{name}"] = 0
        return (200 if existing else 201), json.loads(json.dumps(resource))

    def get_deployment(self, match: re.Match):
        name = match["name"]
        with self._lock:
            self._sweep()
            resource = self.deployments.get(name)
            if resource is None:
                return 404, _not_found(name)
            props = resource["properties"]
            if props["provisioningState"] not in ("Succeeded", "Failed"):
                key = f"deployment:{name}"
                self._polls[key] += 1
                if self._polls[key] > self.polls_per_status:
                    props["provisioningState"] = self.deployment_outcome
            return 200, json.loads(json.dumps(resource))

    def delete_deployment(self, match: re.Match):
        name = match["name"]
        with self._lock:
            self._sweep()
            if name not in self.deployments:
                return 204, None
            self._remove(name, "DELETE")
        return 200, None


def _fine_tuned_name(job: dict[str, Any]) -> str:
    """The model id Azure gives a job's result: `<base>.ft-<job id's hex>`."""
    return f"{job['model']}.ft-{job['id'].removeprefix('ftjob-')}"


def _without_bom(content: bytes) -> bytes:
    return content.removeprefix(b"\xef\xbb\xbf")


def _not_found(name: str) -> dict[str, Any]:
    return _error("DeploymentNotFound", f"Deployment '{name}' does not exist on this account.")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    double: AzureDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        double = self.double
        double.requests.append(
            {
                "method": method,
                "path": path,
                "query": query,
                "authorization": self.headers.get("Authorization"),
                "api_key": self.headers.get("api-key"),
                "body": raw if len(raw) < 100_000 else raw[:100_000],
            }
        )
        try:
            status, body = self._route(method, path, query, raw)
        except Exception as exc:  # a bug in the double must show up as a failing test
            status, body = 500, _error("doubleError", f"{type(exc).__name__}: {exc}")
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str, path: str, query: dict[str, str], raw: bytes):
        double = self.double
        arm = _ARM.match(path)
        if arm:
            if self.headers.get("Authorization") != f"Bearer {double.token}":
                return 401, _error("AuthenticationFailed", "Authentication failed.")
            if not query.get("api-version"):
                return 400, _error("MissingApiVersionParameter", "api-version is required")
            if double.arm_unavailable > 0:
                double.arm_unavailable -= 1
                return 503, _error("ServiceUnavailable", "The service is temporarily unavailable.")
            if method == "PUT":
                return double.put_deployment(arm, json.loads(raw or b"{}"))
            if method == "GET":
                return double.get_deployment(arm)
            if method == "DELETE":
                return double.delete_deployment(arm)
            return 405, _error("MethodNotAllowed", method)
        if path.startswith("/openai/"):
            azure, rest = True, path.removeprefix("/openai")
            if not query.get("api-version"):
                return 404, _error("404", "Resource not found (no api-version)")
        elif path.startswith("/v1/"):
            azure, rest = False, path.removeprefix("/v1")
        else:
            return 404, _error("notFound", path)
        if not self._authorized(azure):
            return 401, _error("401", "Access denied due to invalid subscription key or token.")
        parts = rest.strip("/").split("/")
        if parts == ["files"] and method == "POST":
            fields, files = _multipart(self.headers.get("Content-Type", ""), raw)
            return double.upload(fields, files, azure)
        if len(parts) == 2 and parts[0] == "files" and method == "GET":
            return double.get_file(parts[1])
        if parts == ["fine_tuning", "jobs"] and method == "POST":
            return double.create_job(json.loads(raw or b"{}"))
        if len(parts) >= 3 and parts[:2] == ["fine_tuning", "jobs"]:
            job_id = parts[2]
            if len(parts) == 3 and method == "GET":
                return double.get_job(job_id)
            if parts[3:] == ["events"] and method == "GET":
                return double.list_events(job_id, query)
            if parts[3:] == ["cancel"] and method == "POST":
                return double.cancel_job(job_id)
        if len(parts) == 4 and parts[0] == "deployments" and parts[2:] == ["chat", "completions"]:
            return double.chat(parts[1], json.loads(raw or b"{}"))
        return 404, _error("notFound", f"{method} {path}")

    def _authorized(self, azure: bool) -> bool:
        double = self.double
        bearer = self.headers.get("Authorization")
        if bearer in (f"Bearer {double.token}", f"Bearer {double.api_key}"):
            return True
        return azure and self.headers.get("api-key") == double.api_key


def _multipart(
    content_type: str, raw: bytes
) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    if not message.is_multipart():
        return fields, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[name] = (filename, payload)
        else:
            fields[name] = payload.decode()
    return fields, files


AzureDouble.handler = _Handler  # what LoopbackServer.start() serves
