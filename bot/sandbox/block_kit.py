"""Block Kit as strictly as Slack checks it, for the emulator.

Each block goes through slack-sdk's own models (``Block.parse`` then
``validate_json``; ``to_dict`` validates the nested elements the same way), and
then through the limits those models do not check, each from Slack's reference:

- at most 50 blocks in a message
  (https://docs.slack.dev/reference/block-kit/blocks);
- lengths counted in UTF-16 code units, as Slack counts them (an emoji is two),
  where the models count code points: section text 3,000, a field 2,000, a
  header 150 (plain_text only), a button's text 75 and value 2,000, a block_id
  or action_id 255
  (https://docs.slack.dev/reference/block-kit/blocks/section-block,
  .../header-block, .../block-elements/button-element);
- no empty text object (``text`` must be at least 1 character);
- ``block_id`` unique within the message, ``action_id`` unique within its block
  ("should be unique among all other action_ids in the containing block");
- an actions block holds 1 to 25 elements, a context block 1 to 10;
- the message's top-level ``text`` is the fallback shown in notifications and
  screen readers: with blocks and no text Slack posts the message but warns
  ``missing_text_or_fallback_or_attachments``
  (https://docs.slack.dev/reference/methods/chat.postMessage#text-usage).

Problems are worded like Slack's own ``invalid_blocks`` messages:
``[ERROR] <what> [json-pointer:/blocks/<i>/...]``.
"""

from __future__ import annotations

from typing import Any

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block

MAX_BLOCKS = 50
MAX_TEXT_UTF16 = 40_000  # chat.postMessage truncates text beyond this: msg_too_long
SECTION_TEXT_MAX = 3000
FIELD_TEXT_MAX = 2000
HEADER_TEXT_MAX = 150
BUTTON_TEXT_MAX = 75
BUTTON_VALUE_MAX = 2000
ID_MAX = 255
ACTIONS_ELEMENTS = (1, 25)
CONTEXT_ELEMENTS = (1, 10)
MISSING_FALLBACK = "missing_text_or_fallback_or_attachments"


def utf16_len(text: str) -> int:
    """Slack's length: UTF-16 code units (characters outside the BMP count twice)."""
    return len(text.encode("utf-16-le")) // 2


def block_problems(blocks: Any) -> list[str]:
    """Everything Slack would refuse in ``blocks`` with ``invalid_blocks``; [] when fine."""
    if not isinstance(blocks, list):
        return ["[ERROR] blocks must be an array [json-pointer:/blocks]"]
    problems: list[str] = []
    if len(blocks) > MAX_BLOCKS:
        problems.append(f"[ERROR] no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]")
    block_ids: set[str] = set()
    for i, raw in enumerate(blocks):
        where = f"/blocks/{i}"
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            problems.append(f"[ERROR] a block must be an object with a type [json-pointer:{where}]")
            continue
        # The precise checks first; the models' messages name no field, so they are
        # reported only for what the precise checks did not catch.
        found = _limit_problems(raw, where, block_ids)
        problems.extend(found or _model_problems(raw, where))
    return problems


def fallback_warnings(text: Any, blocks: Any) -> list[str]:
    """Slack's warnings for a message that posts but reads badly in notifications."""
    if blocks and not (isinstance(text, str) and text.strip()):
        return [MISSING_FALLBACK]
    return []


def _model_problems(raw: dict[str, Any], where: str) -> list[str]:
    """slack-sdk's models: unknown block types, and every limit they know of."""
    try:
        block = Block.parse(raw)
        if block is None:
            return [f"[ERROR] unsupported block type {raw['type']!r} [json-pointer:{where}/type]"]
        block.validate_json()
        block.to_dict()  # validates every nested element and text object too
    except (SlackObjectFormationError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return [f"[ERROR] {exc} [json-pointer:{where}]"]
    for j, element in enumerate(raw.get("elements") or []):
        if raw["type"] == "actions" and isinstance(element, dict):
            # Block.parse turns an element type it does not know into None.
            parsed = getattr(block, "elements", None) or []
            if j < len(parsed) and parsed[j] is None:
                kind = element.get("type")
                return [f"[ERROR] unsupported element {kind!r} [json-pointer:{where}/elements/{j}]"]
    return []


def _limit_problems(raw: dict[str, Any], where: str, block_ids: set[str]) -> list[str]:
    """The limits the models leave out: UTF-16 lengths, uniqueness, element counts."""
    found: list[str | None] = [_unique_id(raw.get("block_id"), block_ids, f"{where}/block_id")]
    kind = raw["type"]
    if kind == "section":
        if "text" in raw:
            found.append(_text(raw["text"], f"{where}/text", SECTION_TEXT_MAX))
        for j, item in enumerate(raw.get("fields") or []):
            found.append(_text(item, f"{where}/fields/{j}", FIELD_TEXT_MAX))
        accessory = raw.get("accessory")
        if isinstance(accessory, dict) and accessory.get("type") == "button":
            found.extend(_button(accessory, f"{where}/accessory"))
    elif kind == "header":
        found.append(_text(raw.get("text"), f"{where}/text", HEADER_TEXT_MAX, plain_only=True))
    elif kind in ("actions", "context"):
        low, high = ACTIONS_ELEMENTS if kind == "actions" else CONTEXT_ELEMENTS
        elements = raw.get("elements")
        if not isinstance(elements, list) or not low <= len(elements) <= high:
            found.append(
                f"[ERROR] must hold {low} to {high} elements [json-pointer:{where}/elements]"
            )
        else:
            action_ids: set[str] = set()
            for j, element in enumerate(elements):
                at = f"{where}/elements/{j}"
                if not isinstance(element, dict):
                    continue
                if kind == "context" and element.get("type") in ("plain_text", "mrkdwn"):
                    found.append(_text(element, at, SECTION_TEXT_MAX))
                if kind == "actions":
                    found.append(
                        _unique_id(element.get("action_id"), action_ids, f"{at}/action_id")
                    )
                    if element.get("type") == "button":
                        found.extend(_button(element, at))
    return [p for p in found if p]


def _button(element: dict[str, Any], at: str) -> list[str | None]:
    found = [_text(element.get("text"), f"{at}/text", BUTTON_TEXT_MAX, plain_only=True)]
    value = element.get("value")
    if isinstance(value, str) and utf16_len(value) > BUTTON_VALUE_MAX:
        found.append(
            f"[ERROR] must be at most {BUTTON_VALUE_MAX} characters [json-pointer:{at}/value]"
        )
    return found


def _text(obj: Any, pointer: str, limit: int, *, plain_only: bool = False) -> str | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        return f"[ERROR] must be a text object [json-pointer:{pointer}]"
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if obj.get("type") not in allowed:
        return f"[ERROR] must be one of {', '.join(allowed)} [json-pointer:{pointer}/type]"
    length = utf16_len(obj["text"])
    if length < 1:
        return f"[ERROR] must be more than 0 characters [json-pointer:{pointer}/text]"
    if length > limit:
        return f"[ERROR] must be less than {limit + 1} characters [json-pointer:{pointer}/text]"
    return None


def _unique_id(value: Any, seen: set[str], pointer: str) -> str | None:
    if value is None:
        return None
    name = pointer.rsplit("/", 1)[-1]
    if not isinstance(value, str) or not 1 <= utf16_len(value) <= ID_MAX:
        return f"[ERROR] {name} must be 1 to {ID_MAX} characters [json-pointer:{pointer}]"
    if value in seen:
        return f"[ERROR] {name} must be unique [json-pointer:{pointer}]"
    seen.add(value)
    return None
