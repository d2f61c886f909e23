"""Errors the CLI turns into one clear line and a non-zero exit."""

from __future__ import annotations

from typing import Any


class SlmkError(Exception):
    """A failure the user can act on: what went wrong, and how to fix it.

    ``message`` says what and why; ``hint`` says how to fix it. The CLI prints
    ``error: <message> (<hint>)`` and exits with ``exit_code``; the traceback is
    only shown with ``--debug``.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        """The message and hint as the one line the CLI prints."""
        text = " ".join(self.message.split())
        if self.hint:
            text += f" ({' '.join(self.hint.split())})"
        return text


class UsageError(SlmkError):
    """Bad input on the command line or in slmk.toml."""

    exit_code = 2


class ConfigError(UsageError):
    """An unknown key or a bad value in the configuration."""


class PluginError(SlmkError):
    """A plugin failed to load, conflicted with another, or raised inside a hook."""

    def __init__(self, plugin: str, hook: str | None, error: BaseException | str, hint: str | None = None):
        where = f"plugin {plugin!r}" + (f" in hook {hook}" if hook else "")
        detail = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        super().__init__(f"{where} failed: {detail}", hint)
        self.plugin = plugin
        self.hook = hook
        self.error = error


class StepFailed(SlmkError):
    """A pipeline step (convert, quantize, install ...) failed."""


class TemplateError(SlmkError):
    """A chat template that cannot be rendered, or cannot be cut into a PromptTemplate."""


class ChatTemplateError(TemplateError):
    """The Jinja chat template failed: a syntax error, or it raised for this conversation."""


class ChatTemplateSyntaxError(ChatTemplateError):
    """The chat template does not parse: no conversation can render."""


class UnsafeTemplateError(ChatTemplateError):
    """The chat template reached for something the sandbox refuses (``__class__``, ...)."""


class RenderLimitError(ChatTemplateError):
    """The chat template went over a render budget: steps, sizes, seconds or memory."""


class TemplateMismatch(TemplateError):
    """The PromptTemplate pieces do not reproduce what the chat template renders: at ``offset``
    of the ``conversation``, ``expected`` is what the chat template wrote, ``got`` the pieces'."""

    def __init__(self, message: str, hint: str | None = None, *, conversation="", offset=-1, expected="", got=""):
        super().__init__(message, hint)
        self.conversation, self.offset, self.expected, self.got = conversation, offset, expected, got


class PluginInterrupted(KeyboardInterrupt):
    """A KeyboardInterrupt that came out of a plugin's code: still an interrupt (Ctrl-C stops
    slmk, exit 130), named after the plugin it came from."""

    def __init__(self, plugin: str, where: str):
        super().__init__(f"plugin {plugin!r} ({where})")
        self.plugin = plugin
        self.where = where


def call_plugin(plugin: str, where: str, function: Any, *args: Any) -> Any:
    """``function(*args)`` of a plugin record: what it raises (anything but slmk's own errors and
    an interrupt) becomes one PluginError line naming the plugin, never an internal error."""
    try:
        return function(*args)
    except SlmkError:
        raise
    except BaseException as exc:
        contain_plugin_failure(exc, plugin, where)
        hint = f"fix or uninstall it (SLMK_DISABLE_PLUGINS={plugin})"
        raise PluginError(plugin, None, f"{where}: {type(exc).__name__}: {exc}", hint=hint) from None


def contain_plugin_failure(exc: BaseException, plugin: str, where: str) -> None:
    """Re-raise what must go through a plugin boundary; return for what the caller contains.

    A plugin's code may raise anything, BaseException subclasses and GeneratorExit included,
    and must not take slmk down with it; only an interrupt goes through, named after the
    plugin (``PluginInterrupted``).
    """
    if isinstance(exc, PluginInterrupted):
        raise exc
    if isinstance(exc, KeyboardInterrupt):
        raise PluginInterrupted(plugin, where) from exc
