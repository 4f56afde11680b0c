"""The model server's one settings class: ``FRAMESCALE_MODELSERVER_*`` environment variables.

Command-line flags (named as ``tensorflow_model_server``'s where it has one) override the
environment. Importing this module does not import TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from framescale.settings import ComponentSettings

MIB = 1024 * 1024


class ModelServerSettings(ComponentSettings):
    model_config = SettingsConfigDict(env_prefix="FRAMESCALE_MODELSERVER_")

    # --- where the models are: either a folder of models or one model's base path
    model_base_dir: Path | None = Field(
        default=None,
        description="Serve every model folder under this directory (<dir>/<model>/<version>/), "
        "as written by `python -m framescale.modelserver.export --out`.",
    )
    model_name: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Name of the single model served from model_base_path (TF Serving's default name).",
    )
    model_base_path: Path | None = Field(
        default=None, description="One model's base path holding numeric version folders (<path>/<version>/)."
    )
    file_system_poll_wait_seconds: float = Field(
        default=0.0,
        ge=0,
        description="Rescan the model folders this often for new versions (and, with model_base_dir, "
        "new models); 0 = only at start.",
    )

    # --- where it listens
    host: str = Field(default="127.0.0.1", description="Address both APIs bind to (0.0.0.0 in a container).")
    grpc_port: int = Field(default=8500, ge=1, le=65535, description="gRPC PredictionService/ModelService port.")
    rest_port: int = Field(default=8501, ge=0, le=65535, description="REST API port; 0 = off.")

    # --- capacity
    max_message_bytes: int = Field(
        default=256 * MIB,
        ge=4 * MIB,
        description="Largest gRPC message and REST body; gRPC's 4 MB default is below one batch of "
        "8 frames at 640x640.",
    )
    threads: int = Field(
        default=8,
        ge=1,
        le=256,
        description="gRPC handler threads: requests in progress at once (TensorFlow releases the GIL).",
    )
    shutdown_grace_seconds: float = Field(
        default=5.0, ge=0, description="On SIGTERM, time given to requests in progress before they are cancelled."
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @model_validator(mode="after")
    def _check(self) -> ModelServerSettings:
        if (self.model_base_dir is None) == (self.model_base_path is None):
            raise ValueError("set exactly one of model_base_dir (a folder of models) and model_base_path (one model)")
        if self.rest_port == self.grpc_port:
            raise ValueError(f"grpc_port and rest_port must differ (both {self.grpc_port})")
        return self
