"""Settings, declared once (name, default, help).

Sources, lowest to highest priority: defaults, the TOML file (``--config``),
``PACSNODE_<NAME>`` environment variables, command-line options.  The CLI
options of ``serve`` and the README's configuration table are generated from
``SETTINGS`` (tests keep them in step).
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Setting", "SETTINGS", "Settings", "NodeConfig", "load_settings"]


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    type: type = str
    cli: bool = True
    #: False for what each ``serve`` of a cluster sets for itself (its AE
    #: title, ports, paths); True for what all of them must agree on (§12:
    #: nodes, policies, triggers …), checked when a process joins.
    shared: bool = True


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", "./pacsnode-data", "Folder of the blob store (studies/…) and, by "
            "default, the SQLite index.", Path, shared=False),
    Setting("database_url", "", "SQLAlchemy URL of the index; empty means SQLite at "
            "<data_dir>/index.sqlite. PostgreSQL: postgresql+psycopg://user@host/db.", shared=False),
    Setting("ae_title", "PACSNODE", "Our DICOM Application Entity title.", shared=False),
    Setting("cluster_ae_title", "", "AE title a remote PACS is asked to C-MOVE to when this "
            "node pulls (retrieve jobs); empty means ae_title. Several serve processes of one "
            "cluster give the remote PACS one title whose address is their load balancer."),
    Setting("dicom_port", 11112, "TCP port of the DIMSE listener (C-ECHO/STORE/FIND/MOVE/GET).",
            int, shared=False),
    Setting("http_port", 8080, "TCP port of the HTTP listener (DICOMweb, REST API).", int, shared=False),
    Setting("host", "127.0.0.1", "Address both listeners bind to.", shared=False),
    Setting("duplicate_policy", "replace", "What storing an existing SOP Instance UID with "
            "a different data set does: 'replace' it, 'keep' the stored one (success), or "
            "'reject' (C-STORE 0x0111, STOW FailureReason 45070). An identical data set is "
            "always accepted as already stored, whatever its file meta says."),
    Setting("fsync", True, "fsync each blob and its folder before acknowledging (turn off "
            "only on throw-away archives).", bool, shared=False),
    Setting("max_associations", 32, "Most DIMSE associations served at once.", int, shared=False),
    Setting("dimse_timeout", 60, "Seconds of silence before a DIMSE association is aborted.",
            int, shared=False),
    Setting("dimse_processes", 0, "Processes accepting DIMSE associations on dicom_port "
            "(they share the listening socket; the least busy takes each connection); 0 means "
            "one per CPU core, at least 1, at most 4; 1 serves DIMSE in the main process "
            "only.", int, shared=False),
    Setting("max_stow_bytes", 4 * 1024**3, "Largest STOW-RS request body accepted (bytes).",
            int),
    Setting("qido_max_limit", 1000, "Most results one QIDO-RS/C-FIND page returns.", int),
    Setting("cors_origins", [], "Origins allowed to call the HTTP API from a browser.",
            list, cli=False),
    Setting("export_roots", [], "Folders under which export/pull-to-path may write.",
            list, cli=False),
    Setting("stable_study_seconds", 60, "Quiet period before a study counts as stable.", int),
    Setting("stable_series_seconds", 30, "Quiet period before a series counts as stable.",
            int),
    Setting("on_stable_study", "", "Command run once per stable study, without a shell: the "
            "template is split into arguments first, then {study_uid} {path} {study_path} "
            "{patient_id} {calling_aet} are replaced inside each argument."),
    Setting("on_stable_series", "", "Command run once per stable series (as on_stable_study, "
            "plus {series_uid} and {classes}; {path} is the series folder)."),
    Setting("webhooks", [], "URLs that get a JSON POST for each stable study/series.",
            list, cli=False),
    Setting("classification_rules", "", "Rule file (data-transfer-station's "
            "classifyRules.json format) that adds to and overrides the built-in series "
            "classes; empty means the built-in rules only."),
    Setting("write_summaries", False, "Write studies/<StudyInstanceUID>/summary.json (the "
            "study summary of GET /api/v1/studies/{study}/summary) each time a study becomes "
            "stable.", bool),
    Setting("routes", [], "[[routes]] tables: name, on (stable_study or stable_series), match "
            "(keyword, classes or calling_aet -> wildcard pattern) and actions send_to, "
            "anonymize, export_to, run; each action for each match is a durable job "
            "(docs/AUTOMATION.md).", list, cli=False),
    Setting("route_attempts", 8, "Attempts of a failing route action before its job fails.",
            int),
    Setting("route_backoff_seconds", 10, "Wait after a route action's first failure; it "
            "doubles after each further failure (8 attempts from 10 s: about 21 minutes of "
            "retrying).", float),
    Setting("log_level", "INFO", "Logging level (DEBUG, INFO, WARNING).", shared=False),
    # Access control (DESIGN.md §8, docs/SECURITY.md).
    Setting("auth", "off", "'on': every HTTP route but health, the OpenAPI document, the "
            "docs page and the UI's static files needs 'Authorization: Bearer <token>' (an "
            "API token from 'pacsnode token create', or an OIDC access token); 'off': no "
            "credentials asked, so serve listens on loopback only unless allow_insecure."),
    Setting("allow_insecure", False, "Let serve listen on a non-loopback host with auth "
            "off (anyone who reaches the port may read, change and delete everything).",
            bool),
    Setting("oidc_issuer", "", "OIDC issuer URL whose /.well-known/openid-configuration "
            "names the JWKS that signs access tokens (https://, or http:// on loopback "
            "only); empty: no OIDC."),
    Setting("oidc_jwks_url", "", "JWKS URL of the OIDC provider, used instead of the one "
            "oidc_issuer's discovery document names."),
    Setting("oidc_audience", "", "The audience ('aud') an OIDC access token must carry; "
            "empty: the token's audience is not checked."),
    Setting("oidc_roles_claim", "roles", "Claim of an OIDC access token that holds the "
            "roles (reader, writer, editor, operator, admin); a dotted path such as "
            "realm_access.roles reaches into nested objects."),
    Setting("allowed_hosts", [], "Host header values (with or without :port) the HTTP "
            "listener answers; others get 421 (DNS-rebinding defence). Empty: localhost, "
            "127.0.0.1, ::1 and host; '*' accepts any.", list, cli=False, shared=False),
    Setting("audit_syslog", "", "Also send each audit event as an RFC 5424 syslog message "
            "(body: the DICOM audit message XML) to udp://host:port or tcp://host:port; "
            "empty: the index only."),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class NodeConfig:
    name: str
    aet: str
    host: str
    port: int


@dataclass
class Settings:
    data_dir: Path = Path("./pacsnode-data")
    database_url: str = ""
    ae_title: str = "PACSNODE"
    cluster_ae_title: str = ""
    dicom_port: int = 11112
    http_port: int = 8080
    host: str = "127.0.0.1"
    duplicate_policy: str = "replace"
    fsync: bool = True
    max_associations: int = 32
    dimse_timeout: int = 60
    dimse_processes: int = 0
    max_stow_bytes: int = 4 * 1024**3
    qido_max_limit: int = 1000
    cors_origins: list[str] = field(default_factory=list)
    export_roots: list[str] = field(default_factory=list)
    stable_study_seconds: int = 60
    stable_series_seconds: int = 30
    on_stable_study: str = ""
    on_stable_series: str = ""
    webhooks: list[str] = field(default_factory=list)
    classification_rules: str = ""
    write_summaries: bool = False
    routes: list[dict[str, Any]] = field(default_factory=list)
    route_attempts: int = 8
    route_backoff_seconds: float = 10.0
    log_level: str = "INFO"
    auth: str = "off"
    allow_insecure: bool = False
    oidc_issuer: str = ""
    oidc_jwks_url: str = ""
    oidc_audience: str = ""
    oidc_roles_claim: str = "roles"
    allowed_hosts: list[str] = field(default_factory=list)
    audit_syslog: str = ""
    nodes: dict[str, NodeConfig] = field(default_factory=dict)

    @property
    def move_destination(self) -> str:
        """The AE title remote nodes are asked to C-MOVE to (§12)."""
        return self.cluster_ae_title or self.ae_title

    def shared_view(self) -> dict[str, Any]:
        """What every ``serve`` of one database must agree on: the shared
        settings and the ``[nodes]`` of the configuration, as JSON-able data."""
        view: dict[str, Any] = {s.name: _jsonable(getattr(self, s.name))
                                for s in SETTINGS if s.shared}
        view["nodes"] = {name: [n.aet, n.host, n.port] for name, n in sorted(self.nodes.items())}
        return view

    @property
    def index_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir).resolve() / 'index.sqlite'}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _coerce(setting: Setting, value: Any) -> Any:
    if setting.type is bool:
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if setting.type is list:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return list(json.loads(text))
            return [v.strip() for v in text.split(",") if v.strip()]
        return list(value)
    if setting.type is Path:
        return Path(value)
    return setting.type(value)


def load_settings(config_file: str | os.PathLike | None = None,
                  overrides: dict[str, Any] | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    """Merge defaults < TOML < PACSNODE_* environment < ``overrides`` (the CLI)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    nodes: dict[str, NodeConfig] = {}
    path = config_file or env.get("PACSNODE_CONFIG")
    if path:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        for name, raw in data.items():
            if name == "nodes":
                for node_name, node in raw.items():
                    nodes[node_name] = NodeConfig(node_name, str(node.get("aet", node_name)),
                                                  str(node.get("host", "127.0.0.1")),
                                                  int(node["port"]))
            elif name in _BY_NAME:
                values[name] = _coerce(_BY_NAME[name], raw)
            else:
                raise ValueError(f"{path}: unknown setting {name!r}")
    for setting in SETTINGS:
        key = "PACSNODE_" + setting.name.upper()
        if key in env:
            values[setting.name] = _coerce(setting, env[key])
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(_BY_NAME[name], value)
    settings = Settings(**values)
    settings.nodes = nodes
    if settings.duplicate_policy not in ("replace", "keep", "reject"):
        raise ValueError(f"duplicate_policy must be replace, keep or reject, "
                         f"not {settings.duplicate_policy!r}")
    if settings.auth not in ("on", "off"):
        raise ValueError(f"auth must be on or off, not {settings.auth!r}")
    if settings.audit_syslog and not settings.audit_syslog.startswith(("udp://", "tcp://")):
        raise ValueError(f"audit_syslog must be udp://host:port or tcp://host:port, not "
                         f"{settings.audit_syslog!r}")
    return settings
