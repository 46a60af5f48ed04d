"""Errors raised by the mesh certificate authority.

CAError                 base: anything the CA refuses or cannot do
├── CAExistsError       init would overwrite an existing CA (pass force=True)
├── CANotFoundError     the directory holds no CA
└── CsrRejected         a CSR or requested identity failed a check
"""

from __future__ import annotations


class CAError(Exception):
    """Base class for CA failures; the message says why in words."""


class CAExistsError(CAError, FileExistsError):
    """init_ca found CA files it would overwrite."""


class CANotFoundError(CAError, FileNotFoundError):
    """The directory does not hold the files of a CA."""


class CsrRejected(CAError):
    """A certificate signing request (or the identity asked for) was refused."""
