"""The capture gateway: an OpenAI-compatible endpoint an agent points its base URL at.

Each chat completion is forwarded to the target its slot resolves to (`targets.py`), grouped
into a run (`grouping.py`) and, when the run is closed or idle, written into the landing zone
(`recorder.py`); `app.py` is the HTTP app, `autoretrain gateway` runs it. docs/gateway.md is the
user's guide.
"""

from autoretrain.gateway.app import Gateway, create_app
from autoretrain.gateway.grouping import RunBook
from autoretrain.gateway.recorder import Recorder
from autoretrain.gateway.targets import SlotResolver, Target

__all__ = ["Gateway", "Recorder", "RunBook", "SlotResolver", "Target", "create_app"]
