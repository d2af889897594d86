from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from goalhorn.ingest.stream import ObjectSplitter

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
OBJECTS = st.dictionaries(st.text(max_size=6), VALUES, max_size=4)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(OBJECTS, min_size=1, max_size=6),
    st.lists(st.sampled_from(["", " ", "\n", "\r\n"]), min_size=6, max_size=6),
    st.data(),
)
def test_objects_come_out_whole_wherever_the_reads_split_them(objects, gaps, data) -> None:
    stream = "".join(
        json.dumps(obj, ensure_ascii=False) + gap for obj, gap in zip(objects, gaps, strict=False)
    ).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    splitter = ObjectSplitter()
    pieces = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        pieces += splitter.feed(stream[start:end])
    pieces += splitter.close()
    assert all(p.ok for p in pieces)
    assert [json.loads(p.text) for p in pieces] == objects
