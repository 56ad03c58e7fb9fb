"""Control requests drawn by hypothesis for bench/chaos.py, seeded by the campaign.

Objects near the protocol's shape (real command names, versions close to 1,
fields the commands read) with any JSON in their values. A valid ``stop``,
``upgrade`` or ``reload`` is filtered out: the first ends the service, and the
others have fault kinds of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_SHAPED = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 0, 2, True, 1.0, "1", None]) | VALUES,
        "cmd": st.sampled_from(["help", "status", "reload", "stop", "upgrade", "", "STATUS"])
        | VALUES,
    },
    optional={"python": VALUES, "generation": VALUES},
)
REQUESTS = st.tuples(_SHAPED, st.dictionaries(st.text(max_size=10), VALUES, max_size=3)).map(
    lambda parts: {**parts[1], **parts[0]}
)


def harmless(request: dict[str, Any]) -> bool:
    return not (request.get("v") == 1 and request.get("cmd") in ("stop", "upgrade", "reload"))


def fuzz_requests(send: Callable[[dict[str, Any]], None], seed_value: int, examples: int) -> None:
    """Call ``send`` with ``examples`` requests drawn from the seed (no shrinking)."""

    @seed(seed_value)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(REQUESTS.filter(harmless))
    def run(request: dict[str, Any]) -> None:
        send(request)

    run()
