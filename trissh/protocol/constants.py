"""Wire numbers (RFC 4250 §4) and the size limits the core enforces."""

from __future__ import annotations

import enum


class MessageNumber(enum.IntEnum):
    """SSH message numbers (RFC 4250 §4.1, RFC 8308, RFC 4256)."""

    DISCONNECT = 1
    IGNORE = 2
    UNIMPLEMENTED = 3
    DEBUG = 4
    SERVICE_REQUEST = 5
    SERVICE_ACCEPT = 6
    EXT_INFO = 7
    KEXINIT = 20
    NEWKEYS = 21
    KEX_ECDH_INIT = 30
    KEX_ECDH_REPLY = 31
    #: RFC 4419 §5 (diffie-hellman-group-exchange-*); 30 and 31 are reused per method.
    KEX_DH_GEX_INIT = 32
    KEX_DH_GEX_REPLY = 33
    KEX_DH_GEX_REQUEST = 34
    USERAUTH_REQUEST = 50
    USERAUTH_FAILURE = 51
    USERAUTH_SUCCESS = 52
    USERAUTH_BANNER = 53
    USERAUTH_PK_OK = 60
    #: RFC 4256: the client's answers to USERAUTH_INFO_REQUEST (which reuses number 60).
    USERAUTH_INFO_RESPONSE = 61
    #: RFC 4462 §3 (gssapi-with-mic); 60 and 61 are shared with the methods above, told
    #: apart by the method in progress.
    USERAUTH_GSSAPI_RESPONSE = 60
    USERAUTH_GSSAPI_TOKEN = 61
    USERAUTH_GSSAPI_EXCHANGE_COMPLETE = 63
    USERAUTH_GSSAPI_ERROR = 64
    USERAUTH_GSSAPI_ERRTOK = 65
    USERAUTH_GSSAPI_MIC = 66
    GLOBAL_REQUEST = 80
    REQUEST_SUCCESS = 81
    REQUEST_FAILURE = 82
    CHANNEL_OPEN = 90
    CHANNEL_OPEN_CONFIRMATION = 91
    CHANNEL_OPEN_FAILURE = 92
    CHANNEL_WINDOW_ADJUST = 93
    CHANNEL_DATA = 94
    CHANNEL_EXTENDED_DATA = 95
    CHANNEL_EOF = 96
    CHANNEL_CLOSE = 97
    CHANNEL_REQUEST = 98
    CHANNEL_SUCCESS = 99
    CHANNEL_FAILURE = 100
    #: OpenSSH PROTOCOL §1.9 (ping@openssh.com): the client's keystroke-timing chaff.
    PING = 192
    PONG = 193


class DisconnectReason(enum.IntEnum):
    """SSH_MSG_DISCONNECT reason codes (RFC 4253 §11.1)."""

    HOST_NOT_ALLOWED_TO_CONNECT = 1
    PROTOCOL_ERROR = 2
    KEY_EXCHANGE_FAILED = 3
    RESERVED = 4
    MAC_ERROR = 5
    COMPRESSION_ERROR = 6
    SERVICE_NOT_AVAILABLE = 7
    PROTOCOL_VERSION_NOT_SUPPORTED = 8
    HOST_KEY_NOT_VERIFIABLE = 9
    CONNECTION_LOST = 10
    BY_APPLICATION = 11
    TOO_MANY_CONNECTIONS = 12
    AUTH_CANCELLED_BY_USER = 13
    NO_MORE_AUTH_METHODS_AVAILABLE = 14
    ILLEGAL_USER_NAME = 15


class ChannelOpenFailureReason(enum.IntEnum):
    """SSH_MSG_CHANNEL_OPEN_FAILURE reason codes (RFC 4254 §5.1)."""

    ADMINISTRATIVELY_PROHIBITED = 1
    CONNECT_FAILED = 2
    UNKNOWN_CHANNEL_TYPE = 3
    RESOURCE_SHORTAGE = 4


#: SSH_EXTENDED_DATA_STDERR (RFC 4254 §5.2).
EXTENDED_DATA_STDERR = 1

#: Delayed compression: on only after authentication (OpenSSH PROTOCOL §1.3).
ZLIB_OPENSSH = "zlib@openssh.com"
COMPRESSION_METHODS = ("none", ZLIB_OPENSSH)

#: RFC 4253 §4.2: the identification line is at most 255 bytes including CR LF.
MAX_VERSION_LINE = 255
#: Lines a server may send before its identification; we bound what we accept from clients.
MAX_PRE_VERSION_LINES = 20
#: Like OpenSSH's PACKET_MAX_SIZE: packet_length beyond this ends the connection.
MAX_PACKET_LENGTH = 256 * 1024
#: RFC 4253 §6.1: we must accept 32768-byte payloads; we accept what fits in a packet.
MAX_PAYLOAD_LENGTH = MAX_PACKET_LENGTH - 64
#: Inflated bytes (zlib@openssh.com) one ``next_event`` call decodes before it returns
#: ``InputPaused``: a few hundred wire bytes inflate to a whole packet, so one read could
#: hold ~900 times its size in work for the event loop every connection shares.
INFLATE_SLICE = 1024 * 1024
#: Bound on any name-list we parse (KEXINIT lists are the longest legitimate ones).
MAX_NAME_LIST_LENGTH = 64 * 1024
#: Bound on the number of names in one list.
MAX_NAMES = 256
