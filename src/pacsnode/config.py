"""Settings, declared once (name, default, help).

Sources, lowest to highest priority: defaults, the TOML file (``--config``),
``PACSNODE_<NAME>`` environment variables, command-line options.  The CLI
options of ``serve`` and the README's configuration table are generated from
``SETTINGS`` (tests keep them in step).
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Setting", "SETTINGS", "Settings", "NodeConfig", "load_settings", "stored_allow"]


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
    #: The values allowed, when it is one of a few words (a choice on the
    #: command line, checked for the TOML file and the environment too).
    choices: tuple[str, ...] = ()


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
            "always accepted as already stored, whatever its file meta says.",
            choices=("replace", "keep", "reject")),
    Setting("fsync", True, "fsync each blob and its folder before acknowledging (turn off "
            "only on throw-away archives).", bool, shared=False),
    Setting("max_associations", 32, "Most DIMSE associations served at once.", int, shared=False),
    Setting("dimse_timeout", 60, "Seconds of silence before a DIMSE association is aborted.",
            int, shared=False),
    Setting("dimse_processes", 0, "Processes accepting DIMSE associations on dicom_port "
            "and dicom_tls_port (they share the listening sockets; the least busy takes each "
            "connection); 0 means "
            "one per CPU core, at least 1, at most 4; 1 serves DIMSE in the main process "
            "only.", int, shared=False),
    Setting("max_stow_bytes", 4 * 1024**3, "Largest STOW-RS request body accepted (bytes).",
            int),
    Setting("qido_max_limit", 1000, "Most results one QIDO-RS/C-FIND page returns.", int),
    Setting("gateway_cache_seconds", 5, "Seconds a remote node's C-FIND answer is reused by "
            "/dicomweb/remote/{node}/... searches (docs/GATEWAY.md); 0: ask every time.", int),
    Setting("extra_query_tags", [], "Attributes made matching and return keys of C-FIND "
            "and QIDO-RS at their level: a list of {tag = \"gggg,eeee\", level = "
            "\"STUDY|SERIES|IMAGE\"} (a private one with creator = \"...\"; found by its "
            "creator wherever its block sits). Filled on ingest; 'pacsnode reindex' fills them "
            "for instances already stored.", list, cli=False),
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
    Setting("log_level", "INFO", "Logging level (DEBUG, INFO, WARNING, ERROR).", shared=False,
            choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    # Access control (DESIGN.md §8, docs/SECURITY.md).
    Setting("auth", "off", "'on': every HTTP route but health, the OpenAPI document, the "
            "docs page and the UI's static files needs 'Authorization: Bearer <token>' (an "
            "API token from 'pacsnode token create', or an OIDC access token); 'off': no "
            "credentials asked, so serve listens on loopback only unless allow_insecure.",
            choices=("off", "on")),
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
    Setting("oidc_client_id", "", "Client id of the built-in UI at the OIDC provider (a "
            "public client, PKCE, redirect URI <node URL>/ui/callback): with auth on and "
            "oidc_issuer set, /ui/ offers 'Sign in' there; empty: the UI asks for a token."),
    Setting("oidc_scopes", "openid profile", "Scopes the UI asks the OIDC provider for "
            "(space-separated)."),
    Setting("allowed_hosts", [], "Host header values (with or without :port) the HTTP "
            "listener answers; others get 421 (DNS-rebinding defence). Empty: localhost, "
            "127.0.0.1, ::1 and host; '*' accepts any.", list, cli=False, shared=False),
    Setting("audit_syslog", "", "Also send each audit event as an RFC 5424 syslog message "
            "(body: the DICOM audit message XML) to udp://host:port or tcp://host:port; "
            "empty: the index only."),
    Setting("ohif_dir", "", "Folder holding OHIF's prebuilt app (the dist/ of the npm "
            "package @ohif/app), served at /ohif/ and configured for this node's /dicomweb; "
            "empty: /ohif/ is not served. See docs/VIEWERS.md.", shared=False),
    # DIMSE access control and limits (DESIGN.md §8).
    Setting("dimse_unknown_ae", ["echo", "store", "find", "get", "move"], "DIMSE operations "
            "an AE title not in [nodes] (or calling from another address than its node's "
            "host) may use: echo, store, find, get, move; [] rejects its associations.",
            list, cli=False),
    Setting("check_called_ae", False, "Reject associations whose called AE title is not "
            "ae_title (or cluster_ae_title).", bool),
    Setting("max_associations_per_address", 8, "Most DIMSE associations served at once for "
            "one peer address (all DIMSE processes together), so one peer cannot take every "
            "place under max_associations.", int, shared=False),
    Setting("max_associations_per_ae", 8, "Most DIMSE associations served at once for one "
            "calling AE title, from whatever addresses (all DIMSE processes together), so "
            "one AE cannot take every place under max_associations; a node calling from its "
            "host is counted apart from others using its title.", int, shared=False),
    Setting("node_networks", [], "Networks (CIDR, e.g. 10.0.0.0/8) a node registered over "
            "HTTP must have its address in; empty: any address but link-local, unspecified "
            "and multicast ones.", list, cli=False),
    Setting("http_read_timeout", 30, "Seconds an HTTP request's headers may take to arrive, "
            "and the longest pause inside its body; a slower request gets 408 and its "
            "connection is closed (0: no limit).", int, shared=False),
    # Transport security (DESIGN.md §8, docs/SECURITY.md).
    Setting("tls_cert", "", "PEM certificate (chain) of this node: with tls_key, the HTTP "
            "listener is HTTPS and dicom_tls_port opens a DICOM TLS listener.", shared=False),
    Setting("tls_key", "", "PEM private key of tls_cert.", shared=False),
    Setting("tls_ca", "", "PEM CA certificate(s): DICOM TLS peers must present a "
            "certificate they signed (mutual TLS); also what our TLS associations to nodes "
            "with tls = true trust (empty: the system's CAs).", shared=False),
    Setting("dicom_tls_port", 0, "TCP port of the DICOM TLS listener (TLS 1.2+, BCP 195 "
            "ciphers; needs tls_cert and tls_key); 0: none.", int, shared=False),
)

_BY_NAME = {s.name: s for s in SETTINGS}


#: The DIMSE operations a calling AE may be allowed (``[nodes.NAME] allow``).
DIMSE_OPERATIONS = ("echo", "store", "find", "get", "move")


@dataclass(frozen=True)
class NodeConfig:
    name: str
    aet: str
    host: str
    port: int
    #: What this AE may do when it calls us from ``host`` (DESIGN.md §8).
    allow: tuple[str, ...] = DIMSE_OPERATIONS
    #: Our associations to this node use TLS.
    tls: bool = False
    #: How /dicomweb/remote/{node} pulls what the archive lacks: "move"
    #: (C-MOVE to our own AE title, which the node must know) or "get".
    retrieve_method: str = "move"
    #: The least role whose WADO-RS request through the gateway may cause a
    #: pull into the archive: "operator" (default) or "reader".
    gateway_pull: str = "operator"


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
    gateway_cache_seconds: int = 5
    extra_query_tags: list[dict[str, Any]] = field(default_factory=list)
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
    oidc_client_id: str = ""
    oidc_scopes: str = "openid profile"
    allowed_hosts: list[str] = field(default_factory=list)
    audit_syslog: str = ""
    ohif_dir: str = ""
    dimse_unknown_ae: list[str] = field(default_factory=lambda: list(DIMSE_OPERATIONS))
    check_called_ae: bool = False
    max_associations_per_address: int = 8
    max_associations_per_ae: int = 8
    node_networks: list[str] = field(default_factory=list)
    http_read_timeout: int = 30
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    dicom_tls_port: int = 0
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
        view["nodes"] = {name: _node_view(n) for name, n in sorted(self.nodes.items())}
        return view

    @property
    def index_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir).resolve() / 'index.sqlite'}"


def _node_view(node: NodeConfig) -> list[Any]:
    view: list[Any] = [node.aet, node.host, node.port]
    if node.allow != DIMSE_OPERATIONS or node.tls:  # the older view when not used
        view += [list(node.allow), node.tls]
    return view


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


def _operations(value: Any, where: str) -> tuple[str, ...]:
    ops = [value] if isinstance(value, str) else list(value)
    unknown = [op for op in ops if op not in DIMSE_OPERATIONS]
    if unknown:
        raise ValueError(f"{where}: unknown DIMSE operation {unknown[0]!r} (use "
                         f"{', '.join(DIMSE_OPERATIONS)})")
    return tuple(op for op in DIMSE_OPERATIONS if op in ops)


def stored_allow(text: str | None) -> tuple[str, ...]:
    """A node's ``allow`` as the index's ``nodes.allow`` column keeps it (a
    JSON array; NULL, a row of an earlier release: all operations)."""
    if text is None:
        return DIMSE_OPERATIONS
    return _operations(json.loads(text), "nodes.allow")


def _node_config(name: str, node: dict[str, Any], path: Any) -> NodeConfig:
    """A ``[nodes.NAME]`` table: address, what it may do when it calls us
    (DESIGN.md §8), TLS, and the gateway's keys (docs/GATEWAY.md)."""
    allow = _operations(node.get("allow", DIMSE_OPERATIONS), f"{path}: [nodes.{name}] allow")
    method = str(node.get("retrieve_method", "move"))
    if method not in ("move", "get"):
        raise ValueError(f"[nodes.{name}] retrieve_method must be move or get, not {method!r}")
    pull = str(node.get("gateway_pull", "operator"))
    if pull not in ("reader", "writer", "editor", "operator", "admin"):
        raise ValueError(f"[nodes.{name}] gateway_pull must be a role (reader, writer, "
                         f"editor, operator, admin), not {pull!r}")
    return NodeConfig(name, str(node.get("aet", name)), str(node.get("host", "127.0.0.1")),
                      int(node["port"]), allow, bool(node.get("tls", False)), method, pull)


def load_settings(config_file: str | os.PathLike[str] | None = None,
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
                    nodes[node_name] = _node_config(node_name, node, path)
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
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, "
                         f"not {settings.log_level!r}")
    if settings.duplicate_policy not in ("replace", "keep", "reject"):
        raise ValueError(f"duplicate_policy must be replace, keep or reject, "
                         f"not {settings.duplicate_policy!r}")
    from .dicom.extra_tags import parse_extra_tags
    parse_extra_tags(settings.extra_query_tags)  # ValueError naming what is wrong
    if settings.auth not in ("on", "off"):
        raise ValueError(f"auth must be on or off, not {settings.auth!r}")
    if settings.audit_syslog and not settings.audit_syslog.startswith(("udp://", "tcp://")):
        raise ValueError(f"audit_syslog must be udp://host:port or tcp://host:port, not "
                         f"{settings.audit_syslog!r}")
    settings.dimse_unknown_ae = list(_operations(settings.dimse_unknown_ae, "dimse_unknown_ae"))
    for network in settings.node_networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"node_networks: {network!r} is not a network such as "
                             "10.0.0.0/8") from None
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ValueError("tls_cert and tls_key go together: set both, or neither")
    if settings.dicom_tls_port and not settings.tls_cert:
        raise ValueError("dicom_tls_port needs tls_cert and tls_key")
    return settings
