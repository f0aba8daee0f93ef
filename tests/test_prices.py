"""The price table: shipped prices, PRICES_FILE overrides, exact costs, and bad files stopping
start-up with one line naming the file and the entry."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from chatbeto import prices

CHATBETO = str(Path(sys.executable).with_name("chatbeto"))


@pytest.fixture
def price_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "models": {
                    "test-model": {"input": 1.5, "cached_input": 0.25, "output": 4},
                    "gpt-4o": {"input": 100, "output": 200},
                    "no-cache-model": {"input": 3, "output": 6},
                }
            }
        )
    )
    return path


def test_shipped_table_is_dated_and_covers_openai_families() -> None:
    table = prices.shipped()
    assert table.taken is not None and table.taken[:4].isdigit()
    assert table.source and "litellm" in table.source.lower()
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-5", "o3", "o4-mini"):
        price = table.price(model)
        assert price is not None and price.cached_input is not None, model
    embedding = table.price("text-embedding-3-small")
    assert embedding is not None and embedding.output == 0


def test_exact_cost_of_a_test_price_file_with_cached_tokens(price_file: Path) -> None:
    table = prices.load(price_file)
    # 1000 input tokens of which 400 cached, 50 output:
    # 600 * 1.5 + 400 * 0.25 + 50 * 4 = 900 + 100 + 200 = 1200 USD per 1M -> 0.0012
    assert table.cost("test-model", 1000, 400, 50) == Decimal("0.0012")
    # No cached-input price: cached tokens cost the input price.
    assert table.cost("no-cache-model", 1000, 400, 0) == Decimal("0.003")
    # More cached than input (a confused upstream) never makes a negative count.
    assert table.cost("test-model", 10, 50, 0) == Decimal("0.0000025")


def test_file_overrides_and_adds_models(price_file: Path) -> None:
    table = prices.load(price_file)
    overridden = table.price("gpt-4o")
    assert overridden is not None and overridden.input == 100 and overridden.cached_input is None
    assert table.price("gpt-4o-mini") == prices.shipped().price("gpt-4o-mini")
    assert table.price("TEST-MODEL") is not None  # names are case-insensitive


def test_dated_model_falls_back_to_its_family_and_unknown_is_none() -> None:
    table = prices.shipped()
    family = table.price("gpt-4o")
    assert table.price("gpt-4o-2024-08-06") == family
    assert table.price("gpt-4-0613") == table.price("gpt-4")
    # A snapshot with its own (different) price keeps it.
    assert table.price("gpt-4o-2024-05-13") != family
    for unknown in ("gpt-unknown", "ft:gpt-4o-mini:org::abc", "", None, "my-model-2024-01-01"):
        assert table.cost(unknown, 100, 0, 100) is None


@pytest.mark.parametrize(
    ("name", "content", "names"),
    [
        ("bad.json", '{"models": {"m1": {"input": -1, "output": 1}}}', "models.m1.input"),
        ("bad.json", '{"models": {"m2": {"input": 1}}}', "models.m2"),
        ("bad.json", '{"models": {"m3": {"input": 1, "output": 1, "cache": 1}}}', "models.m3"),
        ("bad.json", '{"models": {"m4": {"input": "lots", "output": 1}}}', "models.m4.input"),
        ("bad.json", '{"models": [', "not valid JSON"),
        ("bad.yaml", "models:\n  m5: {input: 1, output: [2]}\n", "models.m5.output"),
        ("bad.yaml", "models:\n  m6: [1\n", "not valid YAML"),
        ("bad.yaml", "prices: {}\n", "models"),
    ],
)
def test_bad_prices_file_stops_start_up_with_one_line(
    tmp_path: Path, env: dict[str, str], name: str, content: str, names: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    # The worker prices calls; the gateway reads the same setting (the first case checks both).
    services = ("gateway", "openai-worker") if names == "models.m1.input" else ("gateway",)
    for service in services:
        done = subprocess.run(
            [CHATBETO, "run", service],
            env={**env, "PRICES_FILE": str(path)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("configuration error: PRICES_FILE: ")
        assert str(path) in lines[0] and names in lines[0]


def test_missing_prices_file_names_it(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "nowhere.yaml"
    done = subprocess.run(
        [CHATBETO, "run", "gateway"],
        env={**env, "PRICES_FILE": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"configuration error: PRICES_FILE: {path}: cannot be read (FileNotFoundError)"
    ]


def test_yaml_prices_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.yml"
    path.write_text("models:\n  local-llm: {input: 0.5, output: 1.5}\n")
    assert prices.load(path).cost("local-llm", 2_000_000, 0, 1_000_000) == Decimal("2.5")
