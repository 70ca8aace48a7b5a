"""JSON parsed within limits: depth, number length, document size; finite numbers only, no key
twice in an object, no lone surrogate."""
from __future__ import annotations

import json
import math
import re

import numpy as np

from .limits import JSON_MAX_BYTES, JSON_MAX_DEPTH, JSON_MAX_NUMBER_CHARS, size_text

# ---- JSON -------------------------------------------------------------------------------
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _json_depth(data):
    """The deepest nesting of brackets outside strings (json's C parser recurses per level:
    thousands of levels are a RecursionError, so the depth is measured before parsing)."""
    brackets = np.frombuffer(_JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS),
                             np.uint8)
    if brackets.size == 0:
        return 0
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


class _JsonRule(ValueError):
    pass


def _number(text, convert):
    if len(text) > JSON_MAX_NUMBER_CHARS:
        raise _JsonRule(f"a number of {len(text)} characters (at most "
                        f"{JSON_MAX_NUMBER_CHARS})")
    value = convert(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise _JsonRule(f"the number {text} is out of the float range")
    return value


def _constant(name):
    raise _JsonRule(f"{name} (only finite numbers)")


def _unique_object(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _JsonRule(f"the key {key[:80]!r} twice in one object")
        seen[key] = value
    return seen


def _no_surrogates(value):
    # A lone surrogate ("\ud800") decodes but cannot be encoded again: a later print or
    # write would raise UnicodeEncodeError far from the file.
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise _JsonRule("a string holding a lone surrogate") from None
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def parse_json(data, where, error, max_bytes=JSON_MAX_BYTES):
    """The JSON document in ``data`` (bytes, UTF-8), within the limits: at most ``max_bytes``
    and JSON_MAX_DEPTH levels, numbers of at most JSON_MAX_NUMBER_CHARS characters and
    finite, no NaN/Infinity, no key twice in an object, no lone surrogate."""
    data = bytes(data)
    if len(data) > max_bytes:
        raise error(f"{where}: {size_text(len(data))} of JSON, more than the "
                    f"{size_text(max_bytes)} allowed")
    depth = _json_depth(data)
    if depth > JSON_MAX_DEPTH:
        raise error(f"{where}: JSON nested {depth} levels deep (at most {JSON_MAX_DEPTH})")
    try:
        text = data.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_constant,
                           parse_int=lambda s: _number(s, int),
                           parse_float=lambda s: _number(s, float))
        _no_surrogates(value)
    except _JsonRule as e:
        raise error(f"{where}: refused JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise error(f"{where}: not valid JSON text: not UTF-8 ({e.reason} at byte "
                    f"{e.start})") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise error(f"{where}: not valid JSON text: {e}") from None
    return value
