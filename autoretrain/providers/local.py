"""In-process generation with transformers over any causal-LM directory, optionally with a PEFT
adapter on top.

`chat_batch` is truly batched: conversations are rendered with the model's own chat template,
left-padded, and generated together in one `model.generate` per chunk, stopping each row at the
end-of-turn token (`<|im_end|>`) or eos. Tool calls written as text are parsed into the OpenAI
shape (see `toolcalls`). The embedded tiny model and a real Hugging Face instruct model go
through the same code.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from autoretrain.providers.base import ChatResponse, Messages, ProviderError, Sampling, Tools
from autoretrain.providers.engine import Decoder
from autoretrain.providers.engine import supports as engine_supports
from autoretrain.providers.toolcalls import (
    ContentStream,
    arguments_as_objects,
    next_call_index,
    parse_tool_calls,
)
from autoretrain.training.precision import stored_dtype

log = logging.getLogger(__name__)

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>")


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base_dir(adapter_dir: Path) -> Path:
    """The base model an adapter was trained on, as recorded in its adapter_config.json."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ProviderError(
            f"{adapter_dir}/adapter_config.json names no base_model_name_or_path; "
            f"pass the base model directory explicitly"
        )
    base_path = Path(base)
    if not base_path.is_absolute() and not base_path.exists():
        base_path = (Path(adapter_dir) / base).resolve()
    return base_path


# Below this size a forward pass is a few small matrix products: intra-op threads cost more in
# synchronisation than they save (measured: a 0.5M-parameter decode step took 8 ms on one
# thread and 75 ms on two on a busy 2-core machine).
TINY_MODEL_PARAMS = 20_000_000


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    import torch

    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class LocalChatModel:
    """A model directory (+ optional adapter directory) loaded once, generating on `device`.

    `model_dir` may itself be an adapter directory: its base is read from adapter_config.json.
    `max_batch_size` bounds how many conversations are decoded together (bench/results/
    selfplay.md). Plain decoder families go through `engine.Decoder` (prefix cache, finished
    rows dropped), which groups them by the prompt length its cache leaves to compute;
    `prefix_cache=False` turns its cache off. Any other model, or any model with
    `engine=False`, uses transformers' `model.generate` on chunks sorted by prompt length.
    """

    # Conversations in one chat_batch share forward passes: the self-play runner and the
    # evaluation harness hand it whole batches instead of a thread pool.
    native_batching = True

    def __init__(
        self,
        model_dir: str | Path,
        adapter_dir: str | Path | None = None,
        name: str | None = None,
        device: str = "cpu",
        max_batch_size: int = 32,
        merge_adapter: bool = True,
        prefix_cache: bool = True,
        engine: bool = True,
    ):
        model_dir = Path(model_dir)
        if adapter_dir is None and is_adapter_dir(model_dir):
            adapter_dir, model_dir = model_dir, adapter_base_dir(model_dir)
        self.model_dir = model_dir
        self.adapter_dir = Path(adapter_dir) if adapter_dir else None
        self.name = name or (self.adapter_dir or self.model_dir).name
        self.device = device
        self.max_batch_size = max_batch_size
        self.merge_adapter = merge_adapter
        self.prefix_cache = prefix_cache
        self.engine = engine
        self._lock = threading.Lock()  # generate is not re-entrant on one model
        self._load(merge_adapter)
        self.decoder = (
            Decoder(self.model, self.stop_ids, self.pad_id, prefix_cache=prefix_cache)
            if engine and engine_supports(self.model)
            else None
        )

    def recipe(self) -> functools.partial:
        """How to load this model again: a picklable call that builds an equal copy (its
        directories and options, not its weights), for self-play worker processes."""
        return functools.partial(
            type(self),
            self.model_dir,
            self.adapter_dir,
            name=self.name,
            device=self.device,
            max_batch_size=self.max_batch_size,
            merge_adapter=self.merge_adapter,
            prefix_cache=self.prefix_cache,
            engine=self.engine,
        )

    def __repr__(self) -> str:
        adapter = f", adapter_dir={str(self.adapter_dir)!r}" if self.adapter_dir else ""
        return f"LocalChatModel({str(self.model_dir)!r}{adapter})"

    def _load(self, merge_adapter: bool) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (self.model_dir / "config.json").is_file():
            raise ProviderError(
                f"{self.model_dir} is not a model directory (no config.json); "
                f"run `autoretrain bootstrap` or point the slot at a Hugging Face model folder"
            )
        tokenizer_dir = self.model_dir
        if self.adapter_dir and (self.adapter_dir / "tokenizer_config.json").is_file():
            tokenizer_dir = self.adapter_dir
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        if self.tokenizer.chat_template is None:
            raise ProviderError(
                f"{tokenizer_dir}: the tokenizer has no chat_template; an instruct/chat model "
                f"directory is needed"
            )
        # The precision it was saved in (a bf16 checkpoint stays bf16), not float32.
        model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=stored_dtype(self.model_dir)
        )
        if self.adapter_dir:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.adapter_dir)
            if merge_adapter:
                # Same logits (REFERENCE.md: within 1e-6) and no adapter overhead per step.
                model = model.merge_and_unload()
        self.model = model.to(self.device).eval()
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.stop_ids = self._stop_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]
        self.context_length = int(
            getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30
        )

    def _stop_ids(self) -> list[int]:
        ids: list[int] = []
        vocab = self.tokenizer.get_vocab()
        for token in END_OF_TURN_TOKENS:
            if token in vocab:
                ids.append(vocab[token])
        eos = self.tokenizer.eos_token_id
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        for value in (eos, configured):
            for item in value if isinstance(value, list) else [value]:
                if item is not None and item not in ids:
                    ids.append(int(item))
        if not ids:
            raise ProviderError(f"{self.model_dir}: no end-of-turn or eos token in the tokenizer")
        return ids

    def clear_prefix_cache(self) -> None:
        """Forget every cached prompt block (and the hit counts)."""
        if self.decoder is not None and self.decoder.cache is not None:
            with self._lock:
                self.decoder.cache.clear()

    def decoder_seconds(self) -> dict[str, float]:
        """Seconds the decoder spent since it was loaded: prefill forward passes, decode steps,
        and all of its generate calls (empty without the decoder)."""
        return dict(self.decoder.seconds) if self.decoder is not None else {}

    def prefix_cache_hit_rate(self) -> float:
        """Share of prompt tokens served from the prefix cache since it was last cleared."""
        cache = self.decoder.cache if self.decoder is not None else None
        if cache is None or not cache.hits + cache.misses:
            return 0.0
        return cache.hits / (cache.hits + cache.misses)

    # -- calls ----------------------------------------------------------------------------

    def chat(
        self, messages: Messages, tools: Tools | None = None, sampling: Sampling = Sampling()
    ) -> ChatResponse:
        return self.chat_batch([messages], [tools], sampling)[0]

    def chat_batch(
        self,
        conversations: Sequence[Messages],
        tools: Sequence[Tools | None],
        sampling: Sampling = Sampling(),
    ) -> list[ChatResponse]:
        if len(conversations) != len(tools):
            raise ValueError(f"{len(conversations)} conversations but {len(tools)} tool lists")
        prompts = [self.render(m, t) for m, t in zip(conversations, tools, strict=True)]
        encoded = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        results: list[ChatResponse | None] = [None] * len(prompts)
        fits: list[int] = []
        for i, ids in enumerate(encoded):
            if len(ids) + 1 > self.context_length:
                results[i] = self._overflow(len(ids))
            else:
                fits.append(i)
        if self.decoder is not None:
            chunks = [fits] if fits else []  # the decoder groups by what its cache leaves to do
        else:
            fits.sort(key=lambda i: len(encoded[i]))  # similar lengths: less padding
            size = self.max_batch_size
            chunks = [fits[start : start + size] for start in range(0, len(fits), size)]
        for chunk in chunks:
            t0 = time.perf_counter()
            try:
                generated = self._generate([encoded[i] for i in chunk], sampling)
            except (RuntimeError, ValueError, IndexError) as exc:  # torch's errors (OOM, device)
                raise ProviderError(
                    f"{self.name}: generation failed for a batch of {len(chunk)}: {exc}"
                ) from exc
            elapsed = time.perf_counter() - t0
            for i, (tokens, stopped) in zip(chunk, generated, strict=True):
                results[i] = self._response(
                    conversations[i], len(encoded[i]), tokens, stopped, elapsed
                )
        return [r for r in results if r is not None]

    def stream(
        self, messages: Messages, tools: Tools | None = None, sampling: Sampling = Sampling()
    ) -> Iterator[str | ChatResponse]:
        """Content as it is generated (each piece extends what the final content starts with;
        tool-call text is held back), then the finished ChatResponse, parsed as `chat` would."""
        from transformers import TextIteratorStreamer

        ids = self.tokenizer(self.render(messages, tools), add_special_tokens=False)["input_ids"]
        if len(ids) + 1 > self.context_length:
            yield self._overflow(len(ids))
            return
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=False)
        outcome: dict[str, Any] = {}

        def run() -> None:
            t0 = time.perf_counter()
            try:
                outcome["generated"] = self._generate([ids], sampling, streamer)
            except BaseException as exc:  # re-raised in the consuming thread below
                outcome["error"] = exc
                streamer.end()  # unblock the consumer; generate never reached its own end()
            outcome["elapsed"] = time.perf_counter() - t0

        thread = threading.Thread(target=run, name=f"stream-{self.name}", daemon=True)
        thread.start()
        gate = ContentStream([self.tokenizer.decode([i]) for i in self.stop_ids])
        for piece in streamer:
            content = gate.feed(piece)
            if content:
                yield content
        thread.join()
        if "error" in outcome:
            raise ProviderError(f"{self.name}: generation failed: {outcome['error']}") from outcome[
                "error"
            ]
        [(tokens, stopped)] = outcome["generated"]
        yield self._response(messages, len(ids), tokens, stopped, outcome["elapsed"])

    def render(self, messages: Messages, tools: Tools | None) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                arguments_as_objects(messages),
                tools=tools or None,
                add_generation_prompt=True,
                tokenize=False,
            )
        except Exception as exc:  # jinja raises its own types for a template's own checks
            raise ProviderError(
                f"{self.name}: the chat template rejected the conversation: {exc}"
            ) from exc

    def _generate(
        self, rows: list[list[int]], sampling: Sampling, streamer: Any = None
    ) -> list[tuple[list[int], bool]]:
        """Generate for one chunk; each row's new tokens (stop token excluded) and whether it
        stopped on its own. A `streamer` (one row only) receives tokens as they come."""
        import torch
        from transformers import GenerationConfig

        width = max(len(r) for r in rows)
        max_new = max(1, min(sampling.max_tokens, self.context_length - width))
        threads = 1 if self.n_params < TINY_MODEL_PARAMS else None
        if self.decoder is not None:
            with self._lock, _threads(threads):
                decoded = self.decoder.generate(
                    rows,
                    max_new,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    seed=sampling.seed,
                    max_batch=self.max_batch_size,
                    streamer=streamer,
                )
            return [(d.tokens, d.stopped) for d in decoded]
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):
            input_ids[j, width - len(row) :] = torch.tensor(row)
            attention[j, width - len(row) :] = 1
        sample = sampling.temperature > 0
        # OpenAI semantics: temperature and top_p only. top_k=0 switches off the top-50 filter
        # transformers would otherwise add (None means "use the default", which is 50).
        knobs = (
            {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
            if sample
            else {}
        )
        config = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=sample,
            # Training saves use_cache=False (packing needs it); generation without the KV cache
            # recomputes the whole sequence at every step, ~10x slower.
            use_cache=True,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            bos_token_id=None,
            **knobs,
        )
        with (
            self._lock,
            torch.inference_mode(),
            torch.random.fork_rng(devices=[]),
            _threads(threads),
        ):
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                generation_config=config,
                streamer=streamer,
            )
        new = output[:, width:].tolist()
        stops = set(self.stop_ids)
        out = []
        for tokens in new:
            cut = next((k for k, t in enumerate(tokens) if t in stops), None)
            out.append((tokens, False) if cut is None else (tokens[:cut], True))
        return out

    def _response(
        self,
        messages: Messages,
        prompt_tokens: int,
        tokens: list[int],
        stopped: bool,
        elapsed: float,
    ) -> ChatResponse:
        text = self.tokenizer.decode(tokens, skip_special_tokens=False)
        parsed = parse_tool_calls(text, next_call_index(messages))
        if not stopped:
            finish = "length"
        elif parsed.tool_calls:
            finish = "tool_calls"
        else:
            finish = "stop"
        return ChatResponse(
            message=parsed.message(),
            # A stop token is generated and counted, as OpenAI counts it.
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens) + (1 if stopped else 0),
            latency_s=elapsed,
            finish_reason=finish,
            model=self.name,
            notes=parsed.notes,
        )

    def _overflow(self, prompt_tokens: int) -> ChatResponse:
        return ChatResponse(
            message={"role": "assistant", "content": None},
            prompt_tokens=prompt_tokens,
            completion_tokens=0,
            finish_reason="length",
            model=self.name,
            notes=[
                {
                    "type": "context_overflow",
                    "detail": f"prompt of {prompt_tokens} tokens leaves no room in the "
                    f"{self.context_length}-token context",
                }
            ],
        )
