"""Hook dispatch goes through pluggy: tracing sees every call, wrappers are refused with a clear
error, async implementations are awaited, and tgmux_pre_route sees every message."""

from __future__ import annotations

import pytest

from tgmux.backend import Text
from tgmux.errors import ConfigError
from tgmux.harness import EngineHarness
from tgmux.hooks import PluginManager, build_plugin_manager, call_first, flatten, hookimpl
from tgmux.types import DROP

GROUPS = """
backends:
  echo: {type: echo, prefix: "echo: "}
default: echo
"""


class Wrapping:
    @hookimpl(wrapper=True)
    def tgmux_pre_route(self):
        return (yield)


class OldStyleWrapping:
    @hookimpl(hookwrapper=True)
    def tgmux_route(self):
        yield


@pytest.mark.parametrize("plugin", [Wrapping(), OldStyleWrapping()])
def test_hook_wrappers_are_refused_at_registration(plugin: object) -> None:
    pm = PluginManager()
    with pytest.raises(ConfigError) as caught:
        pm.register(plugin, name="wrapping")
    assert "plugin 'wrapping': tgmux_" in str(caught.value)
    assert "hook wrappers are not supported" in str(caught.value)
    assert not pm.is_registered(plugin)


def test_a_wrapper_in_a_harness_plugin_is_a_config_error_not_a_reply() -> None:
    with pytest.raises(ConfigError, match="hook wrappers are not supported"):
        EngineHarness.from_yaml(GROUPS, plugins=[Wrapping()])


class Async:
    @hookimpl
    async def tgmux_route(self, message):
        return None  # awaited to None: the next implementation must still be asked


class Sync:
    @hookimpl(tryfirst=False)
    def tgmux_route(self):
        return "echo"


async def test_call_first_awaits_and_goes_on_past_none_and_tracing_sees_each_call() -> None:
    pm = PluginManager()
    pm.register(Sync(), name="sync")
    pm.register(Async(), name="async")  # registered last: called first
    seen: list[str] = []
    undo = pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: seen.append(f"{name}:{impls[0].plugin_name}"),
        lambda outcome, name, impls, kwargs: None)
    try:
        assert await call_first(pm, "tgmux_route", message="m", engine=None) == "echo"
    finally:
        undo()
    assert seen == ["tgmux_route:async", "tgmux_route:sync"]


def test_tracing_by_environment_variable(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TGMUX_TRACE_HOOKS", "1")
    pm = build_plugin_manager()
    pm.hook.tgmux_backend_types()
    assert "tgmux hooks:   tgmux_backend_types [hook]" in capsys.readouterr().err


def test_flatten_takes_one_item_a_list_or_none() -> None:
    assert flatten([None, 1, [2, 3], (4,), []]) == [1, 2, 3, 4]


class Moderator:
    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    @hookimpl
    def tgmux_pre_route(self, message, triggered):
        self.seen.append((message.text, triggered))
        if "spam" in message.text:
            return "No spam here."  # a moderator speaks up even when not asked
        if "quiet" in message.text:
            return DROP
        return None


async def test_pre_route_sees_untriggered_group_messages_too() -> None:
    moderator = Moderator()
    group = {"chat_type": "group", "user_id": 5}
    async with EngineHarness.from_yaml(GROUPS, plugins=[moderator]) as h:
        assert await h.say("chatter", chat_id=-1, addressed=False, **group) == []
        assert await h.say("buy spam", chat_id=-1, addressed=False, **group) == [
            Text("No spam here.")]
        assert await h.say("hello bot", chat_id=-1, addressed=True, **group) == [
            Text("echo: hello bot")]
        assert await h.say("be quiet", chat_id=-1, addressed=True, **group) == []
        assert await h.say("private", user_id=9) == [Text("echo: private")]
    assert moderator.seen == [("chatter", False), ("buy spam", False), ("hello bot", True),
                              ("be quiet", True), ("private", True)]
