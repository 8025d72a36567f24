"""The emulator's views: modals (views.open, views.update), Home tabs (views.publish),
trigger ids, and a person submitting a modal or opening the Home tab.

Kept apart from ``slack_emulator.py`` (which plugs ``ViewRegistry`` in) so the
two can change independently. Everything here runs under the emulator's lock,
which the registry shares.

What Slack does and this does too:

- a ``trigger_id`` opens one modal, within 3 seconds of the interaction that made it
  (``expired_trigger_id``, ``exchanged_trigger_id``, ``invalid_trigger_id`` otherwise);
- a view is checked with slack_sdk's models plus the limits they leave out (100 blocks,
  a title of 24 characters, select options, unique block ids, private_metadata of
  3,000 characters), and refused with ``invalid_arguments`` when it breaks one;
- ``views.update`` honours ``hash`` (``hash_conflict``) and finds views by id or
  external_id (``not_found``);
- a submission carries ``view.state.values`` built from what the person chose, with the
  initial values where they chose nothing; a required input left empty is refused by
  the client, before anything reaches the bot; the bot's answer (nothing, or
  ``response_action`` errors / update / clear) is applied to the modal, unless it came
  after 3 seconds or with an HTTP error: then the person sees an error
  (``dispatch_failed``) and the modal stays open as it was.
"""

from __future__ import annotations

import copy
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

if TYPE_CHECKING:
    from bot.sandbox.slack_emulator import SlackUser

JSON = dict[str, Any]
# What Slack shows a person whose interaction the app answered late or with an error.
DISPATCH_FAILED = "dispatch_failed"

TRIGGER_LIFETIME_SECONDS = 3.0
MAX_VIEW_BLOCKS = 100
MAX_PRIVATE_METADATA = 3000
MAX_TITLE = 24
MAX_OPTIONS = 100
MAX_OPTION_TEXT = 75
MAX_OPTION_VALUE = 150
_VIEW_FIELDS = set(View.attributes) | {"type"}


class ViewError(Exception):
    """A views.* call Slack would refuse; ``error`` is Slack's error code."""

    def __init__(self, error: str, messages: list[str] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.extra: JSON = {"response_metadata": {"messages": messages}} if messages else {}


@dataclass
class StoredView:
    """A modal or a Home tab as Slack keeps it."""

    id: str
    team_id: str
    user_id: str
    view: JSON  # what the bot sent, as sent
    hash: str
    external_id: str | None = None
    is_open: bool = True  # modals: until submitted and closed; Home tabs: always
    errors: dict[str, str] = field(default_factory=dict)  # the last response_action errors
    publishes: int = 1  # Home tabs: how many times views.publish drew it
    updates: int = 0

    @property
    def type(self) -> str:
        return str(self.view.get("type"))

    def wire(self) -> JSON:
        """The view as Slack returns it and as it travels in payloads."""
        return {
            **self.view,
            "id": self.id,
            "team_id": self.team_id,
            "hash": self.hash,
            "root_view_id": self.id,
            "previous_view_id": None,
            "external_id": self.external_id or "",
            "private_metadata": self.view.get("private_metadata", ""),
            "callback_id": self.view.get("callback_id", ""),
            "state": {"values": {}},
            "app_id": "A0001",
            "bot_id": "B0001",
        }


@dataclass(frozen=True)
class Submission:
    """What became of a modal submission."""

    sent: bool  # False: the Slack client itself refused it (a required field empty)
    status_code: int
    ack_seconds: float
    response_action: str | None
    errors: dict[str, str]  # from the bot, or the client's own "required" errors
    closed: bool
    #: What Slack shows instead of the bot's answer: ``dispatch_failed`` when the bot
    #: answered late (after 3 s) or with an HTTP error. The modal then stays open,
    #: unchanged, as in Slack, and the person may press Submit again.
    error: str | None = None


class ViewRegistry:
    """Every modal and Home tab of the emulated workspace, and the trigger ids handed out."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._ids = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        """Forget every view and trigger id (call with the lock held, or before serving)."""
        self._views: dict[str, StoredView] = {}
        self._homes: dict[tuple[str, str], str] = {}  # (team, user) -> view id
        # trigger id -> (issued at, used, the person whose interaction made it)
        self._triggers: dict[str, tuple[float, bool, str]] = {}

    # ----------------------------------------------------------------- steering, reading

    def issue_trigger_id(self, user_id: str) -> str:
        """A fresh trigger_id for ``user_id``'s interaction: one views.open within 3 seconds."""
        trigger = f"{secrets.randbelow(10**10)}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"
        with self._lock:
            self._triggers[trigger] = (time.monotonic(), False, user_id)
        return trigger

    def modals(self, user_id: str | None = None, *, open_only: bool = True) -> list[StoredView]:
        """Modals in the order they were opened (a copy), for one person or everyone."""
        with self._lock:
            return [
                copy.deepcopy(v)
                for v in self._views.values()
                if v.type == "modal"
                and (user_id is None or v.user_id == user_id)
                and (v.is_open or not open_only)
            ]

    def view(self, view_id: str) -> StoredView | None:
        with self._lock:
            found = self._views.get(view_id)
            return copy.deepcopy(found) if found else None

    def home(self, user_id: str, team_id: str = "T0001") -> StoredView | None:
        """The person's Home tab as last published, or None."""
        with self._lock:
            view_id = self._homes.get((team_id, user_id))
            return copy.deepcopy(self._views[view_id]) if view_id else None

    def methods(self) -> dict[str, Callable[[str, JSON], JSON]]:
        """Web API handlers by method name; each takes (team id, params)."""
        return {
            "views.open": self._open,
            "views.publish": self._publish,
            "views.update": self._update,
        }

    # ----------------------------------------------------------------- Web API (lock held)

    def _open(self, team_id: str, params: JSON) -> JSON:
        trigger = str(params.get("trigger_id") or "")
        if not trigger:
            raise ViewError("invalid_arguments", ["[ERROR] missing required field: trigger_id"])
        issued = self._triggers.get(trigger)
        if issued is None:
            raise ViewError("invalid_trigger_id")
        at, used, user = issued
        if used:
            raise ViewError("exchanged_trigger_id")
        if time.monotonic() - at > TRIGGER_LIFETIME_SECONDS:
            raise ViewError("expired_trigger_id")
        view = _view_param(params)
        _check_view(view, "modal")
        self._triggers[trigger] = (at, True, user)
        stored = self._store(team_id, user, view)
        return {"view": stored.wire()}

    def _publish(self, team_id: str, params: JSON) -> JSON:
        user = str(params.get("user_id") or "")
        if not user:
            raise ViewError("invalid_arguments", ["[ERROR] missing required field: user_id"])
        view = _view_param(params)
        _check_view(view, "home")
        existing_id = self._homes.get((team_id, user))
        if existing_id is not None:
            existing = self._views[existing_id]
            if params.get("hash") and params["hash"] != existing.hash:
                raise ViewError("hash_conflict")
            existing.view = view
            existing.hash = _new_hash()
            existing.publishes += 1
            return {"view": existing.wire()}
        stored = self._store(team_id, user, view)
        self._homes[(team_id, user)] = stored.id
        return {"view": stored.wire()}

    def _update(self, team_id: str, params: JSON) -> JSON:
        view_id, external = params.get("view_id"), params.get("external_id")
        if not view_id and not external:
            raise ViewError("invalid_arguments", ["[ERROR] view_id or external_id is required"])
        found = self._views.get(str(view_id)) if view_id else None
        if found is None and external:
            found = next((v for v in self._views.values() if v.external_id == external), None)
        if found is None or found.team_id != team_id or not found.is_open:
            raise ViewError("not_found")
        if params.get("hash") and params["hash"] != found.hash:
            raise ViewError("hash_conflict")
        view = _view_param(params)
        _check_view(view, found.type)
        found.view, found.hash = view, _new_hash()
        found.updates += 1
        found.errors = {}
        return {"view": found.wire()}

    def _store(self, team_id: str, user_id: str, view: JSON) -> StoredView:
        stored = StoredView(
            id=f"V{next(self._ids):08d}",
            team_id=team_id,
            user_id=user_id,
            view=view,
            hash=_new_hash(),
            external_id=view.get("external_id") or None,
        )
        self._views[stored.id] = stored
        return stored

    # ----------------------------------------------------------------- the bot's answers

    def _answered(self, view_id: str, ack_body: Any) -> tuple[str | None, dict[str, str], bool]:
        """Apply the bot's answer to a submission: (response_action, errors, closed)."""
        with self._lock:
            stored = self._views[view_id]
            if not isinstance(ack_body, dict) or not ack_body.get("response_action"):
                stored.is_open = False
                stored.errors = {}
                return None, {}, True
            action = str(ack_body["response_action"])
            if action == "errors":
                errors = ack_body.get("errors") or {}
                inputs = {b.get("block_id") for b in _inputs(stored.view)}
                unknown = set(errors) - inputs
                if unknown or not errors:
                    # Slack shows the person a generic failure when the errors name no input.
                    raise AssertionError(f"response_action errors for unknown blocks: {unknown}")
                stored.errors = {str(k): str(v) for k, v in errors.items()}
                return action, dict(stored.errors), False
            if action == "update":
                view = ack_body.get("view") or {}
                _check_view(view, "modal")
                stored.view, stored.hash, stored.errors = view, _new_hash(), {}
                return action, {}, False
            if action in ("clear", "push"):
                stored.is_open = action == "push"
                return action, {}, action == "clear"
            raise AssertionError(f"unknown response_action {action!r}")


# --------------------------------------------------------------------------- checking views


def _new_hash() -> str:
    return f"{int(time.time())}.{secrets.token_hex(4)}"


def _view_param(params: JSON) -> JSON:
    raw = params.get("view")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ViewError("invalid_arguments", ["[ERROR] view is not JSON"]) from None
    if not isinstance(raw, dict):
        raise ViewError("invalid_arguments", ["[ERROR] missing required field: view"])
    return raw


def _inputs(view: JSON) -> list[JSON]:
    return [b for b in view.get("blocks") or [] if isinstance(b, dict) and b.get("type") == "input"]


def view_problems(view: JSON, kind: str) -> list[str]:
    """What Slack would refuse in a view of type ``kind`` (modal or home); [] when fine."""
    problems: list[str] = []
    if view.get("type") != kind:
        problems.append(f"[ERROR] the view's type must be {kind}")
    blocks = view.get("blocks")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= MAX_VIEW_BLOCKS:
        problems.append(f"[ERROR] a view holds 1 to {MAX_VIEW_BLOCKS} blocks")
        return problems
    try:
        View(**{k: v for k, v in view.items() if k in _VIEW_FIELDS}).validate_json()
    except Exception as exc:
        problems.append(f"[ERROR] {exc}")
    if kind == "modal":
        title = (view.get("title") or {}).get("text", "")
        if not 1 <= len(title) <= MAX_TITLE:
            problems.append(f"[ERROR] the title must be 1 to {MAX_TITLE} characters")
        if _inputs(view) and not view.get("submit"):
            problems.append("[ERROR] a modal with inputs needs a submit button")
    if len(str(view.get("private_metadata") or "")) > MAX_PRIVATE_METADATA:
        problems.append("[ERROR] private_metadata is longer than 3000 characters")
    seen: set[str] = set()
    for i, block in enumerate(blocks):
        where = f"/blocks/{i}"
        if not isinstance(block, dict):
            problems.append(f"[ERROR] not a block [json-pointer:{where}]")
            continue
        parsed = Block.parse(block)
        if parsed is None or type(parsed).__name__ == "Block":
            problems.append(f"[ERROR] unknown block type [json-pointer:{where}]")
            continue
        try:
            parsed.validate_json()
        except Exception as exc:
            problems.append(f"[ERROR] {exc} [json-pointer:{where}]")
        block_id = block.get("block_id")
        if block_id is not None:
            if block_id in seen:
                problems.append(f"[ERROR] duplicate block_id [json-pointer:{where}]")
            seen.add(block_id)
        if block.get("type") == "input":
            if kind != "modal":
                problems.append(f"[ERROR] input blocks belong in modals [json-pointer:{where}]")
            problems += _element_problems(block.get("element") or {}, f"{where}/element")
    return problems


def _element_problems(element: JSON, where: str) -> list[str]:
    problems: list[str] = []
    if not element.get("action_id"):
        problems.append(f"[ERROR] an input needs an action_id [json-pointer:{where}]")
    if element.get("type") in ("static_select", "radio_buttons"):
        options = element.get("options") or []
        if not 1 <= len(options) <= MAX_OPTIONS:
            problems.append(f"[ERROR] 1 to {MAX_OPTIONS} options [json-pointer:{where}]")
        values = []
        for option in options:
            text = (option.get("text") or {}).get("text", "")
            value = option.get("value", "")
            values.append(value)
            if not 1 <= len(text) <= MAX_OPTION_TEXT or not 1 <= len(value) <= MAX_OPTION_VALUE:
                problems.append(f"[ERROR] option text or value too long [json-pointer:{where}]")
        initial = element.get("initial_option")
        if initial is not None and initial not in options:
            problems.append(
                f"[ERROR] initial_option must be one of the options [json-pointer:{where}]"
            )
        if len(set(values)) != len(values):
            problems.append(f"[ERROR] option values must be unique [json-pointer:{where}]")
    if element.get("type") == "plain_text_input":
        initial = element.get("initial_value")
        longest = element.get("max_length", 3000)
        if initial is not None and len(str(initial)) > longest:
            problems.append(f"[ERROR] initial_value longer than max_length [json-pointer:{where}]")
    if element.get("type") == "multi_conversations_select":
        most = element.get("max_selected_items")
        if len(element.get("initial_conversations") or []) > (most or 100):
            problems.append(
                f"[ERROR] more initial conversations than allowed [json-pointer:{where}]"
            )
    return problems


def _check_view(view: JSON, kind: str) -> None:
    problems = view_problems(view, kind)
    if problems:
        raise ViewError("invalid_arguments", problems)


# --------------------------------------------------------------------------- a person


def _state_of(element: JSON, chosen: Any) -> JSON:
    """One input's entry in ``view.state.values``: what was chosen, else its initial value."""
    kind = element.get("type")
    state: JSON = {"type": kind}
    if kind in ("static_select", "radio_buttons"):
        options = element.get("options") or []
        if chosen is None:
            state["selected_option"] = element.get("initial_option")
        else:
            match = next((o for o in options if o.get("value") == chosen), None)
            if match is None:
                raise ValueError(f"{chosen!r} is not one of the options a person could pick")
            state["selected_option"] = match
    elif kind == "users_select":
        state["selected_user"] = chosen if chosen is not None else element.get("initial_user")
    elif kind == "conversations_select":
        state["selected_conversation"] = (
            chosen if chosen is not None else element.get("initial_conversation")
        )
    elif kind == "multi_conversations_select":
        picked = chosen if chosen is not None else element.get("initial_conversations") or []
        most = element.get("max_selected_items")
        if most is not None and len(picked) > most:
            raise ValueError(f"a person can pick at most {most} conversations here")
        state["selected_conversations"] = list(picked)
    elif kind == "plain_text_input":
        value = chosen if chosen is not None else element.get("initial_value")
        state["value"] = value if value != "" else None
    else:
        raise ValueError(f"the emulator cannot fill a {kind} yet")
    return state


def _empty(state: JSON) -> bool:
    values = [v for k, v in state.items() if k != "type"]
    return all(v in (None, "", []) for v in values)


def view_submission_body(stored: StoredView, values: JSON, *, user: SlackUser) -> bytes:
    """A ``view_submission`` request body (form field ``payload`` holding JSON)."""
    view = stored.wire()
    view["state"] = {"values": values}
    payload = {
        "type": "view_submission",
        "team": {"id": stored.team_id, "domain": "emulator"},
        "user": {
            "id": user.user_id,
            "username": "tester",
            "name": "tester",
            "team_id": stored.team_id,
        },
        "api_app_id": "A0001",
        "token": "verification-token-unused",
        "trigger_id": user.emulator.views.issue_trigger_id(user.user_id),
        "view": view,
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def submit_view(
    user: SlackUser, view_id: str, chosen: JSON | None = None, *, forged: bool = False
) -> Submission:
    """``user`` fills in the open modal ``view_id`` (block id → choice) and presses Submit.

    Choices: an option's value for selects and radio buttons, a user id for
    users_select, a list of channel ids for multi_conversations_select, text for
    plain_text_input. Blocks not named keep their initial values. ``forged``
    submits someone else's modal, as only a forged request could.
    """
    registry = user.emulator.views
    stored = registry.view(view_id)
    if stored is None or not stored.is_open or stored.type != "modal":
        raise ValueError(f"no open modal {view_id}")
    if stored.user_id and stored.user_id != user.user_id and not forged:
        raise ValueError(f"modal {view_id} belongs to {stored.user_id}, not {user.user_id}")
    chosen = chosen or {}
    unknown = set(chosen) - {b.get("block_id") for b in _inputs(stored.view)}
    if unknown:
        raise ValueError(f"the modal has no input blocks {sorted(unknown)}")
    values: JSON = {}
    required: dict[str, str] = {}
    for block in _inputs(stored.view):
        element = block.get("element") or {}
        block_id = str(block.get("block_id"))
        state = _state_of(element, chosen.get(block_id))
        values[block_id] = {str(element.get("action_id")): state}
        if not block.get("optional") and _empty(state):
            required[block_id] = "Please complete this required field."
    if required:
        return Submission(False, 0, 0.0, None, required, False)
    body = view_submission_body(stored, values, user=user)
    result = user.send(body, "application/x-www-form-urlencoded")
    if result.error is not None or result.status_code != 200:
        # Slack ignores a late or failed answer: the person sees an error, the modal stays.
        error = result.error or DISPATCH_FAILED
        return Submission(True, result.status_code, result.ack_seconds, None, {}, False, error)
    action, errors, closed = registry._answered(view_id, result.ack_body)
    return Submission(True, result.status_code, result.ack_seconds, action, errors, closed)


def home_opened_event(user_id: str, view: StoredView | None) -> JSON:
    """The ``app_home_opened`` event Slack sends when a person opens the Home tab."""
    event: JSON = {
        "type": "app_home_opened",
        "user": user_id,
        "channel": f"D{user_id[1:]}",
        "tab": "home",
        "event_ts": f"{time.time():.6f}",
    }
    if view is not None:
        event["view"] = view.wire()
    return event


def view_action_body(
    user: SlackUser, stored: StoredView, action_id: str, value: str, block_id: str | None = None
) -> bytes:
    """A button click inside a view (a Home tab or a modal): no channel, no response_url."""
    payload = {
        "type": "block_actions",
        "team": {"id": stored.team_id, "domain": "emulator"},
        "user": {"id": user.user_id, "username": "tester", "team_id": stored.team_id},
        "api_app_id": "A0001",
        "token": "verification-token-unused",
        "container": {"type": "view", "view_id": stored.id},
        "trigger_id": user.emulator.views.issue_trigger_id(user.user_id),
        "view": stored.wire(),
        "actions": [
            {
                "action_id": action_id,
                "block_id": block_id or "",
                "value": value,
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()
