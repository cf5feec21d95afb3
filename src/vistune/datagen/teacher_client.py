"""The teacher's HTTP client: the shared OpenAI-compatible client under its datagen names."""

from vistune.llm_client import (  # noqa: F401
    RETRY_STATUS,
    AuthError,
    ChatClient,
    ClientError,
    ClientStats,
    Completion,
    MalformedResponse,
    RequestFailed,
    RetryPolicy,
    error_message,
    parse_completion,
    parse_retry_after,
    retry_after_seconds,
)

TeacherClient = ChatClient
TeacherError = ClientError
