"""All of remixer's settings in one model: defaults < config file (YAML) < REMIXER_* env < CLI flags.

Each card owns its own section model; this module only composes them and turns every way a
setting can be wrong into one clear line naming the setting.
"""

from __future__ import annotations

import ipaddress
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from controller.settings import ControllerSettings
from policy.settings import AdaptiveSettings, PolicySettings
from remixer.kit.shipping.settings import ShippingSettings
from telemetry.settings import TelemetrySettings

PartName = Literal["policy", "telemetry", "admin", "adaptive"]
ALL_PARTS: tuple[PartName, ...] = ("policy", "telemetry", "admin")


class SettingsError(ValueError):
    """A setting is missing, malformed or out of range; the message names it."""


def parse_address(value: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); port 0 means 'any free port'."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port")
    host = host.strip("[]")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    if not host.replace("-", "").replace(".", "").isalnum():
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a host name or IP address") from None
    return host, int(port_text)


class GrpcTlsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert_file: Path | None = Field(
        None, description="PEM server certificate; set with key_file to serve gRPC over TLS."
    )
    key_file: Path | None = Field(None, description="PEM private key of cert_file.")
    client_ca_file: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."
    )


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parts: list[PartName] = Field(
        default_factory=lambda: list(ALL_PARTS),
        description="Which parts this process runs: policy (ext_authz), telemetry (access-log sink), admin "
        "(admin API, /metrics, /healthz, /readyz), adaptive (the adaptive limits' controller; needs policy). "
        "Run policy and telemetry in separate deployments to scale them apart.",
    )
    grpc_address: str = Field(
        "127.0.0.1:9191",
        description="gRPC listen address: ext_authz Check, StreamAccessLogs, health checking, reflection.",
    )
    admin_address: str = Field("127.0.0.1:8080", description="Admin API, /metrics, /healthz and /readyz.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes sharing the gRPC and HTTP ext_authz ports (each its own event loop "
        "and spool). Only worker 0 serves the admin API; its /metrics carries every worker's series "
        "(counters and histograms summed, gauges under a worker label).",
    )
    admin_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Admin port: a request head must arrive within this time (of its first byte, or of the "
        "connection for a silent client), or the connection is closed.",
    )
    admin_idle_timeout_s: float = Field(
        30.0, gt=0, description="Admin port: close a keep-alive connection idle this long."
    )
    admin_max_connections: int = Field(
        256, ge=1, description="Admin port: open connections; requests beyond it are answered 503."
    )
    admin_max_head_bytes: int = Field(
        64 * 1024,
        ge=4096,
        description="Admin port: largest request head; a larger one closes the connection.",
    )
    data_dir: Path = Field(
        Path("remixer-data"),
        description="Where the SQLite databases, the spool and the generated admin token live.",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token required by admin API writes. When unset, a random one is generated into "
        "DATA_DIR/admin-token (mode 0600).",
    )
    admin_max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest admin API request body; a larger one is refused with 413 without being read "
        "(or as soon as a streamed body passes it).",
    )
    grpc_tls: GrpcTlsSettings = Field(
        default_factory=GrpcTlsSettings, description="TLS / mTLS for the gRPC port."
    )
    grpc_max_receive_bytes: int = Field(
        4 * 1024 * 1024, ge=64 * 1024, description="Largest gRPC message accepted (Envoy batches are ~16 KB)."
    )
    drain_seconds: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM: how long remixer keeps answering while gRPC health and /readyz say "
        "NOT_SERVING, so Envoys move to other replicas (access-log streams are ended after their next "
        "message, and Envoy reopens them elsewhere). SIGINT or a second signal skips it.",
    )
    stop_grace_s: float = Field(
        2.0, ge=0, description="After the drain: how long in-flight calls may take before they are cancelled."
    )
    memory_trim_interval_s: float = Field(
        10.0,
        ge=0,
        description="Seconds between returns of freed heap memory to the kernel (glibc malloc_trim), so a "
        "burst's peak does not stay; 0 keeps it.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log line format (key=value text, or JSON)."
    )

    @field_validator("grpc_address", "admin_address")
    @classmethod
    def _valid_address(cls, value: str) -> str:
        parse_address(value)
        return value

    @field_validator("parts")
    @classmethod
    def _some_part(cls, value: list[PartName]) -> list[PartName]:
        if not value:
            raise ValueError("at least one part must run")
        if "adaptive" in value and "policy" not in value:
            raise ValueError("part adaptive enforces through part policy: run both in one process")
        return list(dict.fromkeys(value))


class _YamlFileSource(PydanticBaseSettingsSource):
    """The --config file, below env vars and flags."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


# The --config file's data for the load() in progress (pydantic-settings builds sources on the class).
_FILE_DATA: ContextVar[dict[str, Any]] = ContextVar("remixer_config_file_data", default={})  # noqa: B039


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="REMIXER_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    server: ServerSettings = Field(
        default_factory=ServerSettings, description="The process and its listeners."
    )
    policy: PolicySettings = Field(default_factory=PolicySettings, description="ext_authz policy.")
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings, description="Access-log sink.")
    shipping: ShippingSettings = Field(
        default_factory=ShippingSettings, description="Kafka export and the local spool."
    )
    controller: ControllerSettings = Field(
        default_factory=ControllerSettings, description="Sidecar controller."
    )
    adaptive: AdaptiveSettings = Field(
        default_factory=AdaptiveSettings, description="Adaptive limits' controller loop."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlFileSource(settings_cls, _FILE_DATA.get())


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise SettingsError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must be a mapping with sections server/policy/telemetry/...")
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def describe_validation_error(exc: ValidationError, origin: str = "") -> str:
    first = exc.errors()[0]
    name = ".".join(str(p) for p in first["loc"]) or "settings"
    kind = first["type"]
    msg = "unknown setting (not allowed here)" if kind == "extra_forbidden" else first["msg"]
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    where = f" in {origin}" if origin else ""
    return f"invalid setting {name}{where}: {msg}{more}"


def load(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from defaults, the config file, REMIXER_* env vars and CLI overrides, in rising priority."""
    file_data = read_config_file(config_file) if config_file else {}
    token = _FILE_DATA.set(file_data)
    try:
        # Flags must beat env vars, yet flags for nested sections must merge with the env's values,
        # so env + file are resolved first and the flags merged on top.
        base = Settings()
        if not overrides:
            return base
        merged = _merge(base.model_dump(mode="python"), overrides)
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc, str(config_file) if config_file else "")) from None
    finally:
        _FILE_DATA.reset(token)


def reference(model: type[BaseModel] = Settings, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, description) for every leaf setting: the README's configuration table."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(reference(annotation, dotted + "."))
            continue
        default = field.get_default(call_default_factory=True)
        shown = "" if default is None else str(default.value if hasattr(default, "value") else default)
        rows.append((dotted, shown, field.description or ""))
    return rows


def reference_markdown() -> str:
    rows = ["| setting | default | what it does |", "| --- | --- | --- |"]
    for name, default, description in reference():
        shown = default.replace("|", "\\|") if default else ""
        rows.append(f"| `{name}` | {'`' + shown + '`' if shown else ''} | {description.replace('|', '/')} |")
    return "\n".join(rows)


def write_readme_reference(readme: Path) -> None:
    """Refresh the README's configuration table (tests fail while it is stale)."""
    start, end = "<!-- settings-reference:start -->", "<!-- settings-reference:end -->"
    head, rest = readme.read_text().split(start)
    _, tail = rest.split(end)
    readme.write_text(f"{head}{start}\n{reference_markdown()}\n{end}{tail}")


if __name__ == "__main__":
    write_readme_reference(Path(__file__).resolve().parents[1] / "README.md")
