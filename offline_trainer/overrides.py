"""`FIELD=VALUE` command-line overrides of a config dataclass (`--set`, `--policy-set`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from wmpo_core.errors import WmpoError


def parse_field_overrides(items: Sequence[str], config_cls: type, flag: str = "--set") -> dict:
    """`["lr=1e-5", "cameras=[\"a\"]"]` -> {"lr": 1e-05, "cameras": ["a"]}.

    Values are JSON (numbers, lists, true/false); a string field also takes a bare word.
    A FIELD that `config_cls` does not have is refused with the valid names.
    """
    types = {f.name: str(f.type) for f in dataclasses.fields(config_cls)}
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise WmpoError(
                f"{flag} {item}: expected FIELD=VALUE with FIELD one of {sorted(types)}"
            )
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            if not types[key].startswith("str"):  # a number typo must not become a string
                raise WmpoError(
                    f"{flag} {item}: {value!r} is not a JSON value ({key} is {types[key]})"
                ) from None
            overrides[key] = value
    return overrides
