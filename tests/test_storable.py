"""The storable field types refuse what Postgres cannot hold, and accept its whole range."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from chatbeto.storable import BigInt, Bool, Json, Text, Timestamp
from pydantic import BaseModel, ValidationError


class Model(BaseModel):
    t: Timestamp | None = None
    s: Text = ""
    b: Bool = False
    i: BigInt = 0
    j: Json = None


@pytest.mark.parametrize(
    "body",
    [
        {"t": "9999-12-31T23:59:59-14:00"},
        {"t": "0001-01-01T00:00:00Z"},
        {"t": 1700000000},
        {"t": "1700000000"},
        {"t": "1700000000.5"},
        {"t": "1.7e9"},
        {"t": " 17E8 "},
        {"t": "2024-01-01"},
        {"t": "2024-01-01T00:00:00"},
        {"s": "a\x00b"},
        {"b": 0},
        {"i": 2**63},
        {"j": {"a": ["x\x00"]}},
        {"j": {"a\x00": 1}},
    ],
)
def test_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        Model.model_validate(body)
    assert caught.value.errors()[0]["loc"][0] in body


def test_accepted_edges() -> None:
    ok = Model.model_validate(
        {"t": "9999-12-31T23:59:59Z", "s": "é\n", "b": True, "i": 2**63 - 1, "j": {"a": [1]}}
    )
    assert isinstance(ok.t, datetime) and ok.t.year == 9999
    assert Model.model_validate({"t": "0001-01-01T00:00:01Z"}).t is not None
