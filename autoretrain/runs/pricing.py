"""Token prices per model, as configured.

A fine-tuned model id (e.g. `ft:gpt-4o-mini:acme::abc123`, or an Azure deployment of one) is
priced by its own entry, never by its base model's: hosted fine-tunes bill differently.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoretrain.settings import Price


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, Price]
    default: Price | None = None  # for models with no entry; None means "unpriced"

    def price(self, model: str) -> Price | None:
        return self.prices.get(model, self.default)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for one call, or None when the model has no price (never silently $0)."""
        price = self.price(model)
        if price is None:
            return None
        return (
            prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok
        ) / 1_000_000

    @classmethod
    def from_settings(cls, settings) -> PriceTable:  # type: ignore[no-untyped-def]
        prices = dict(settings.pricing)
        default = prices.pop("*", None)
        # In-process models cost nothing per token; remote ones must be priced explicitly.
        if default is None and settings.profile.kind in ("local", "scripted"):
            default = Price()
        return cls(prices=prices, default=default)
