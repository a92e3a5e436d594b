"""The console's section of the settings: where it listens and who may use it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from labeler.settings import LabelerConfig


class UISettings(BaseModel):
    """The review console (`llava-labeler ui`): where it listens and who may use it."""

    host: str = Field(default="127.0.0.1", description="Bind address; anything but loopback needs auth.")
    port: int = Field(default=8501, ge=1, le=65535, description="HTTP port.")
    auth: Literal["none", "password", "oidc"] = Field(
        default="none", description="none (loopback only) | password (shared secret) | oidc (st.login, [auth] in secrets.toml)."
    )
    password: SecretStr | None = Field(default=None, description="The shared password when auth is `password`.")
    login_free_failures: int = Field(
        default=3, ge=0, description="Wrong passwords (per client and per user) before each further try is delayed."
    )
    login_max_failures: int = Field(
        default=10, ge=1, description="Wrong passwords (per client or per user) that lock sign-in for the lockout window."
    )
    login_lockout_s: float = Field(default=900.0, gt=0, description="How long a locked client or user must wait.")


class ConsoleConfig(LabelerConfig):
    """Everything the console reads: its own section on top of the labeler's."""

    ui: UISettings = UISettings()
