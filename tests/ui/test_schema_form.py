"""The form generated from a JSON schema: one widget per kind of field, and nothing invalid gets through."""

from __future__ import annotations

from typing import Any

from streamlit.testing.v1 import AppTest

from ui.schema_form import validation_errors

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["cat", "dog"]},
        "size": {"type": "number", "minimum": 0, "maximum": 10},
        "count": {"type": "integer", "minimum": 1, "maximum": 4},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}},
        "boxes": {
            "type": "array",
            "maxItems": 3,
            "items": {"type": "object", "properties": {"x": {"type": "integer"}, "label": {"type": "string"}}, "required": ["x", "label"]},
        },
        "owner": {
            "type": "object",
            "properties": {"name": {"type": "string", "pattern": "^[A-Z]"}, "age": {"type": "integer"}},
            "required": ["name"],
        },
        "note": {"type": "string"},
        "extra": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
    },
    "required": ["kind", "size", "count", "ok", "tags", "boxes", "owner"],
}
ANSWER = {
    "kind": "dog",
    "size": 2.5,
    "count": 3,
    "ok": True,
    "tags": ["b"],
    "boxes": [{"x": 1, "label": "p"}],
    "owner": {"name": "Ann"},
    "extra": 5,
    "seen_by_model": "kept",
}


def form(schema, value):  # no annotations: AppTest runs this function's source on its own
    """The app under test: the form, its result kept in the session for the test to read."""
    import streamlit as st

    from ui.schema_form import edit

    st.session_state["edited"] = edit(schema, value, key="f")


def open_form(value: Any) -> AppTest:
    return AppTest.from_function(form, args=(SCHEMA, value), default_timeout=30).run()


def test_every_kind_of_field_gets_its_widget_and_an_untouched_form_returns_the_answer() -> None:
    app = open_form(ANSWER)
    assert app.selectbox(key="f.kind").options == ["cat", "dog"] and app.selectbox(key="f.kind").value == "dog"
    assert (app.number_input(key="f.size").value, app.number_input(key="f.size").max) == (2.5, 10.0)
    assert app.number_input(key="f.count").value == 3
    assert app.checkbox(key="f.ok").value is True
    assert app.multiselect(key="f.tags").value == ["b"]
    assert app.number_input(key="f.boxes#n").value == 1 and app.text_input(key="f.boxes[0].label").value == "p"
    assert app.text_input(key="f.owner.name").value == "Ann" and app.number_input(key="f.owner.age").value is None
    assert app.text_area(key="f.extra").value == "5", "anyOf is edited as JSON text"
    edited = app.session_state["edited"]
    assert edited.value == ANSWER and edited.problems == []


def test_edits_of_nested_fields_and_arrays_come_back_and_are_validated() -> None:
    app = open_form(ANSWER)
    app.selectbox(key="f.kind").select("cat").run()
    app.multiselect(key="f.tags").select("c").run()
    app.number_input(key="f.boxes#n").set_value(2).run()
    app.number_input(key="f.boxes[1].x").set_value(7).run()
    app.text_input(key="f.boxes[1].label").input("q").run()
    app.number_input(key="f.owner.age").set_value(40).run()
    app.text_input(key="f.note").input("looked twice").run()
    edited = app.session_state["edited"]
    assert edited.problems == []
    assert edited.value == {
        **ANSWER,
        "kind": "cat",
        "tags": ["b", "c"],
        "boxes": [{"x": 1, "label": "p"}, {"x": 7, "label": "q"}],
        "owner": {"name": "Ann", "age": 40},
        "note": "looked twice",
    }

    app.text_input(key="f.owner.name").input("bob").run()
    assert app.session_state["edited"].problems == ["at owner.name: 'bob' does not match '^[A-Z]'"]
    app.text_area(key="f.extra").input("{not json").run()
    assert app.session_state["edited"].problems[0].startswith("extra is not valid JSON: Expecting property name")


def test_a_model_answer_outside_the_schema_is_pulled_in_and_flagged() -> None:
    app = open_form({**ANSWER, "count": 9, "kind": "horse"})
    captions = " ".join(caption.value for caption in app.caption)
    assert "answered 9 for count, outside the allowed range" in captions and 'answered "horse"' in captions
    assert app.number_input(key="f.count").value == 4 and app.session_state["edited"].problems == []


def test_a_missing_answer_starts_from_empty_required_fields() -> None:
    app = open_form(None)
    edited = app.session_state["edited"]
    assert edited.value == {"kind": "cat", "size": 0.0, "count": 1, "ok": False, "tags": [], "boxes": [], "owner": {"name": ""}}
    assert edited.problems == ["at owner.name: '' does not match '^[A-Z]'"], "an empty required field is not saved"


def test_validation_errors_name_each_place() -> None:
    errors = validation_errors({"kind": "dog", "size": 11, "count": 0, "ok": "yes"}, SCHEMA)
    assert "at size: 11 is greater than the maximum of 10" in errors
    assert "at count: 0 is less than the minimum of 1" in errors
    assert "at ok: 'yes' is not of type 'boolean'" in errors
    assert any(e.startswith("at the top level: 'tags' is a required property") for e in errors)
