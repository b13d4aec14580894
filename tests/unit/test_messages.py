"""composite_llm.messages: the one rule for the text of a message content, and the prompt-merging helpers."""

from __future__ import annotations

from composite_llm.cli_agents.serialize import content_to_text
from composite_llm.local.params import flatten_content, to_llama_messages
from composite_llm.messages import content_text, response_labels, with_instruction, with_system_prompt
from composite_llm.testing import RecordedRequest

MIXED = [
    {"type": "text", "text": "chat part"},
    {"type": "input_text", "text": "responses input part"},
    {"type": "output_text", "text": "responses output part"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    {"type": "input_file", "file": {"filename": "a.pdf"}},
    {"type": "refusal", "refusal": "no"},
    {"type": "mystery"},
    "bare string",
    {"text": "untyped part"},
    {"type": "text", "text": {"value": "assistants style"}},
]
TEXTS = ["chat part", "responses input part", "responses output part", "bare string", "untyped part",
         "assistants style"]


def test_plain_values():
    assert content_text(None) == ""
    assert content_text("as is\n") == "as is\n"
    assert content_text(42) == "42"
    assert content_text({"type": "text", "text": "one part"}) == "one part"
    assert content_text([]) == ""


def test_text_parts_are_kept_in_order_and_other_parts_left_out():
    assert content_text(MIXED) == "\n".join(TEXTS)


def test_notes_name_what_was_left_out_in_place():
    noted = content_text(MIXED, notes=True).split("\n")
    assert noted == ["chat part", "responses input part", "responses output part", "[image omitted]",
                     "[file omitted: a.pdf]", "[refusal] no", "[mystery part omitted]", "bare string",
                     "untyped part", "assistants style"]


def test_every_reader_uses_the_one_rule():
    """The CLI prompt, the local models' chat template input and the fake server's recorded text agree."""
    assert content_to_text(MIXED) == content_text(MIXED, notes=True)
    assert flatten_content(MIXED) == content_text(MIXED)
    assert to_llama_messages([{"role": "developer", "content": MIXED}]) == [
        {"role": "system", "content": content_text(MIXED)}]
    recorded = RecordedRequest(model="m", body={"messages": [
        {"role": "system", "content": [{"type": "input_text", "text": "sys"}]},
        {"role": "user", "content": MIXED},
    ]}, headers={}, started=0.0)
    assert recorded.system_text == "sys"
    assert recorded.last_user_text == content_text(MIXED)


def test_fake_server_records_input_text_parts():
    """Regression: the fake server's text read only `text` parts, so a test could not see a Responses-API
    `input_text` part the member was actually sent."""
    recorded = RecordedRequest(model="m", body={"messages": [
        {"role": "user", "content": [{"type": "input_text", "text": "what members saw"}]}]}, headers={}, started=0.0)
    assert recorded.last_user_text == "what members saw"


def test_with_system_prompt_appends_to_the_first_system_message_without_mutating():
    original = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    merged = with_system_prompt(original, "Ours.")
    assert merged[0] == {"role": "system", "content": "Be brief.\n\nOurs."}
    assert original[0]["content"] == "Be brief."
    listed = with_system_prompt([{"role": "developer", "content": [{"type": "text", "text": "x"}]}], "Ours.")
    assert listed[0]["content"] == [{"type": "text", "text": "x"}, {"type": "text", "text": "Ours."}]
    assert with_system_prompt([{"role": "user", "content": "hi"}], "Ours.")[0] == {"role": "system",
                                                                                  "content": "Ours."}


def test_with_instruction_goes_to_the_last_user_message():
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
                {"role": "user", "content": "second"}]
    out = with_instruction(messages, "Think step by step.")
    assert out[2]["content"] == "second\n\nThink step by step." and out[0]["content"] == "first"
    assert messages[2]["content"] == "second"
    assert with_instruction(messages, None) is messages


def test_response_labels_continue_past_z():
    labels = response_labels(28)
    assert labels[0] == "Response A" and labels[25] == "Response Z" and labels[26:] == ["Response AA",
                                                                                       "Response AB"]
