from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Register(_message.Message):
    __slots__ = ("name", "service", "namespace", "labels", "inbound", "outbound", "admin", "mode", "token", "ready", "cert_expiry", "config_version", "admin_token", "cert_issued", "app_health", "app_protocol", "locality", "proxy_version", "build", "app_port", "gateway_cert", "deltas")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INBOUND_FIELD_NUMBER: _ClassVar[int]
    OUTBOUND_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    CERT_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    ADMIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CERT_ISSUED_FIELD_NUMBER: _ClassVar[int]
    APP_HEALTH_FIELD_NUMBER: _ClassVar[int]
    APP_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    LOCALITY_FIELD_NUMBER: _ClassVar[int]
    PROXY_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    APP_PORT_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_CERT_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    service: str
    namespace: str
    labels: _containers.ScalarMap[str, str]
    inbound: str
    outbound: str
    admin: str
    mode: str
    token: str
    ready: bool
    cert_expiry: str
    config_version: str
    admin_token: str
    cert_issued: str
    app_health: str
    app_protocol: str
    locality: str
    proxy_version: str
    build: str
    app_port: int
    gateway_cert: bool
    deltas: bool
    def __init__(self, name: _Optional[str] = ..., service: _Optional[str] = ..., namespace: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., inbound: _Optional[str] = ..., outbound: _Optional[str] = ..., admin: _Optional[str] = ..., mode: _Optional[str] = ..., token: _Optional[str] = ..., ready: _Optional[bool] = ..., cert_expiry: _Optional[str] = ..., config_version: _Optional[str] = ..., admin_token: _Optional[str] = ..., cert_issued: _Optional[str] = ..., app_health: _Optional[str] = ..., app_protocol: _Optional[str] = ..., locality: _Optional[str] = ..., proxy_version: _Optional[str] = ..., build: _Optional[str] = ..., app_port: _Optional[int] = ..., gateway_cert: _Optional[bool] = ..., deltas: _Optional[bool] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("version", "nonce")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    version: str
    nonce: str
    def __init__(self, version: _Optional[str] = ..., nonce: _Optional[str] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("version", "nonce", "error")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    version: str
    nonce: str
    error: str
    def __init__(self, version: _Optional[str] = ..., nonce: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("ready", "cert_expiry", "cert_issued", "app_health", "gateway_cert")
    READY_FIELD_NUMBER: _ClassVar[int]
    CERT_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    CERT_ISSUED_FIELD_NUMBER: _ClassVar[int]
    APP_HEALTH_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_CERT_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    cert_expiry: str
    cert_issued: str
    app_health: str
    gateway_cert: bool
    def __init__(self, ready: _Optional[bool] = ..., cert_expiry: _Optional[str] = ..., cert_issued: _Optional[str] = ..., app_health: _Optional[str] = ..., gateway_cert: _Optional[bool] = ...) -> None: ...

class ProxyMessage(_message.Message):
    __slots__ = ("register", "ack", "nack", "status")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    register: Register
    ack: Ack
    nack: Nack
    status: Status
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., status: _Optional[_Union[Status, _Mapping]] = ...) -> None: ...

class ConfigMessage(_message.Message):
    __slots__ = ("version", "nonce", "snapshot_json", "base_version", "delta")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_JSON_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    version: str
    nonce: str
    snapshot_json: bytes
    base_version: str
    delta: _containers.RepeatedCompositeFieldContainer[Splice]
    def __init__(self, version: _Optional[str] = ..., nonce: _Optional[str] = ..., snapshot_json: _Optional[bytes] = ..., base_version: _Optional[str] = ..., delta: _Optional[_Iterable[_Union[Splice, _Mapping]]] = ...) -> None: ...

class Splice(_message.Message):
    __slots__ = ("data", "offset", "length")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    length: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class CertificateRequest(_message.Message):
    __slots__ = ("csr_pem", "service", "namespace", "token", "proxy")
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROXY_FIELD_NUMBER: _ClassVar[int]
    csr_pem: str
    service: str
    namespace: str
    token: str
    proxy: str
    def __init__(self, csr_pem: _Optional[str] = ..., service: _Optional[str] = ..., namespace: _Optional[str] = ..., token: _Optional[str] = ..., proxy: _Optional[str] = ...) -> None: ...

class CertificateResponse(_message.Message):
    __slots__ = ("cert_chain_pem", "trust_bundle_pem", "not_after")
    CERT_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    cert_chain_pem: str
    trust_bundle_pem: str
    not_after: str
    def __init__(self, cert_chain_pem: _Optional[str] = ..., trust_bundle_pem: _Optional[str] = ..., not_after: _Optional[str] = ...) -> None: ...
