"""Redaction of everything recorded: name rules, value detectors, and keyed digests.

``names`` matches ``audit.redact_fields`` rules against normalised keys, ``detectors`` recognises sensitive
values by shape, ``redactor`` applies both and computes the HMAC digests and action keys. Those three run
compiled (mypyc) when a build for exactly these sources is present (``native``, ADR 0027), else as Python.
"""

from gateway.redaction import native

if native.usable():
    # First on the package's path, so its compiled modules are found before the sources beside this file.
    __path__.insert(0, str(native.NATIVE_DIR))

from gateway.redaction.detectors import DETECTOR_NAMES, ValueScanner
from gateway.redaction.names import FieldMatcher, key_words, normalised_key
from gateway.redaction.redactor import (
    HMAC_KEY_BYTES,
    Redacted,
    Redaction,
    Redactor,
    create_hmac_key,
    load_hmac_key,
    redact,
)

__all__ = [
    "DETECTOR_NAMES",
    "HMAC_KEY_BYTES",
    "FieldMatcher",
    "Redacted",
    "Redaction",
    "Redactor",
    "ValueScanner",
    "create_hmac_key",
    "key_words",
    "load_hmac_key",
    "normalised_key",
    "redact",
]
