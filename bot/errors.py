"""Typed domain errors.

Every failure a user can meet is one of these. Each carries a short, plain sentence
for the person in Discord (or the console); `user_message` is the one place that
turns any exception into such a sentence, so no caller invents its own wording.
Nothing here may include secrets: the API key never reaches an error text.
"""

from __future__ import annotations


class BotError(Exception):
    """Base of all domain errors; `user_text` is safe to show to the person."""

    user_text: str = "Something went wrong on my side."

    def __init__(self, user_text: str | None = None, *, detail: str | None = None) -> None:
        if user_text is not None:
            self.user_text = user_text
        self.detail = detail
        super().__init__(detail or self.user_text)


class ConfigError(BotError):
    """A bad configuration value. Its text is one line naming the key and what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, detail=message)


# --- LLM ---------------------------------------------------------------------------------


class LLMError(BotError):
    """The language model call failed. `kind` is a stable label for logs and metrics."""

    kind = "llm_error"
    user_text = "The language model failed to answer."


class LLMAuthError(LLMError):
    kind = "auth"
    user_text = (
        "The language model rejected the bot's API key. An admin needs to check `llm.api_key`."
    )


class LLMModelNotFound(LLMError):
    kind = "model_not_found"
    user_text = "The configured model does not exist on the language model server."


class LLMRateLimited(LLMError):
    kind = "rate_limited"
    user_text = "The language model is rate limiting the bot. Try again in a moment."

    def __init__(self, retry_after: float | None = None, *, detail: str | None = None) -> None:
        self.retry_after = retry_after
        text = self.user_text
        if retry_after is not None and retry_after > 0:
            text = f"The language model is rate limiting the bot. Try again in {retry_after:.0f} s."
        super().__init__(text, detail=detail)


class LLMContextTooLong(LLMError):
    kind = "context_too_long"
    user_text = (
        "The conversation is too long for the model. Use `/reset` to start fresh, "
        "or ask an admin to lower `llm.context_tokens`."
    )


class LLMBadRequest(LLMError):
    kind = "bad_request"
    user_text = "The language model server rejected the request."


class LLMServerError(LLMError):
    kind = "server_error"
    user_text = "The language model server had an internal error. Try again shortly."


class LLMUnreachable(LLMError):
    kind = "unreachable"
    user_text = "The language model server can't be reached right now."


class LLMTimeout(LLMError):
    kind = "timeout"
    user_text = "The language model took too long to answer."

    def __init__(self, phase: str, *, detail: str | None = None) -> None:
        self.phase = phase
        texts = {
            "connect": "The language model server did not accept the connection in time.",
            "first_token": "The language model took too long to start answering.",
            "idle": "The language model stopped sending text mid-answer (timed out).",
            "total": "The language model's answer took longer than allowed.",
        }
        super().__init__(texts.get(phase, self.user_text), detail=detail)


class LLMCutOff(LLMError):
    kind = "cut_off"
    user_text = "The model's answer was cut off before it finished."


class LLMEmptyReply(LLMError):
    kind = "empty"
    user_text = "The model answered with an empty message. Try rephrasing."


class LLMOnlyThought(LLMError):
    """A thinking model thought but gave no answer (usually cut off by `max_tokens`)."""

    kind = "only_thought"

    def __init__(self, cut: bool) -> None:
        super().__init__(
            "The model used up its length limit (`llm.max_tokens`) while thinking and never "
            "got to an answer. Try a simpler question, or an admin can raise `llm.max_tokens`."
            if cut
            else "The model thought about it but gave no answer. Try rephrasing."
        )


class ToolStepsExhausted(LLMError):
    kind = "tool_steps"
    user_text = (
        "The model kept calling tools without answering, up to the limit (`mcp.max_steps`). "
        "Try asking more precisely."
    )


class LLMProtocolError(LLMError):
    kind = "protocol"
    user_text = "The language model server sent a reply the bot could not read."


# --- Storage, personas, usage --------------------------------------------------------------


class ThoughtsExpired(BotError):
    """A "Show thinking" button whose thoughts are gone (they are kept for a day)."""

    user_text = "Those thoughts are no longer available: they are kept for a day."


class MemoryUnavailable(BotError):
    """Redis is down or unreachable: nothing is read or written."""

    user_text = "My memory (Redis) is unavailable right now, so I can't answer. Try again shortly."


class PersonaTooLong(BotError):
    def __init__(self, length: int, limit: int) -> None:
        self.length, self.limit = length, limit
        super().__init__(f"That persona is {length} characters; the limit is {limit}.")


class EmptyPersona(BotError):
    user_text = "A persona can't be empty. Use `/persona clear` to go back to the default."


class UnknownPreset(BotError):
    def __init__(self, name: str, available: list[str]) -> None:
        names = ", ".join(f"`{n}`" for n in available) or "none are configured"
        super().__init__(f"There is no persona preset called `{name}`. Presets: {names}.")


class UnknownModel(BotError):
    def __init__(self, name: str, available: list[str]) -> None:
        names = ", ".join(f"`{n}`" for n in available) or "none are configured"
        super().__init__(f"There is no model called `{name}`. Models: {names}.")


class QuotaExceeded(BotError):
    def __init__(self, used: int, quota: int) -> None:
        self.used, self.quota = used, quota
        super().__init__(
            f"You have used your daily limit of {quota:,} tokens ({used:,} used today). "
            "It resets at 00:00 UTC."
        )


class Throttled(BotError):
    """A user sends messages faster than the cooldown allows."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(
            f"You're sending messages too fast. Try again in {max(1, round(retry_after))} s."
        )


class EmptyMessage(BotError):
    user_text = (
        "I found nothing to read in your message: no text, and no file or image I could use."
    )

    def __init__(self, notes: list[str] | None = None) -> None:
        super().__init__()
        # Why its attachments could not be read, one short note each.
        self.notes = list(notes or [])


class PermissionDenied(BotError):
    def __init__(self, needed: str) -> None:
        super().__init__(f"You need the **{needed}** permission to do that.")


# --- Reply buttons (Stop, Regenerate, Retry) ------------------------------------------------


class NotLatestAnswer(BotError):
    user_text = "Only the latest answer in this channel can be regenerated."


class AnswerInProgress(BotError):
    user_text = "An answer is being written in this channel right now. Try again when it's done."


class AnswerFinished(BotError):
    user_text = "This answer has already finished."


class NotYourReply(BotError):
    user_text = (
        "Only the person who asked, or members with the **Manage Messages** permission, "
        "can use this button."
    )


class StoppedBeforeAnswer(BotError):
    user_text = "Stopped before the model had answered anything."


class QuestionGone(BotError):
    user_text = "The question was deleted, so it can't be asked again."


def user_message(exc: BaseException) -> str:
    """The one place that turns any exception into text for a person."""
    if isinstance(exc, BotError):
        return exc.user_text
    return "Something went wrong on my side. An admin can find the details in the bot's log."
