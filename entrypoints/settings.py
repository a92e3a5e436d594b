"""The product's one settings object, assembled from the sections each package owns.

`get_settings()` reads it once from the environment: variables prefixed `LLAVA_LABELER_`,
nested sections joined with `__` (e.g. `LLAVA_LABELER_FETCH__ALLOW_PRIVATE=true`).
The defaults are the embedded laptop mode; a cluster only changes URLs.
Each package is handed the part it reads (`EngineConfig` ⊂ `LabelerConfig` ⊂ `ConsoleConfig`).
"""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict

from ui.settings import ConsoleConfig


class Settings(ConsoleConfig, BaseSettings):
    """All configuration, read once from the environment."""

    model_config = SettingsConfigDict(env_prefix="LLAVA_LABELER_", env_nested_delimiter="__", extra="ignore")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings, read from the environment on first use and then cached."""
    return Settings()
