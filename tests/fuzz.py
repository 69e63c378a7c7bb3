"""Hypothesis strategies for integer-like input: what a careless or hostile client sends where
Custody expects a whole number (query strings, path segments, JSON and form fields, Slack)."""

from urllib.parse import quote

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# The cases that broke Custody once, always tried first (unicode digits that str.isdigit()
# accepts but PostgreSQL does not, integers past bigint, negatives, floats, empty).
CLASSIC = [
    "²",
    "٣",
    "１２",
    "99999999999999999999",
    "9223372036854775808",
    "-1",
    "0",
    "1.5",
    "1e3",
    "",
    " 7",
    "+5",
    "0x10",
    "1_000",
    "\x00",
    "NaN",
]

integer_like_text = st.one_of(
    st.sampled_from(CLASSIC),
    st.text(max_size=24),
    st.text(alphabet=st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=24),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)

# Anything JSON can carry where a number is expected.
integer_like_json = st.one_of(
    integer_like_text,
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)


def in_path(value: str) -> str:
    """A value as one path segment (percent-encoded, so it stays one segment)."""
    return quote(value, safe="") or "%20"


# Examples share the test's database transaction; each example is a few requests.
bad_input = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
