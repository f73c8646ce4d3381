"""Compression plans: matching (most specific, then later, wins), JSON round trips, errors."""

import json

import pytest

from nxm_kernels.plan import COMPONENTS, Plan, layer_name, qkv_members
from nxm_kernels.spec import parse_spec

NAMES = [layer_name(i, c) for i in range(12) for c in COMPONENTS]


def specs(plan: Plan, names=NAMES) -> dict[str, str]:
    return {n: str(s) for n, s in plan.resolve(names).items()}


def test_layer_names_and_components():
    assert COMPONENTS == ("query", "key", "value", "attn_out", "ffn1", "ffn2")
    assert layer_name(3, "ffn2") == "layer.3.ffn2"


def test_one_linear_computing_query_key_and_value_takes_their_spec():
    """``layer.<i>.qkv`` (a checkpoint's own fused projection) resolves to the spec of its three components, by
    the usual rules; patterns naming any of them (or the site) match it; different specs are an error."""
    names = [layer_name(i, c) for i in range(2) for c in ("qkv", "attn_out", "ffn1", "ffn2")]
    plan = Plan({"*": "2:4-w8a8", "layer.1": "dense-w8a8", "ffn2": "fp"})
    assert specs(plan, names) == {"layer.0.qkv": "2:4-w8a8", "layer.0.attn_out": "2:4-w8a8", "layer.0.ffn1": "2:4-w8a8",
                                  "layer.0.ffn2": "fp", "layer.1.qkv": "dense-w8a8", "layer.1.attn_out": "dense-w8a8",
                                  "layer.1.ffn1": "dense-w8a8", "layer.1.ffn2": "dense-w8a8"}
    same = Plan({"query": "dense-w4a8", "key": "dense-w4a8", "value": "dense-w4a8", "layer.1.qkv": "2:4-w4a8"})
    assert same.unmatched(names) == [] and specs(same, names)["layer.0.qkv"] == "dense-w4a8"
    assert specs(same, names)["layer.1.qkv"] == "2:4-w4a8" and specs(same, names)["layer.1.ffn1"] == "fp"
    # The most specific entry per component: layer.0 (2 points) beats query, layer.0.key (3) beats layer.0.
    with pytest.raises(ValueError, match=r"layer.0.qkv: .* plan gives query=dense-w8a8, key=2:4-w4a8, "
                                         r"value=dense-w8a8"):
        Plan({"query": "2:4-w8a8", "layer.0": "dense-w8a8", "layer.0.key": "2:4-w4a8"}).resolve(names)
    with pytest.raises(ValueError, match=r"layer.0.qkv: .* plan gives query=2:4-w8a8, key=fp, value=fp"):
        Plan({"query": "2:4-w8a8"}).spec_for("layer.0.qkv")
    assert Plan({"layer.5.query": "2:4-w8a8"}).unmatched(names) == ["layer.5.query"]
    assert qkv_members("layer.3.qkv") == ("layer.3.query", "layer.3.key", "layer.3.value")
    assert qkv_members("layer.3.ffn1") == ("layer.3.ffn1",) and qkv_members("encoder.qkv") == ("encoder.qkv",)


def test_star_component_layer_and_exact():
    plan = Plan({"*": "2:4-w8a8", "ffn2": "dense-w8a8", "layer.3": "2:4-w4a8", "layer.3.ffn2": "fp"})
    got = specs(plan)
    assert got["layer.0.query"] == "2:4-w8a8"
    assert got["layer.0.ffn2"] == "dense-w8a8"
    assert got["layer.3.query"] == "2:4-w4a8"
    assert got["layer.3.ffn2"] == "fp"
    assert got["layer.11.ffn2"] == "dense-w8a8"


def test_specificity_beats_order():
    """Reversed order gives the same answer: specificity decides before position."""
    entries = [("*", "2:4-w8a8"), ("ffn2", "dense-w8a8"), ("layer.3", "2:4-w4a8"), ("layer.3.ffn2", "fp")]
    assert specs(Plan(entries)) == specs(Plan(list(reversed(entries))))


def test_later_wins_among_equals():
    a = Plan([("layer.[0-5].query", "2:4-w8a8"), ("layer.[3-8].query", "2:4-w4a8")])
    b = Plan([("layer.[3-8].query", "2:4-w4a8"), ("layer.[0-5].query", "2:4-w8a8")])
    assert str(a.spec_for("layer.4.query")) == "2:4-w4a8"
    assert str(b.spec_for("layer.4.query")) == "2:4-w8a8"
    assert str(a.spec_for("layer.1.query")) == "2:4-w8a8" and str(a.spec_for("layer.7.query")) == "2:4-w4a8"
    # A component name and its glob spelling are equally specific: the later one wins.
    c = Plan([("ffn1", "dense-w8a8"), ("layer.*.ffn1", "dense-w4a8")])
    assert str(c.spec_for("layer.2.ffn1")) == "dense-w4a8"
    # A repeated pattern: the last occurrence wins.
    d = Plan([("*", "2:4-w8a8"), ("*", "dense-w4a8")])
    assert str(d.spec_for("layer.0.key")) == "dense-w4a8"


def test_specificity_ladder():
    # * (0) < component or glob layer (1) < layer.<i> (2) < layer.<i>.<component> (3), any order.
    plan = Plan([("layer.5.value", "dense-w4a8"), ("layer.5", "dense-w8a8"), ("value", "2:4-w4a8"),
                 ("*", "2:4-w8a8")])
    assert str(plan.spec_for("layer.5.value")) == "dense-w4a8"
    assert str(plan.spec_for("layer.5.key")) == "dense-w8a8"
    assert str(plan.spec_for("layer.6.value")) == "2:4-w4a8"
    assert str(plan.spec_for("layer.6.key")) == "2:4-w8a8"
    # layer.<i>.* is as specific as layer.<i>; a glob on both parts is as specific as '*'.
    plan = Plan([("layer.2.*", "dense-w8a8"), ("layer.2", "2:4-w4a8"), ("layer.[0-9].[qk]*", "fp")])
    assert str(plan.spec_for("layer.2.query")) == "2:4-w4a8"


def test_unmatched_layers_stay_fp_and_empty_plan():
    plan = Plan({"ffn1": "2:4-w8a8"})
    assert plan.spec_for("layer.0.query").is_fp
    assert all(s.is_fp for s in Plan().resolve(NAMES).values())
    assert Plan().entries == [] and Plan().to_dict() == {}


def test_single_spec_string_and_copy():
    plan = Plan.coerce("2:4-w4a8")
    assert plan.entries == [("*", "2:4-w4a8")]
    assert set(specs(plan).values()) == {"2:4-w4a8"}
    copy = Plan(plan)
    assert copy == plan and copy is not plan and copy.entries is not plan.entries


def test_layer_glob_prefix_expansion():
    plan = Plan({"layer.1*": "dense-w8a8"})  # layers 1, 10, 11
    got = specs(plan)
    assert {n.split(".")[1] for n, s in got.items() if s == "dense-w8a8"} == {"1", "10", "11"}


def test_specs_are_normalised():
    plan = Plan({"*": " 2:4-w8a8 ", "ffn2": parse_spec("dense-w4a8")})
    assert plan.to_dict() == {"*": "2:4-w8a8", "ffn2": "dense-w4a8"}


def test_strict_resolve_reports_patterns_matching_nothing():
    plan = Plan({"*": "2:4-w8a8", "layer.12.query": "fp"})
    with pytest.raises(ValueError, match=r"plan pattern 'layer.12.query' matches no layer; layers are: layer.0.query"):
        plan.resolve(NAMES)
    with pytest.raises(ValueError, match="components: query, key, value, attn_out, ffn1, ffn2"):
        Plan({"fnn1": "2:4-w8a8"}).resolve(NAMES)  # a typo
    relaxed = plan.resolve(NAMES, strict=False)
    assert set(map(str, relaxed.values())) == {"2:4-w8a8"}


def test_json_round_trip(tmp_path):
    plan = Plan([("*", "2:4-w8a8"), ("ffn2", "dense-w8a8"), ("layer.[0-3].query", "fp"), ("layer.3", "2:4-w4a8")])
    text = plan.to_json()
    assert json.loads(text) == plan.to_dict()
    assert list(json.loads(text)) == ["*", "ffn2", "layer.[0-3].query", "layer.3"]  # order kept
    again = Plan.from_json(text)
    assert again == plan and specs(again) == specs(plan)
    path = tmp_path / "plan.json"
    plan.to_json(path)
    assert Plan.from_json(path) == plan and Plan.from_json(str(path)) == plan
    assert path.read_text().endswith("\n")


def test_to_dict_with_repeated_pattern_keeps_meaning():
    plan = Plan([("layer.[0-3].query", "2:4-w8a8"), ("layer.[2-5].query", "2:4-w4a8"),
                 ("layer.[0-3].query", "dense-w8a8")])
    again = Plan.from_json(plan.to_json())
    assert list(again.to_dict()) == ["layer.[2-5].query", "layer.[0-3].query"]
    assert specs(again) == specs(plan)
    assert str(plan.spec_for("layer.2.query")) == "dense-w8a8"


@pytest.mark.parametrize("text,match", [
    ("{not json", "plan is not valid JSON"),
    ("no_such_file.json", "plan must be a JSON object or a path to one"),
    ('{"*": "2:4-w3a8"}', "weight bits must be one of"),
    ('{"*": 5}', None),
])
def test_from_json_errors(text, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Plan.from_json(text)


def test_from_json_file_holding_a_list(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('["2:4-w8a8"]')
    with pytest.raises(ValueError, match="plan JSON must be an object"):
        Plan.from_json(path)


@pytest.mark.parametrize("entries,exc,match", [
    ([("*",)], TypeError, "plan entries must be \\(pattern, spec\\) pairs"),
    (["*"], TypeError, "plan entries must be"),
    ([("", "fp")], ValueError, "plan pattern must be a non-empty str"),
    ([(3, "fp")], ValueError, "plan pattern must be a non-empty str"),
    ({"*": "sparse"}, ValueError, "spec must look like"),
    (None, TypeError, "plan must be a mapping"),
    (5, TypeError, "plan must be a mapping"),
])
def test_constructor_errors(entries, exc, match):
    with pytest.raises(exc, match=match):
        Plan(entries)


def test_equality_and_repr():
    assert Plan({"*": "fp"}) == Plan([("*", "fp")])
    assert Plan({"*": "fp"}) != Plan({"*": "2:4-w8a8"})
    assert Plan({"*": "fp"}) != {"*": "fp"}
    assert repr(Plan({"ffn1": "dense-w8a8"})) == "Plan({'ffn1': 'dense-w8a8'})"


def test_coerce_accepts_every_plan_form(tmp_path):
    want = Plan({"*": "2:4-w8a8", "ffn2": "dense-w8a8"})
    path = tmp_path / "plan.json"
    want.to_json(path)
    assert Plan.coerce(want) is want
    for plan in (want.to_dict(), list(want.to_dict().items()), tuple(want.to_dict().items()), want.to_json(),
                 "  " + want.to_json(), str(path)):
        assert Plan.coerce(plan) == want, plan
    assert Plan.coerce("2:4-w8a8") == Plan({"*": "2:4-w8a8"})


@pytest.mark.parametrize("plan,exc,match", [
    (3, TypeError, "plan must be a Plan"),
    (None, TypeError, "plan must be a Plan"),
    (b'{"*": "fp"}', TypeError, "plan must be a Plan"),
    ("no_such_file.json", ValueError, "plan must be a JSON object or a path to one"),
    ("{not json", ValueError, "plan is not valid JSON"),
    ("2:4", ValueError, "spec must look like"),
])
def test_coerce_errors(plan, exc, match):
    with pytest.raises(exc, match=match):
        Plan.coerce(plan)
