"""What a model call costs: a price table per model (USD per 1M input, cached-input and output
tokens) and the cost of one call's usage.

The shipped table (`data/openai_prices.json`) holds OpenAI's chat, reasoning and embedding
models with the date it was taken; `PRICES_FILE` (JSON or YAML, same shape) adds or overrides
models. A dated snapshot (`gpt-4o-2024-08-06`, `gpt-4-0613`) without its own entry costs what
its family (`gpt-4o`, `gpt-4`) costs; any other unknown model costs None, never a guess.
Amounts are `Decimal` end to end, so a cost is exact and sums are exact in Postgres `numeric`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

TOKENS_PER_UNIT = Decimal(1_000_000)
# `-2024-08-06` (OpenAI's snapshots since 2024) or `-0613` (the older ones).
DATED_RE = re.compile(r"^(?P<family>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
PRICE_FIELDS = frozenset({"input", "cached_input", "output"})
REQUIRED_FIELDS = ("input", "output")
MAX_PRICE_USD = Decimal(1_000_000)  # per 1M tokens; anything above is a typo
MAX_MODEL_CHARS = 200


class PricesError(ValueError):
    """A prices file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens. Without a cached-input price, cached tokens cost the input price (as
    OpenAI bills models that have no cache discount)."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None

    def cost(self, input_tokens: int, cached_input_tokens: int, output_tokens: int) -> Decimal:
        cached = min(max(cached_input_tokens, 0), max(input_tokens, 0))
        fresh = max(input_tokens, 0) - cached
        cached_price = self.input if self.cached_input is None else self.cached_input
        total = fresh * self.input + cached * cached_price + max(output_tokens, 0) * self.output
        return total / TOKENS_PER_UNIT


@dataclass(frozen=True)
class PriceTable:
    models: dict[str, Price]
    taken: str | None = None
    source: str | None = None

    def price(self, model: str | None) -> Price | None:
        if not model:
            return None
        name = model.strip().lower()
        found = self.models.get(name)
        if found is None and (dated := DATED_RE.match(name)):
            found = self.models.get(dated.group("family"))
        return found

    def cost(
        self, model: str | None, input_tokens: int, cached_input_tokens: int, output_tokens: int
    ) -> Decimal | None:
        """The call's cost in USD; None for a model the table does not know."""
        price = self.price(model)
        if price is None:
            return None
        return price.cost(input_tokens, cached_input_tokens, output_tokens)

    def merged(self, other: PriceTable) -> PriceTable:
        return PriceTable({**self.models, **other.models}, self.taken, self.source)


def _amount(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise PricesError(f"{where}: must be a number of USD per 1M tokens")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise PricesError(f"{where}: must be a number of USD per 1M tokens") from None
    if not amount.is_finite() or amount < 0 or amount > MAX_PRICE_USD:
        raise PricesError(f"{where}: must be between 0 and {MAX_PRICE_USD} USD per 1M tokens")
    return amount


def parse(document: Any, origin: str) -> PriceTable:
    """A table from a decoded document `{"models": {name: {input, cached_input?, output}}}`."""
    if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
        raise PricesError(f"{origin}: expected a top-level `models` mapping")
    models: dict[str, Price] = {}
    for name, entry in document["models"].items():
        where = f"{origin}: models.{name}"
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_MODEL_CHARS:
            raise PricesError(f"{where}: a model name must be 1-{MAX_MODEL_CHARS} characters")
        if not isinstance(entry, dict):
            raise PricesError(f"{where}: expected a mapping with input, output, cached_input")
        unknown = sorted(set(map(str, entry)) - PRICE_FIELDS)
        if unknown:
            raise PricesError(f"{where}: unknown field {unknown[0]!r} (use {sorted(PRICE_FIELDS)})")
        missing = [f for f in REQUIRED_FIELDS if f not in entry]
        if missing:
            raise PricesError(f"{where}: missing {missing[0]!r}")
        cached = entry.get("cached_input")
        models[name.strip().lower()] = Price(
            input=_amount(entry["input"], f"{where}.input"),
            output=_amount(entry["output"], f"{where}.output"),
            cached_input=None if cached is None else _amount(cached, f"{where}.cached_input"),
        )
    taken = document.get("taken")
    source = document.get("source")
    return PriceTable(
        models,
        taken if isinstance(taken, str) else None,
        source if isinstance(source, str) else None,
    )


def read_file(path: Path) -> PriceTable:
    """A prices file: YAML if it ends in .yaml/.yml, else JSON."""
    origin = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PricesError(f"{origin}: cannot be read ({exc.__class__.__name__})") from None
    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    try:
        document = yaml.safe_load(text) if yaml_file else json.loads(text, parse_float=Decimal)
    except (ValueError, yaml.YAMLError) as exc:
        # One line: YAML's messages span several (the mark, a caret).
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        kind = "YAML" if yaml_file else "JSON"
        raise PricesError(f"{origin}: not valid {kind}: {first}") from None
    return parse(document, origin)


def shipped() -> PriceTable:
    text = resources.files("chatbeto").joinpath("data/openai_prices.json").read_text("utf-8")
    return parse(json.loads(text, parse_float=Decimal), "shipped prices")


def load(path: Path | None) -> PriceTable:
    """The shipped table, with the entries of `path` added or overriding (raises PricesError)."""
    table = shipped()
    return table if path is None else table.merged(read_file(path))


def usd(amount: Decimal | None) -> float | None:
    """A cost as a JSON number (exact to the cent and far below; sums stay exact in SQL)."""
    return None if amount is None else float(amount)
